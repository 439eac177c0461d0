/**
 * The library API: one codex app-server per workspace, spread over shard
 * worker threads by a stable hash of the workspace id. This class runs on the
 * caller's thread; it routes each call to the shard that owns the key and
 * keeps only what the caller needs (handles, config builders).
 */
import { EventEmitter } from 'node:events';
import os from 'node:os';
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import { GatewayError, toGatewayError } from '../../shared/errors.js';
import { createThreadLogger, defaultLogLevel } from '../../shared/logger.js';
import type { ChildInfo, PrestartTicket, ReapOptions, ShardStats, SpawnPriority, StopResult, TurnOutcome, TurnRequest, WorkspaceStatus } from '../../shared/protocol.js';
import { shardOf, validateWorkspaceId } from '../../shared/workspace-id.js';
import { ArchivePool } from './archive-pool.js';
import type { ClusterOwnership } from '../cluster/ownership.js';
import type { ChildHandle } from './child-handle.js';
import { Children } from './children.js';
import { stopOrphanedGroups } from './orphans.js';
import { ConfigBuilders } from './config-builders.js';
import { shardHost } from './shard-host.js';
import { ShardPool } from './shard-pool.js';
import { TokenRegistry } from './token-registry.js';
import { TurnStreams } from './turn-streams.js';
import type { ShardRef } from './shard-pool.js';
import { SpawnAdmission } from './spawn-admission.js';
import type { HandoverRecord } from '../../shared/handover.js';
import { releaseShards } from './shard-handover.js';
import { describeStore, resolveInit } from './options.js';
import { checkSandbox, secureHomesRoot } from '../isolation.js';
import type { ConfigBuilder, SupervisorOptions, WorkspaceKey } from './options.js';

export { DEFAULT_DATA_PLANE, describeStore } from './options.js';
export type { ConfigBuilder, SupervisorObserver, SupervisorOptions, WorkspaceKey } from './options.js';

/**
 * Calls that only read or flag a shard's state answer at once from a healthy
 * shard; one that does not answer within this is stuck, and the caller (a
 * metrics scrape, a workspace's status, an upgrade waiting for a slot) gets
 * GW_SHARD_FAILED instead of waiting forever. Calls that do work (ensure,
 * shutdown, reapIdle, close) carry their own time limits.
 */
const QUERY_DEADLINE = { timeoutMs: 10_000 } as const;

/**
 * Events: 'shard-died' (index): a shard worker died; its client connections
 * are gone and its children are being stopped; 'shard-restarted' (index): a
 * new worker took its place and answers (the dead one's homes are uploaded
 * by its recovery); 'shard-down' (index): it kept dying and was given up.
 */
export class Supervisor extends EventEmitter {
  private readonly children = new Children();
  private readonly builders: ConfigBuilders;
  private readonly turns = new TurnStreams();
  private readonly tokens = new TokenRegistry();
  private closing: Promise<StopResult[]> | undefined;
  private readonly shards: ShardPool;
  private readonly admission: SpawnAdmission;

  private constructor(
    private readonly opts: SupervisorOptions,
    readonly log: Logger,
    private readonly pool: ArchivePool,
    readonly shutdownConcurrency: number,
  ) {
    super();
    this.builders = new ConfigBuilders(opts.configBuilder);
    this.admission = new SpawnAdmission(opts.limits, { evictOne: () => this.evictOne() }, opts.observer);
    this.shards = new ShardPool(
      {
        host: (ref, current) =>
          shardHost({ opts, pool, builders: this.builders, admission: this.admission, children: this.children, turns: this.turns, tokens: this.tokens, cluster: () => this.cluster(), childGone: (g, e) => this.childGone(g, e) }, ref, current),
        died: (ref) => this.shardDied(ref),
        restarted: (i) => this.emit('shard-restarted', i),
        givenUp: (i) => this.emit('shard-down', i),
        closing: () => this.closing !== undefined,
      },
      log,
    );
  }

  static async start(options: SupervisorOptions): Promise<Supervisor> {
    const init = resolveInit(options);
    const log = options.logger ?? createThreadLogger({ level: defaultLogLevel(), pretty: process.stdout.isTTY === true, base: { thread: 'main' } });
    const shards = options.shards ?? Math.max(1, os.availableParallelism());
    if (!Number.isInteger(shards) || shards < 1 || shards > 256) throw new GatewayError('GW_BAD_OPTIONS', `shards must be an integer from 1 to 256, got ${String(shards)}`);
    const concurrency = options.shutdownConcurrency ?? 16;
    await secureHomesRoot({ homeRoot: init.homeRoot, ...(init.store.kind === 'file' ? { storeDir: init.store.dir } : {}), ...(init.runAs === undefined ? {} : { runAs: init.runAs }) });
    checkSandbox(init.sandbox ?? 'none', { homeRoot: init.homeRoot, codexBin: init.codexBin });
    const sup = new Supervisor(options, log, new ArchivePool(options.archiveThreads), concurrency);
    // The lease first: shards start recovering leftover homes at once, and storing them needs ownership.
    if (options.cluster !== undefined) {
      const cluster = options.cluster;
      cluster.on('lost', () => sup.fence());
      await cluster.start();
    }
    const level = (log.level as string | undefined) ?? defaultLogLevel();
    for (let i = 0; i < shards; i++) {
      sup.shards.start({
        ...init,
        shard: i,
        shards,
        logLevel: level,
        shutdownConcurrency: Math.max(1, Math.ceil(concurrency / shards)),
        // Each shard keeps the homes of its own workspaces warm.
        homeCacheBytes: Math.floor(init.homeCacheBytes / shards),
        ...(options.adopt === undefined ? {} : { adopt: options.adopt.filter((r) => shardOf(r.workspaceId, shards) === i) }),
      });
    }
    process.once('exit', sup.killAllOnExit);
    try {
      await Promise.all(sup.shards.refs.map((s) => s.rpc.call('stats', {})));
    } catch (err) {
      await sup.destroy();
      throw toGatewayError(err, 'GW_SHARD_FAILED', 'a shard worker failed to start');
    }
    log.info({ shards, homeRoot: init.homeRoot, store: describeStore(init.store), codexBin: init.codexBin, spawnUser: init.runAs?.uid ?? null, sandbox: init.sandbox ?? 'none' }, 'supervisor started');
    return sup;
  }

  private cluster(): ClusterOwnership {
    if (this.opts.cluster === undefined) throw new GatewayError('GW_INTERNAL', 'a shard asked for the cluster, but no [cluster] is configured');
    return this.opts.cluster;
  }

  /**
   * The lease can no longer be proven alive: a peer may own these
   * workspaces before long, so every child stops now. Their homes are
   * uploaded, but a snapshot becomes current only if etcd still names this
   * node the owner (ownership.ts); the rest is kept, never current.
   */
  private fence(): void {
    for (const s of this.liveShards()) {
      s.rpc.call('shutdownAll', { reason: 'fenced', concurrency: this.shutdownConcurrency }).catch((err: unknown) => this.log.error({ shard: s.index, err: toGatewayError(err).describe() }, 'cluster: could not stop the children of a shard'));
    }
  }

  private childGone(generation: string, exit: { code: number | null; signal: string | null }): void {
    this.admission.release(generation);
    this.children.exited(generation, exit);
  }

  /**
   * A shard worker is gone (shard-pool.ts). Its children's loopback tokens
   * go, 'shard-died' tells the front to close its clients, and its children
   * are stopped (orphans.ts). Their homes stay on disk; a new worker takes
   * the shard over and its recovery uploads them. A shard that keeps dying
   * is given up (unhealthy); its homes wait for the next start.
   */
  private shardDied(ref: ShardRef): void {
    this.tokens.forgetShard(ref.index);
    const orphans = this.children.ofShard(ref.index);
    for (const c of orphans) this.childGone(c.generation, { code: null, signal: null });
    if (orphans.length > 0) {
      this.log.warn({ shard: ref.index, pids: orphans.map((c) => c.pid) }, 'stopping the children of a dead shard worker');
      void stopOrphanedGroups(orphans.map((c) => c.pid), ref.init.stopGraceMs);
    }
    this.emit('shard-died', ref.index);
    this.admission.abandon(ref);
  }

  /** codex app-server processes alive now (started and not yet exited). */
  get childProcessCount(): number {
    return this.children.count;
  }

  get shardCount(): number {
    return this.shards.count;
  }

  /** True while every shard worker runs. */
  get healthy(): boolean {
    return this.shards.allUp && this.closing === undefined;
  }

  /** @internal The front thread's end of shard i's frame port. */
  dataPort(i: number): MessagePort {
    return this.shards.ref(i).data;
  }

  shardFor(workspaceId: string): number {
    return this.shards.shardFor(workspaceId);
  }

  private shard(workspaceId: string): ShardRef {
    if (this.closing !== undefined) throw new GatewayError('GW_CLOSED', 'supervisor is closed');
    return this.shards.ref(this.shardFor(workspaceId));
  }

  /**
   * A live child for the workspace, spawning one if needed. Concurrent calls
   * for one key share one start: one builder call, one download, one process.
   */
  async ensureSubprocess(key: WorkspaceKey, build: ConfigBuilder): Promise<ChildHandle> {
    const workspaceId = validateWorkspaceId(key?.workspaceId);
    if (typeof build !== 'function') throw new GatewayError('GW_BAD_OPTIONS', 'ensureSubprocess needs a ConfigBuilder function');
    const ref = this.shard(workspaceId);
    return this.builders.with(build, async (builderId) => this.children.handle(await ref.rpc.call('ensure', { workspaceId, builderId })));
  }

  /**
   * Runs one turn in the workspace on its shard (POST /api/turns): starts
   * the child if needed, starts or resumes the thread, runs `turn/start`
   * with `params`, and resolves with the completed turn or a transport
   * error (it rejects only when the shard itself fails). `onEvent` gets the
   * turn's notifications as they come; `clientGone` stops them and, with
   * `interrupt`, interrupts the turn.
   */
  runTurn(
    turn: Omit<TurnRequest, 'turnRequestId' | 'stream'>,
    onEvent?: (method: string, params: unknown) => void,
  ): { outcome: Promise<TurnOutcome>; clientGone(interrupt: boolean): void } {
    const workspaceId = validateWorkspaceId(turn.workspaceId);
    const ref = this.shard(workspaceId);
    return this.turns.run(ref.rpc, { ...turn, workspaceId }, onEvent);
  }

  /**
   * Starts the workspace speculatively (a warm restart): its start yields to
   * every start a client waits for, and is promoted when a client asks for
   * the workspace meanwhile. `atGate` resolves once the start has asked for
   * its spawn permit (its home is prepared) or has ended without asking (a
   * child was running already, or it failed): pre-starts issued one after
   * another on that signal reach the gate in rank order, while the next
   * one's download overlaps this one's wait. `started` is the start itself.
   */
  prestart(workspaceId: string, ticket: PrestartTicket): { atGate: Promise<void>; started: Promise<ChildInfo> } {
    validateWorkspaceId(workspaceId);
    const ref = this.shard(workspaceId);
    return this.admission.prestart(workspaceId, () => ref.rpc.call('prestart', { workspaceId, ...ticket }));
  }

  /** Starts waiting at the spawn gate now, by priority. */
  get spawnQueue(): Record<SpawnPriority, number> {
    return this.admission.queued;
  }

  /** Bumps the workspace's last activity, for the idle reaper. */
  touch(key: WorkspaceKey): void {
    const workspaceId = validateWorkspaceId(key?.workspaceId);
    this.shard(workspaceId).rpc.notify('touch', { workspaceId });
  }

  /**
   * Stops the child (SIGTERM, SIGKILL after the grace period), uploads its
   * CODEX_HOME, drops the entry and its loopback token. Safe on a missing
   * key. When the upload fails the directory stays in the spool and the
   * result says so (`saved: false`).
   */
  async shutdown(key: WorkspaceKey): Promise<StopResult> {
    const workspaceId = validateWorkspaceId(key?.workspaceId);
    return this.shard(workspaceId).rpc.call('shutdown', { workspaceId, reason: 'shutdown' });
  }

  /** Shuts every child down, in parallel with a concurrency bound. */
  async shutdownAll(): Promise<StopResult[]> {
    if (this.closing !== undefined) throw new GatewayError('GW_CLOSED', 'supervisor is closed');
    const per = await Promise.all(this.liveShards().map((s) => s.rpc.call('shutdownAll', { reason: 'shutdown', concurrency: Math.max(1, Math.ceil(this.shutdownConcurrency / this.shards.count)) })));
    return per.flat();
  }

  /** The workspace whose live child holds this loopback token, from the shards' registrations (token-registry.ts). */
  lookupWorkspaceForLoopbackToken(token: string): Promise<string | undefined> {
    return Promise.resolve(this.tokens.lookup(token));
  }

  /** Live status of one workspace, or undefined when it has no child. */
  async workspaceStatus(key: WorkspaceKey): Promise<WorkspaceStatus | undefined> {
    const workspaceId = validateWorkspaceId(key?.workspaceId);
    return (await this.shard(workspaceId).rpc.call('status', { workspaceId }, QUERY_DEADLINE)) ?? undefined;
  }

  /** Every live shard's statistics; a shard that does not answer within `timeoutMs` (default 10 s) fails it with GW_SHARD_FAILED. */
  async stats(o: { timeoutMs?: number } = {}): Promise<ShardStats[]> {
    return Promise.all(this.liveShards().map((s) => s.rpc.call('stats', {}, { timeoutMs: o.timeoutMs ?? QUERY_DEADLINE.timeoutMs })));
  }

  /** Stops children idle beyond the limits (see IdleReaper). */
  async reapIdle(o: ReapOptions): Promise<StopResult[]> {
    if (this.closing !== undefined) return [];
    const per = await Promise.all(this.liveShards().map((s) => s.rpc.call('reapIdle', o)));
    return per.flat();
  }

  /** Starts stopping the least recently active idle child over all shards. */
  private async evictOne(): Promise<boolean> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const candidates = await Promise.all(this.liveShards().map(async (s) => ({ s, c: await s.rpc.call('evictCandidate', {}, QUERY_DEADLINE) })));
      const best = candidates.filter((x) => x.c !== null).sort((a, b) => (a.c?.lastActivity ?? 0) - (b.c?.lastActivity ?? 0))[0];
      if (best?.c == null) return false;
      if (await best.s.rpc.call('evict', best.c, QUERY_DEADLINE)) return true;
    }
    return false;
  }

  private liveShards(): ShardRef[] {
    return this.shards.live();
  }

  /**
   * Graceful and idempotent: stops every child and uploads every home (what
   * cannot be uploaded stays on disk for the next start), then ends the
   * shard workers and the archive pool.
   */
  close(): Promise<StopResult[]> {
    this.closing ??= (async () => {
      const per = await Promise.all(
        this.liveShards().map((s) =>
          s.rpc.call('close', {}).then(
            (results) => results,
            (err: unknown) => {
              this.log.error({ shard: s.index, err: toGatewayError(err).describe() }, 'shard did not close cleanly');
              return [] as StopResult[];
            },
          ),
        ),
      );
      await this.destroy();
      return per.flat();
    })();
    return this.closing;
  }

  /** Lets go of every running child for a successor (restart.handover; shard-handover.ts), then ends the shards. */
  handover(): Promise<HandoverRecord[]> {
    let records: HandoverRecord[] = [];
    this.closing ??= releaseShards(this.liveShards(), this.children, this.log).then(async (r) => {
      records = r;
      await this.destroy();
      return [];
    });
    return this.closing.then(() => records);
  }

  /** Immediate: ends workers and the pool without stopping children cleanly. */
  async destroy(): Promise<void> {
    await this.shards.terminate();
    this.tokens.clear(); // their children are stopped below, or were handed over
    // The shards are done: any upload still running outlived its drain budget.
    // Uploads are atomic and its home stays on disk for the next start, so it
    // is abandoned rather than waited for.
    await this.pool.close({ graceMs: 1000 });
    await this.opts.cluster?.close().catch((err: unknown) => this.log.warn({ err: toGatewayError(err).describe() }, 'cluster: close failed'));
    this.killAllOnExit();
    process.removeListener('exit', this.killAllOnExit);
  }

  /** Last resort when the process exits without close(): no child outlives the gateway. */
  private readonly killAllOnExit = (): void => this.children.killAll();
}
