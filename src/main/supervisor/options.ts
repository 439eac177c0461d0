/**
 * The options of Supervisor.start, their defaults, and their resolution into
 * the cloneable settings every shard receives.
 */
import path from 'node:path';
import type { Logger } from 'pino';
import { DEFAULT_ARCHIVE_EXCLUDES, DEFAULT_UNPACK_LIMITS } from '../../shared/archive-protocol.js';
import type { UnpackLimits } from '../../shared/archive-protocol.js';
import { DEFAULT_ENV_ALLOWLIST, parseEnvEntries } from '../../shared/child-env.js';
import { defaultCodexBin } from '../../shared/codex-bin.js';
import type { SpawnConfig } from '../../shared/codex-config.js';
import { DEFAULT_CRASH_LOOP } from '../../shared/crash-loop.js';
import type { CrashLoopOptions } from '../../shared/crash-loop.js';
import { GatewayError } from '../../shared/errors.js';
import type { ApprovalPolicies, DataPlaneLimits, ShardInit } from '../../shared/protocol.js';
import type { ObjectStore } from '../../shared/stores/object-store.js';
import type { StoreSpec } from '../../shared/store-spec.js';
import type { ClusterOwnership } from '../cluster/ownership.js';
import type { HandoverRecord } from '../../shared/handover.js';
import type { SpawnLimits } from './spawn-gate.js';
import type { SandboxMode } from '../../shared/sandbox.js';
import { resolveChildUser } from '../../shared/spawn-user.js';

export interface WorkspaceKey {
  workspaceId: string;
}

/**
 * Produces the spawn configuration for a new child. Receives the per-spawn
 * loopback token (32 random bytes, hex) so it can be embedded where needed.
 * May be async and hit the network; a rejection fails the ensure cleanly.
 */
export type ConfigBuilder = (loopbackToken: string, key: WorkspaceKey) => SpawnConfig | Promise<SpawnConfig>;

export interface SupervisorOptions {
  /** Default: the native binary inside the installed @openai/codex. */
  codexBin?: string;
  /** Directory under which CODEX_HOMEs live. */
  homeRoot: string;
  store: ObjectStore | StoreSpec;
  /** `K=V` entries given to every child. */
  extraEnv?: string[];
  /** Gateway environment variables children may inherit (never CXG_* or AWS_*). */
  envAllowlist?: string[];
  /**
   * spawn.user: a user name or numeric `uid:gid` children run as. Needs the
   * gateway to run as root (else GW_SPAWN_USER).
   */
  spawnUser?: string;
  /** spawn.sandbox: `bubblewrap` runs each child in a sandbox that shows it only its own home. Default `none`. */
  sandbox?: SandboxMode;
  /** Shard worker threads. Default: available cores. */
  shards?: number;
  logger?: Logger;
  /** Builder for children started by client connections (the data plane). */
  configBuilder?: ConfigBuilder;
  /** Time from spawn until /readyz must answer 200. Default 5 s. */
  readyTimeoutMs?: number;
  /** Nice levels children run below the gateway, so its threads keep serving frames under load. Default 0. */
  childNice?: number;
  /** SIGTERM → SIGKILL grace. Default 10 s. */
  stopGraceMs?: number;
  /** Children stopped at once by shutdownAll and close. Default 16. */
  shutdownConcurrency?: number;
  /** Time a ConfigBuilder may take. Default 30 s. */
  builderTimeoutMs?: number;
  /** Paths under CODEX_HOME never archived. Default: config.toml, auth.json, tmp, .tmp. */
  archiveExclude?: string[];
  unpackLimits?: Partial<UnpackLimits>;
  /** Threads of the archive pool. Default: max(2, cores). */
  archiveThreads?: number;
  /** First retry delay of a failed upload; doubles up to spoolRetryMaxMs. Default 1 s / 5 min. */
  spoolRetryBaseMs?: number;
  spoolRetryMaxMs?: number;
  dataPlane?: Partial<DataPlaneLimits>;
  /** Children at once and starts at once, over all shards. Default: no limit. */
  limits?: SpawnLimits;
  /** Backoff for workspaces whose child keeps exiting early. */
  crashLoop?: Partial<CrashLoopOptions>;
  /** Time one workspace's stop and upload may take during close(). Default 30 s. */
  drainBudgetMs?: number;
  /**
   * Stored homes kept on disk after their upload, so the next start skips the
   * download while its copy is still the stored generation. Default: on, 10 GiB
   * over all shards, least recently used removed first.
   */
  homeCache?: { enabled?: boolean; maxBytes?: number };
  /** Called when a workspace's child stopped and its home was handled (progress, metrics). */
  onWorkspaceStopped?: (e: { workspaceId: string; reason: string; saved: boolean }) => void;
  /** Sees starts, stops and archive transfers (metrics). */
  observer?: SupervisorObserver;
  /**
   * Who answers approval requests: in HTTP turns the gateway always does
   * (default `decline`); on WebSocket connections the client does
   * (`client`, the default) unless this says `accept` or `decline`.
   */
  approvals?: Partial<ApprovalPolicies>;
  /**
   * With [cluster]: this node's membership (src/main/cluster). Starts then
   * claim the workspace in etcd before anything runs, and stored state is
   * switched by the fencing token; when the lease cannot be proven alive,
   * every child is stopped.
   */
  cluster?: ClusterOwnership;
  /** restart.handover: children may outlive this gateway, for a successor to adopt (Supervisor.handover). */
  handover?: boolean;
  /** Children a previous gateway handed over, adopted by their shards before recovery. */
  adopt?: HandoverRecord[];
}

export interface SupervisorObserver {
  startFinished?(e: { workspaceId: string; ms: number; errorCode: string | null }): void;
  /** A start got its spawn permit after `queuedMs` in the queue (only when spawns are gated). */
  spawnAdmitted?(e: { workspaceId: string; priority: 'client' | 'prestart'; queuedMs: number }): void;
  workspaceStopped?(e: { workspaceId: string; reason: string; saved: boolean }): void;
  archiveFinished?(e: { op: 'upload' | 'download'; ok: boolean; bytes: number; ms: number; code: string | null; found: boolean }): void;
  approvalAnswered?(e: { workspaceId: string; path: 'http' | 'websocket'; method: string; decision: string }): void;
}

export const DEFAULT_APPROVALS: ApprovalPolicies = { headless: 'decline', websocket: 'client' };

function approvalsOf(a: Partial<ApprovalPolicies> | undefined): ApprovalPolicies {
  const out = { ...DEFAULT_APPROVALS, ...(a ?? {}) };
  if (out.headless !== 'accept' && out.headless !== 'decline') throw new GatewayError('GW_BAD_OPTIONS', `approvals.headless must be accept or decline, got ${String(out.headless)}`);
  if (out.websocket !== 'client' && out.websocket !== 'accept' && out.websocket !== 'decline') throw new GatewayError('GW_BAD_OPTIONS', `approvals.websocket must be client, accept or decline, got ${String(out.websocket)}`);
  return out;
}

const MiB = 1024 * 1024;

export const DEFAULT_DATA_PLANE: DataPlaneLimits = {
  maxFrameBytes: 64 * MiB,
  maxPendingToChildBytes: 80 * MiB,
  windowBytes: 1 * MiB,
  childHandshakeTimeoutMs: 10_000,
};

export const DEFAULT_HOME_CACHE_BYTES = 10 * 1024 * MiB;

/** homeCacheBytes is the whole cache budget here; each shard gets its share. */
export type ResolvedInit = Omit<ShardInit, 'shard' | 'shards' | 'logLevel' | 'shutdownConcurrency'>;

function niceLevel(v: number | undefined): number {
  const n = v ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > 19) throw new GatewayError('GW_BAD_OPTIONS', `childNice must be an integer from 0 to 19, got ${String(v)}`);
  return n;
}

function positive(name: string, v: number | undefined, dflt: number): number {
  const n = v ?? dflt;
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) throw new GatewayError('GW_BAD_OPTIONS', `${name} must be a positive number, got ${String(v)}`);
  return n;
}

function nonNegative(name: string, v: number | undefined, dflt: number): number {
  const n = v ?? dflt;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new GatewayError('GW_BAD_OPTIONS', `${name} must be a number of 0 or more, got ${String(v)}`);
  return n;
}

export function resolveInit(o: SupervisorOptions): ResolvedInit {
  if (o === null || typeof o !== 'object') throw new GatewayError('GW_BAD_OPTIONS', 'options are required');
  if (typeof o.homeRoot !== 'string' || o.homeRoot.length === 0) throw new GatewayError('GW_BAD_OPTIONS', 'homeRoot is required');
  const store = storeSpecOf(o.store);
  parseEnvEntries(o.extraEnv, 'extraEnv');
  return {
    codexBin: o.codexBin ?? defaultCodexBin(),
    homeRoot: path.resolve(o.homeRoot),
    store,
    extraEnv: [...(o.extraEnv ?? [])],
    envAllowlist: [...(o.envAllowlist ?? DEFAULT_ENV_ALLOWLIST)],
    ...(o.spawnUser === undefined ? {} : { runAs: resolveChildUser(o.spawnUser) }),
    sandbox: sandboxOf(o.sandbox),
    readyTimeoutMs: positive('readyTimeoutMs', o.readyTimeoutMs, 5000),
    childNice: niceLevel(o.childNice),
    stopGraceMs: positive('stopGraceMs', o.stopGraceMs, 10_000),
    builderTimeoutMs: positive('builderTimeoutMs', o.builderTimeoutMs, 30_000),
    archiveExclude: [...(o.archiveExclude ?? DEFAULT_ARCHIVE_EXCLUDES)],
    unpackLimits: { ...DEFAULT_UNPACK_LIMITS, ...(o.unpackLimits ?? {}) },
    spoolRetryBaseMs: positive('spoolRetryBaseMs', o.spoolRetryBaseMs, 1000),
    spoolRetryMaxMs: positive('spoolRetryMaxMs', o.spoolRetryMaxMs, 5 * 60_000),
    logPretty: process.stdout.isTTY === true,
    dataPlane: { ...DEFAULT_DATA_PLANE, ...(o.dataPlane ?? {}) },
    crashLoop: { ...DEFAULT_CRASH_LOOP, ...(o.crashLoop ?? {}) },
    gatedSpawns: o.limits?.maxChildren !== undefined || o.limits?.maxConcurrentSpawns !== undefined,
    drainBudgetMs: positive('drainBudgetMs', o.drainBudgetMs, 30_000),
    homeCacheBytes: o.homeCache?.enabled === false ? 0 : nonNegative('homeCache.maxBytes', o.homeCache?.maxBytes, DEFAULT_HOME_CACHE_BYTES),
    approvals: approvalsOf(o.approvals),
    cluster: o.cluster !== undefined,
    handover: o.handover === true,
  };
}

function sandboxOf(m: SandboxMode | undefined): SandboxMode {
  if (m === undefined || m === 'none' || m === 'bubblewrap') return m ?? 'none';
  throw new GatewayError('GW_BAD_OPTIONS', `sandbox must be none or bubblewrap, got ${String(m)}`);
}

function storeSpecOf(store: ObjectStore | StoreSpec | undefined): StoreSpec {
  if (store === undefined || store === null) throw new GatewayError('GW_BAD_OPTIONS', 'store is required (FileObjectStore or S3ObjectStore)');
  const spec = 'spec' in store ? store.spec : store;
  if (spec?.kind === 'file' && typeof spec.dir === 'string' && spec.dir.length > 0) return { kind: 'file', dir: path.resolve(spec.dir) };
  if (spec?.kind === 's3' && typeof spec.bucket === 'string' && spec.bucket.length > 0) return { ...spec };
  throw new GatewayError('GW_BAD_OPTIONS', 'store must be a FileObjectStore, an S3ObjectStore, or a store spec');
}

export function describeStore(s: StoreSpec): string {
  return s.kind === 'file' ? `file://${s.dir}` : `s3://${s.bucket}/${s.prefix ?? ''}${s.endpoint !== undefined ? ` at ${s.endpoint}` : ''}`;
}
