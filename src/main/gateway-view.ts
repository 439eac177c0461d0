/**
 * What the operator endpoints read of a running Gateway (gateway.ts), so
 * they can be written against it without importing the gateway that
 * registers them.
 */
import type { EventEmitter } from 'node:events';
import type { StopResult } from '../shared/protocol.js';
import type { ClusterOwnership } from './cluster/ownership.js';
import type { Front } from './front/front.js';
import type { Supervisor } from './supervisor/supervisor.js';

export interface DrainReport {
  results: StopResult[];
  saved: number;
  unsaved: StopResult[];
  timedOut: boolean;
}

export interface DrainProgress {
  total: number;
  stopped: number;
  saved: number;
  workspaceId?: string;
}

/** Events: 'drain-start' and 'drain-progress' (DrainProgress), 'drain-done' (DrainReport). */
export interface GatewayView extends EventEmitter {
  readonly sup: Supervisor;
  readonly front: Front;
  readonly o: { readonly supervisor: { readonly cluster?: ClusterOwnership } };
  readonly isDraining: boolean;
  readonly drainProgress: DrainProgress | undefined;
  /** Streams that must flush before the drain ends the process. */
  readonly drainWatchers: Set<Promise<void>>;
  drain(): Promise<DrainReport>;
}
