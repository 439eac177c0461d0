/**
 * The front's options and limits, its defaults, and what it reports.
 */
import type { Logger } from 'pino';
import type { Authenticator } from '../auth/front-door.js';
import type { TurnObserver } from '../http/turn-api.js';
import type { TurnApiOptions } from '../http/turn-request.js';
import type { TemplatedApp } from '../http/uws.js';
import type { Supervisor } from '../supervisor/supervisor.js';

export interface FrontLimits {
  maxFrameBytes: number;
  clientHighWaterBytes: number;
  clientLowWaterBytes: number;
  clientMaxBufferedBytes: number;
  slowClientTimeoutMs: number;
  maxUnackedToShardBytes: number;
  /**
   * Seconds without a frame before uWS closes a client; it pings the client
   * before that, so only a peer that stopped answering reaches it. 0 or
   * 8..960 (uWS aborts the process on anything else). Default 120.
   */
  idleTimeoutSeconds?: number;
  /** Client connections open (or being authenticated) at most; unset: no limit. */
  maxConnections?: number;
  /** Client bytes in flight toward the children (not yet taken by their sockets), over all connections; unset: no cap. */
  maxBufferedBytes?: number;
}

/** What the front holds now, for /metrics and the admin API. */
export interface FrontMemory {
  /** Client bytes sent toward the children and not yet taken by their sockets. */
  bufferedBytes: number;
  maxBufferedBytes: number | null;
  /** Bytes waiting in the sockets of clients that read slowly (those above the high-water mark). */
  toClientBufferedBytes: number;
  /** Clients closed with 1008 GW_SLOW_CHILD (their window full), so far. */
  slowChildCloses: number;
  /** Clients closed with 1013 GW_OVERLOADED (the gateway-wide cap), so far. */
  overloadCloses: number;
}

export const DEFAULT_FRONT_LIMITS: Omit<FrontLimits, 'maxFrameBytes'> = {
  clientHighWaterBytes: 1024 * 1024,
  clientLowWaterBytes: 256 * 1024,
  clientMaxBufferedBytes: 16 * 1024 * 1024,
  slowClientTimeoutMs: 30_000,
  maxUnackedToShardBytes: 16 * 1024 * 1024,
};

export interface FrontOptions {
  sup: Supervisor;
  auth: Authenticator;
  host: string;
  port: number;
  limits: FrontLimits;
  log: Logger;
  /** Extra HTTP routes (metrics, admin) registered before the catch-all. */
  routes?: (app: TemplatedApp) => void;
  /** Observes data-plane events (metrics). */
  observer?: FrontObserver;
  /** POST /api/turns (turns without a WebSocket); unset: not served. */
  turns?: { options: TurnApiOptions; observer?: TurnObserver };
  /** Tests only: the first connection id, to reach the u32 wrap quickly. */
  firstConnectionId?: number;
  /** More fields for the /readyz body (they do not change the status). */
  readiness?: () => Record<string, unknown>;
}

export interface FrontObserver {
  connectionOpened?(): void;
  connectionClosed?(): void;
  frame?(direction: 'in' | 'out', bytes: number): void;
  backpressure?(what: 'pause' | 'resume' | 'close'): void;
  authFailed?(code: string): void;
}
