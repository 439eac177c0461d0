/**
 * Every message that crosses between the front (main) thread and a shard
 * worker is declared here. The control plane is request/response RPC over a
 * MessagePort (rpc.ts); the data plane is batched binary frames over a second
 * port (frames.ts).
 */
import type { MessagePort } from 'node:worker_threads';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue, UnpackLimits } from './archive-protocol.js';
import type { SpawnConfig } from './codex-config.js';
import type { SerializedError } from './errors.js';
import type { StoreSpec } from './store-spec.js';

/** What a shard reports about a live child; the main thread wraps it in a ChildHandle. */
export interface ChildInfo {
  workspaceId: string;
  /** Unique per start; names the CODEX_HOME directory. */
  generation: string;
  pid: number;
  wsUrl: string;
  /** Capability secret for the child's WebSocket: send as `Authorization: Bearer`. */
  wsToken: string;
  httpUrl: string;
  codexHome: string;
  startedAt: number;
  shard: number;
}

export type WorkspaceState = 'starting' | 'running' | 'stopping';

export interface WorkspaceStatus {
  workspaceId: string;
  state: WorkspaceState;
  generation: string;
  pid: number | undefined;
  shard: number;
  clients: number;
  lastActivity: number;
  startedAt: number;
  codexHome: string;
}

export interface SpoolStatus {
  workspaceId: string;
  dir: string;
  bytes: number;
  attempts: number;
  since: number;
  nextRetryAt: number | undefined;
  lastError: string | undefined;
}

export interface ShardStats {
  shard: number;
  workspaces: WorkspaceStatus[];
  spool: SpoolStatus[];
  connections: number;
  eventLoopDelayP99Ms: number;
}

/** Why a child is being stopped; decides the close code its clients see. */
export type StopReason = 'shutdown' | 'idle' | 'restart' | 'drain' | 'evict';

export interface StopResult {
  workspaceId: string;
  /** True when there was a child (or a dead home) to stop. */
  stopped: boolean;
  /** True when its CODEX_HOME reached the store and the directory was removed. */
  saved: boolean;
  /** Set when the upload failed; the directory is kept in the spool. */
  error?: string;
  spooledDir?: string;
}

export interface ReapOptions {
  idleAfterMs: number;
  /** Entries with clients attached are reaped only past this idle time. */
  hardIdleAfterMs: number;
  /** Entries older than this are reaped regardless of activity (optional). */
  maxAgeMs?: number;
}

/** Settings every shard receives at start (cloneable). */
export interface ShardInit {
  shard: number;
  shards: number;
  codexBin: string;
  homeRoot: string;
  store: StoreSpec;
  extraEnv: string[];
  envAllowlist: string[];
  readyTimeoutMs: number;
  /** Nice levels children run below the gateway. */
  childNice: number;
  stopGraceMs: number;
  /** Children this shard stops at once during shutdownAll and close. */
  shutdownConcurrency: number;
  builderTimeoutMs: number;
  archiveExclude: string[];
  unpackLimits: UnpackLimits;
  spoolRetryBaseMs: number;
  spoolRetryMaxMs: number;
  crashLoop: { threshold: number; windowMs: number; backoffBaseMs: number; backoffMaxMs: number };
  /** Ask the main thread before each spawn (limits.max_children / max_concurrent_spawns are set). */
  gatedSpawns: boolean;
  /** Time one workspace's stop and upload may take during a drain; past it the home stays on disk. */
  drainBudgetMs: number;
  logLevel: string;
  logPretty: boolean;
  dataPlane: DataPlaneLimits;
}

export interface DataPlaneLimits {
  /** Largest frame either way. */
  maxFrameBytes: number;
  /** Bytes queued toward a child (before it is connected, or unsent) before the client is closed. */
  maxPendingToChildBytes: number;
  /** Bytes sent toward a client and not yet acked by the front before its child connection is paused. */
  windowBytes: number;
  /**
   * Time the child has to complete a connection's WebSocket handshake; a
   * child that accepts TCP and never answers must not hold the client (and
   * its queued frames) forever. Default 10 s.
   */
  childHandshakeTimeoutMs?: number;
}

/** Calls the main thread makes into a shard. */
export type ShardMethods = {
  ensure: { params: { workspaceId: string; builderId: number }; result: ChildInfo };
  shutdown: { params: { workspaceId: string; reason: StopReason }; result: StopResult };
  shutdownAll: { params: { reason: StopReason; concurrency: number }; result: StopResult[] };
  lookup: { params: { token: string }; result: string | null };
  status: { params: { workspaceId: string }; result: WorkspaceStatus | null };
  stats: { params: Record<string, never>; result: ShardStats };
  reapIdle: { params: ReapOptions; result: StopResult[] };
  /** The least recently active running child with no client, if any. */
  evictCandidate: { params: Record<string, never>; result: { workspaceId: string; lastActivity: number } | null };
  /** Stops that child if it is still idle since `lastActivity`; true when a stop began. */
  evict: { params: { workspaceId: string; lastActivity: number }; result: boolean };
  close: { params: Record<string, never>; result: StopResult[] };
};

/** Calls a shard makes into the main thread. */
export type HostMethods = {
  buildConfig: { params: { builderId: number; workspaceId: string; loopbackToken: string }; result: SpawnConfig };
  archive: { params: ArchiveTask; result: ArchiveOutcome<ArchiveValue> };
  /** Waits for a spawn permit and a child slot (limits); GW_CAPACITY when none can be made. */
  enterSpawn: { params: { workspaceId: string; generation: string }; result: null };
};

/** One-way notices. */
export type ShardNotices = {
  touch: { workspaceId: string };
};

export type HostNotices = {
  childStarted: { workspaceId: string; generation: string; pid: number };
  /** The start of `generation` finished (ready or failed): its spawn permit is free; on failure, its slot too. */
  spawnSettled: { generation: string; ok: boolean };
  /** A workspace's child stopped and its home was handled (for drain progress and metrics). */
  workspaceStopped: { workspaceId: string; reason: string; saved: boolean };
  /** A start finished: ready (errorCode null) or failed. */
  startFinished: { workspaceId: string; ms: number; errorCode: string | null };
  childExited: { workspaceId: string; generation: string; code: number | null; signal: string | null };
};

// ---- wire format of the control ports -------------------------------------

export interface RpcRequestMessage {
  type: 'rpc/request';
  id: number;
  method: string;
  params: unknown;
}

export interface RpcResponseMessage {
  type: 'rpc/response';
  id: number;
  ok: boolean;
  value?: unknown;
  error?: SerializedError;
}

export interface RpcNoticeMessage {
  type: 'rpc/notice';
  method: string;
  params: unknown;
}

export type ControlMessage = RpcRequestMessage | RpcResponseMessage | RpcNoticeMessage;

/** The data the worker receives as workerData. */
export interface ShardWorkerData {
  init: ShardInit;
  control: MessagePort;
  data: MessagePort;
}
