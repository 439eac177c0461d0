/**
 * Every message that crosses between the front (main) thread and a shard
 * worker is declared here. The control plane is request/response RPC over a
 * MessagePort (rpc.ts); the data plane is batched binary frames over a second
 * port (frames.ts).
 */
import type { SandboxMode } from './sandbox.js';
import type { ChildUser } from './spawn-user.js';
import type { ClusterClaim, CommitOutcome, SnapshotRef } from './cluster.js';
import type { MessagePort } from 'node:worker_threads';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue, UnpackLimits } from './archive-protocol.js';
import type { SpawnConfig } from './codex-config.js';
import type { SerializedError } from './errors.js';
import type { StoreSpec } from './store-spec.js';
import type { HandoverRecord } from './handover.js';

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

/**
 * Why a start happens: a client waits for it, or it is speculative (a warm
 * restart's pre-start of a workspace that was live at the last drain).
 * Client starts go first at the spawn gate.
 */
export type SpawnPriority = 'client' | 'prestart';

/** A pre-start: its place among pre-starts and the activity recorded for it at the drain. */
export interface PrestartTicket {
  /** 0 for the most recently active workspace. */
  rank: number;
  /** Last activity recorded at the drain (epoch ms); kept for the next drain's record until a client comes. */
  lastActivity: number;
}

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
  /** Set while a pre-started child has not been claimed by a client: the activity recorded for it at the drain. */
  prestarted?: { lastActivity: number };
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
  /** Workspaces with a stop or upload under way and no live child (an idle stop, a crash). */
  busy: string[];
  connections: number;
  eventLoopDelayP99Ms: number;
  /** True while start-up recovery is still taking over homes an earlier gateway left. */
  recovering: boolean;
  /** Warm homes kept on disk by this shard, and their bytes. */
  cachedHomes: number;
  cachedBytes: number;
}

/** Why a child is being stopped; decides the close code its clients see. */
/** `fenced`: the node could not prove its cluster lease alive, so it may no longer own the workspace. */
export type StopReason = 'shutdown' | 'idle' | 'restart' | 'drain' | 'evict' | 'fenced';

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
  /** spawn.user, resolved: children run as this uid/gid (the gateway is root). */
  runAs?: ChildUser;
  /** spawn.sandbox (absent: none). */
  sandbox?: SandboxMode;
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
  /** Disk budget of this shard's warm cache of stored homes (0: stored homes are removed). */
  homeCacheBytes: number;
  logLevel: string;
  logPretty: boolean;
  dataPlane: DataPlaneLimits;
  approvals: ApprovalPolicies;
  /** restart.handover: children may outlive the gateway, for a successor to adopt (handover.ts). */
  handover?: boolean;
  /** Children a previous gateway handed over; each shard adopts its own before recovery. */
  adopt?: HandoverRecord[];
  /** With [cluster]: starts claim the workspace first, and stored state goes to fenced snapshots (cluster.ts). Absent: off. */
  cluster?: boolean;
}

/**
 * Who answers the approval requests codex pushes during a turn. A headless
 * (HTTP) turn has no person behind it, so the gateway always answers there;
 * on the WebSocket path the client does unless an operator says otherwise.
 */
export type HeadlessApprovalPolicy = 'decline' | 'accept';
export type WebSocketApprovalPolicy = 'client' | HeadlessApprovalPolicy;
export interface ApprovalPolicies {
  headless: HeadlessApprovalPolicy;
  websocket: WebSocketApprovalPolicy;
}

// ---- turns without a WebSocket (POST /api/turns) ----------------------------

/** One HTTP turn, parsed and authenticated by the front, run by the owning shard. */
export interface TurnRequest {
  /** Unique on the main thread; names the turn's events and its cancel notice. */
  turnRequestId: number;
  workspaceId: string;
  /** Resume this thread; unset: start a new one. */
  threadId: string | undefined;
  /** codex `turn/start` params; `threadId` is set by the shard. */
  params: Record<string, unknown>;
  /** The whole request (start, thread, turn) must end by then; then turn/interrupt. */
  timeoutMs: number;
  /** Send each notification of the turn to the main thread as it comes (turnEvent). */
  stream: boolean;
}

/**
 * Why a turn could not run or finish: the Go gateway's codes (brokerTimeout,
 * codexRPCError, subprocessCrash, wsDisconnect), or the GW_* code of a
 * workspace start that failed.
 */
export interface TurnTransportError {
  code: string;
  message: string;
  /** The JSON-RPC error code codex answered, for codexRPCError. */
  rpcCode?: number;
}

/** `{threadId, turn}` when the turn ended; `{threadId, transport}` when it could not run or finish. */
export type TurnOutcome =
  | { threadId: string; turn: Record<string, unknown> }
  | { threadId: string | null; transport: TurnTransportError; turnId?: string };

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
  status: { params: { workspaceId: string }; result: WorkspaceStatus | null };
  stats: { params: Record<string, never>; result: ShardStats };
  reapIdle: { params: ReapOptions; result: StopResult[] };
  /** The least recently active running child with no client, if any. */
  evictCandidate: { params: Record<string, never>; result: { workspaceId: string; lastActivity: number } | null };
  /** Stops that child if it is still idle since `lastActivity`; true when a stop began. */
  evict: { params: { workspaceId: string; lastActivity: number }; result: boolean };
  close: { params: Record<string, never>; result: StopResult[] };
  /** Lets go of every running child for a successor (WorkspaceTable.release); the shard is closed afterwards. */
  handover: { params: Record<string, never>; result: HandoverRecord[] };
  /** Runs one turn over the shard's own connection to the child; never rejects for turn failures (TurnOutcome). */
  runTurn: { params: TurnRequest; result: TurnOutcome };
  /** Starts the workspace speculatively (warm restart); its start yields to client starts. */
  prestart: { params: { workspaceId: string } & PrestartTicket; result: ChildInfo };
};

/** Calls a shard makes into the main thread. */
export type HostMethods = {
  buildConfig: { params: { builderId: number; workspaceId: string; loopbackToken: string }; result: SpawnConfig };
  archive: { params: ArchiveTask; result: ArchiveOutcome<ArchiveValue> };
  /** Waits for a spawn permit and a child slot (limits); GW_CAPACITY when none can be made. */
  enterSpawn: { params: { workspaceId: string; generation: string; priority: SpawnPriority; rank: number }; result: { queuedMs: number; priority: SpawnPriority } };
  /** With [cluster] (src/main/cluster): ownership and the current-state pointer, kept in etcd. */
  clusterClaim: { params: { workspaceId: string }; result: ClusterClaim };
  clusterCurrent: { params: { workspaceId: string }; result: SnapshotRef | null };
  clusterCommit: { params: { workspaceId: string; runEpoch: number; ref: SnapshotRef; homePath?: string }; result: CommitOutcome };
  clusterRelease: { params: { workspaceId: string }; result: null };
  /**
   * The SHA-256 (hex) of a loopback token, registered before the child that
   * holds it is spawned or adopted: lookups are answered on the main thread
   * (token-registry.ts). Forgotten by the forgetToken notice.
   */
  registerToken: { params: { key: string; workspaceId: string }; result: null };
};

/** One-way notices. */
export type ShardNotices = {
  touch: { workspaceId: string };
  /** The HTTP client of a turn went away: stop its events, and interrupt it if it asked to. */
  turnClientGone: { turnRequestId: number; interrupt: boolean };
};

export type HostNotices = {
  /** `adopted`: handed over by a previous gateway (it takes a child slot without a start). */
  childStarted: { workspaceId: string; generation: string; pid: number; adopted?: boolean };
  /** The start of `generation` finished (ready or failed): its spawn permit is free; on failure, its slot too. */
  spawnSettled: { generation: string; ok: boolean };
  /** A client now waits for the pre-start of `generation`: it goes before other pre-starts at the gate. */
  promoteSpawn: { generation: string };
  /** A workspace's child stopped and its home was handled (for drain progress and metrics). */
  workspaceStopped: { workspaceId: string; reason: string; saved: boolean };
  /** A start finished: ready (errorCode null) or failed. */
  startFinished: { workspaceId: string; ms: number; errorCode: string | null };
  childExited: { workspaceId: string; generation: string; code: number | null; signal: string | null };
  /** The process holding the token of this digest is gone (or handed over): it no longer resolves. */
  forgetToken: { key: string };
  /** A notification of a streamed HTTP turn, as codex sent it. */
  turnEvent: { turnRequestId: number; method: string; params: unknown };
  /** The gateway answered an approval request itself (a policy was applied). */
  approvalAnswered: { workspaceId: string; path: 'http' | 'websocket'; method: string; decision: string };
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
