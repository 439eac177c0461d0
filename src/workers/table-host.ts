/**
 * What a shard's workspace table asks of its host (the shard, which relays
 * to the main thread): configs, archive jobs, the spawn gate, and the events
 * the supervisor counts.
 */
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../shared/archive-protocol.js';
import type { SpawnConfig } from '../shared/codex-config.js';
import type { SpawnPriority } from '../shared/protocol.js';
import type { ClusterHost } from './cluster-homes.js';
import type { TokenSink } from './loopback-tokens.js';
import type { ExitInfo } from './spawn.js';

/** TokenSink: the loopback tokens of its children, registered with the main thread (loopback-tokens.ts). */
export interface TableHost extends TokenSink {
  buildConfig(builderId: number, workspaceId: string, loopbackToken: string): Promise<SpawnConfig>;
  archive(task: ArchiveTask): Promise<ArchiveOutcome<ArchiveValue>>;
  childStarted(workspaceId: string, generation: string, pid: number, adopted?: boolean): void;
  childExited(workspaceId: string, generation: string, exit: ExitInfo): void;
  /** Resolves when limits allow a spawn (only called when spawns are gated), with the time it was queued. */
  enterSpawn(workspaceId: string, generation: string, priority: SpawnPriority, rank: number): Promise<{ queuedMs: number; priority: SpawnPriority }>;
  spawnSettled(generation: string, ok: boolean): void;
  /** A client now waits for the queued pre-start of `generation`. */
  promoteSpawn(generation: string): void;
  workspaceStopped(workspaceId: string, reason: string, saved: boolean): void;
  /** A start finished: ready (errorCode null) or failed with that code. */
  startFinished(workspaceId: string, ms: number, errorCode: string | null): void;
  /** With [cluster] only: ownership through the main thread (cluster-homes.ts, used by HomeStore). */
  cluster?: ClusterHost;
}
