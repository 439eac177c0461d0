/**
 * The library API: one codex app-server per workspace, spread over shard
 * worker threads by a stable hash of the workspace id. This class runs on the
 * caller's thread; it routes each call to the shard that owns the key and
 * keeps only what the caller needs (handles, config builders).
 */
import { EventEmitter } from 'node:events';
import os from 'node:os';
import { MessageChannel, Worker } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../../shared/archive-protocol.js';
import type { SpawnConfig } from '../../shared/codex-config.js';
import { GatewayError, toGatewayError } from '../../shared/errors.js';
import { createThreadLogger, defaultLogLevel } from '../../shared/logger.js';
import type { ChildInfo, HostMethods, HostNotices, PrestartTicket, ReapOptions, ShardInit, ShardMethods, ShardNotices, ShardStats, SpawnPriority, StopResult, TurnOutcome, TurnRequest, WorkspaceStatus } from '../../shared/protocol.js';
import { RpcPeer } from '../../shared/rpc.js';
import { shardOf, validateWorkspaceId } from '../../shared/workspace-id.js';
import { ArchivePool } from './archive-pool.js';
import type { ClusterOwnership } from '../cluster/ownership.js';
import { ChildHandle } from './child-handle.js';
import { stopOrphanedGroups } from './orphans.js';
import type { HandoverRecord } from '../../shared/handover.js';
import { SpawnGate } from './spawn-gate.js';
import { describeStore, resolveInit } from './options.js';
import { checkSandbox, secureHomesRoot } from '../isolation.js';
import type { ConfigBuilder, SupervisorOptions, WorkspaceKey } from './options.js';

export { DEFAULT_DATA_PLANE, describeStore } from './options.js';
export type { ConfigBuilder, SupervisorObserver, SupervisorOptions, WorkspaceKey } from './options.js';

interface ShardRef {
  index: number;
  init: ShardInit;
  worker: Worker;
  rpc: RpcPeer<HostMethods, ShardMethods, HostNotices, ShardNotices>;
  data: MessagePort;
  /** The worker died and was not (or not yet) replaced. */
  failed: boolean;
  /** Bumped at each restart; answers for an older worker are dropped. */
  epoch: number;
  /** Times of recent restarts, to give up on a shard that keeps dying. */
  restarts: number[];
  /** Archive tasks running for this shard. */
  archives: Set<Promise<unknown>>;
  /** Starts of this worker holding a spawn permit (entered, not yet settled). */
  gated: Set<string>;
}

/**
 * Calls that only read or flag a shard's state answer at once from a healthy
 * shard; one that does not answer within this is stuck, and the caller (a
 * metrics scrape, a loopback lookup, an upgrade waiting for a slot) gets
 * GW_SHARD_FAILED instead of waiting forever. Calls that do work (ensure,
 * shutdown, reapIdle, close) carry their own time limits.
 */
const QUERY_DEADLINE = { timeoutMs: 10_000 } as const;

/** A shard that dies this many times within RESTART_WINDOW_MS stays down (the gateway turns unhealthy). */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

/**
 * Events: 'shard-died' (index): a shard worker died; its client connections
 * are gone and its children are being stopped; 'shard-restarted' (index): a
 * new worker took its place and answers (the dead one's homes are uploaded
 * by its recovery); 'shard-down' (index): it kept dying and was given up.
 */
export class Supervisor extends EventEmitter {
  private readonly handles = new Map<string, ChildHandle>();
  /**
   * Exits of generations with no handle yet. A child can die during the
   * last step of its start, and then its exit notice arrives before the
   * ensure answer that creates its handle.
   */
  private readonly recentExits = new Map<string, { code: number | null; signal: string | null }>();
  private readonly builders = new Map<number, ConfigBuilder>();
  private readonly pids = new Map<string, { pid: number; shard: number }>();
  private nextBuilderId = 1;
  /** Event sinks of streamed HTTP turns in flight, by turnRequestId. */
  private readonly turnSinks = new Map<number, (method: string, params: unknown) => void>();
  private nextTurnRequestId = 1;
  private closing: Promise<StopResult[]> | undefined;
  private readonly shardRefs: ShardRef[] = [];
  /** Pre-starts not yet at the gate, by workspace: told when their start asks for its permit. */
  private readonly prestartsArriving = new Map<string, () => void>();
  private readonly gate: SpawnGate;

  private constructor(
    private readonly opts: SupervisorOptions,
    readonly log: Logger,
    private readonly pool: ArchivePool,
    readonly shutdownConcurrency: number,
  ) {
    super();
    this.gate = new SpawnGate(opts.limits ?? {}, { evictOne: () => this.evictOne() });
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
      sup.startShard({
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
      await Promise.all(sup.shardRefs.map((s) => s.rpc.call('stats', {})));
    } catch (err) {
      await sup.destroy();
      throw toGatewayError(err, 'GW_SHARD_FAILED', 'a shard worker failed to start');
    }
    log.info({ shards, homeRoot: init.homeRoot, store: describeStore(init.store), codexBin: init.codexBin, spawnUser: init.runAs?.uid ?? null, sandbox: init.sandbox ?? 'none' }, 'supervisor started');
    return sup;
  }

  private startShard(init: ShardInit): void {
    const ref = { index: init.shard, init, failed: false, epoch: 0, restarts: [], archives: new Set(), gated: new Set() } as unknown as ShardRef;
    this.launch(ref);
    this.shardRefs.push(ref);
  }

  /** Starts (or restarts) the worker of a shard with fresh ports. */
  private launch(ref: ShardRef): void {
    const init = ref.init;
    const epoch = ref.epoch;
    const control = new MessageChannel();
    const data = new MessageChannel();
    const worker = new Worker(new URL('../../workers/shard.js', import.meta.url), {
      workerData: { init, control: control.port2, data: data.port2 },
      transferList: [control.port2, data.port2],
      name: `shard-${init.shard}`,
    });
    const current = (): boolean => ref.epoch === epoch;
    ref.worker = worker;
    ref.data = data.port1;
    ref.failed = false;
    ref.rpc = new RpcPeer(
      control.port1,
      {
        buildConfig: (p) => this.buildConfig(p.builderId, p.workspaceId, p.loopbackToken),
        archive: (task) => {
          const run = this.runArchive(task);
          ref.archives.add(run);
          const done = (): boolean => ref.archives.delete(run);
          run.then(done, done);
          return run;
        },
        enterSpawn: async (p) => {
          // The queue entry exists once enter() returns its promise: a promotion sent after this call finds it.
          const entering = this.gate.enter(p.generation, { priority: p.priority, rank: p.rank });
          this.prestartsArriving.get(p.workspaceId)?.();
          const admission = await entering;
          // A slot granted to a worker that has died since would never be given back.
          if (current()) ref.gated.add(p.generation);
          else this.gate.settled(p.generation, false);
          this.opts.observer?.spawnAdmitted?.({ workspaceId: p.workspaceId, priority: admission.priority, queuedMs: admission.queuedMs });
          return admission;
        },
        clusterClaim: (p) => this.cluster().claim(p.workspaceId),
        clusterCurrent: (p) => this.cluster().current(p.workspaceId),
        clusterCommit: (p) => this.cluster().commit(p.workspaceId, p.runEpoch, p.ref, p.homePath),
        clusterRelease: async (p) => {
          await this.cluster().release(p.workspaceId);
          return null;
        },
      },
      {
        childStarted: (p) => {
          this.pids.set(p.generation, { pid: p.pid, shard: init.shard });
          if (p.adopted === true) this.gate.adopt(p.generation);
        },
        spawnSettled: (p) => {
          ref.gated.delete(p.generation);
          this.gate.settled(p.generation, p.ok);
        },
        promoteSpawn: (p) => {
          this.gate.promote(p.generation);
        },
        workspaceStopped: (p) => {
          this.opts.onWorkspaceStopped?.(p);
          this.opts.observer?.workspaceStopped?.(p);
        },
        startFinished: (p) => this.opts.observer?.startFinished?.(p),
        childExited: (p) => this.childGone(p.generation, { code: p.code, signal: p.signal }),
        turnEvent: (p) => this.turnSinks.get(p.turnRequestId)?.(p.method, p.params),
        approvalAnswered: (p) => this.opts.observer?.approvalAnswered?.(p),
      },
      (what) => this.log.error({ shard: init.shard, what }, 'unknown control message from shard'),
    );
    worker.on('error', (err) => {
      this.log.fatal({ shard: init.shard, err }, 'shard worker crashed');
      if (current()) this.shardDied(ref, `crashed: ${err.message}`);
    });
    worker.on('exit', (code) => {
      if (current()) this.shardDied(ref, `exited with code ${code}`);
    });
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
    this.pids.delete(generation);
    this.gate.release(generation);
    const h = this.handles.get(generation);
    if (h !== undefined) {
      this.handles.delete(generation);
      h.markExited(exit);
    } else {
      this.recentExits.set(generation, exit);
      // Only the latest few matter (a start's own answer follows its exit at once).
      if (this.recentExits.size > 256) this.recentExits.delete(this.recentExits.keys().next().value as string);
    }
  }

  /**
   * A shard worker is gone (a bug; shards catch what they expect). Calls in
   * flight fail with GW_SHARD_FAILED, 'shard-died' tells the front to close
   * its clients now, and its children are stopped (orphans.ts): nothing can
   * proxy to them any more. Their homes stay on disk; a new worker takes the
   * shard over and its start-up recovery uploads them, so nothing is lost. A
   * shard that keeps dying is given up and the supervisor reports itself
   * unhealthy; its homes wait for the next start.
   */
  private shardDied(ref: ShardRef, why: string): void {
    if (ref.failed) return;
    ref.failed = true;
    ref.epoch += 1;
    ref.rpc.failAll('GW_SHARD_FAILED', `shard ${ref.index} ${why}`);
    ref.data.close();
    const orphans: number[] = [];
    for (const [generation, c] of this.pids) {
      if (c.shard !== ref.index) continue;
      orphans.push(c.pid);
      this.childGone(generation, { code: null, signal: null });
    }
    if (orphans.length > 0) {
      this.log.warn({ shard: ref.index, pids: orphans }, 'stopping the children of a dead shard worker');
      void stopOrphanedGroups(orphans, ref.init.stopGraceMs);
    }
    this.emit('shard-died', ref.index);
    // Starts it had in progress will never settle: their permits and slots go back.
    for (const generation of ref.gated) this.gate.settled(generation, false);
    ref.gated.clear();
    if (this.closing !== undefined) return;
    const now = Date.now();
    ref.restarts = ref.restarts.filter((t) => now - t < RESTART_WINDOW_MS);
    if (ref.restarts.length >= MAX_RESTARTS) {
      this.log.fatal({ shard: ref.index, restarts: ref.restarts.length }, 'shard keeps dying; giving up on it');
      this.emit('shard-down', ref.index);
      return;
    }
    ref.restarts.push(now);
    this.log.error({ shard: ref.index, why }, 'shard worker died; starting a new one (it recovers the old one\'s children)');
    // Uploads the dead worker started still run in the pool. The new worker
    // must not store newer state before they end, or they would overwrite it.
    void Promise.allSettled([...ref.archives]).then(() => {
      if (this.closing !== undefined) return;
      this.launch(ref);
      // Clients are let in again once the new worker answers; if it dies
      // first, shardDied has moved the epoch on and this answer is dropped.
      const epoch = ref.epoch;
      ref.rpc.call('stats', {}).then(
        () => {
          if (ref.epoch === epoch && !ref.failed && this.closing === undefined) this.emit('shard-restarted', ref.index);
        },
        () => {},
      );
    });
  }

  /** codex app-server processes alive now (started and not yet exited). */
  get childProcessCount(): number {
    return this.pids.size;
  }

  get shardCount(): number {
    return this.shardRefs.length;
  }

  /** True while every shard worker runs. */
  get healthy(): boolean {
    return this.shardRefs.every((s) => !s.failed) && this.closing === undefined;
  }

  /** @internal The front thread's end of shard i's frame port. */
  dataPort(i: number): MessagePort {
    const ref = this.shardRefs[i];
    if (ref === undefined) throw new GatewayError('GW_INTERNAL', `no shard ${i}`);
    return ref.data;
  }

  shardFor(workspaceId: string): number {
    return shardOf(workspaceId, this.shardRefs.length);
  }

  private shard(workspaceId: string): ShardRef {
    if (this.closing !== undefined) throw new GatewayError('GW_CLOSED', 'supervisor is closed');
    return this.shardRefs[this.shardFor(workspaceId)] as ShardRef;
  }

  /**
   * A live child for the workspace, spawning one if needed. Concurrent calls
   * for one key share one start: one builder call, one download, one process.
   */
  async ensureSubprocess(key: WorkspaceKey, build: ConfigBuilder): Promise<ChildHandle> {
    const workspaceId = validateWorkspaceId(key?.workspaceId);
    if (typeof build !== 'function') throw new GatewayError('GW_BAD_OPTIONS', 'ensureSubprocess needs a ConfigBuilder function');
    const ref = this.shard(workspaceId);
    const builderId = this.nextBuilderId++;
    this.builders.set(builderId, build);
    try {
      const info = await ref.rpc.call('ensure', { workspaceId, builderId });
      let h = this.handles.get(info.generation);
      if (h === undefined) {
        h = new ChildHandle(info);
        const exit = this.recentExits.get(info.generation);
        if (exit === undefined) this.handles.set(info.generation, h);
        else h.markExited(exit);
      }
      return h;
    } finally {
      this.builders.delete(builderId);
    }
  }

  private async runArchive(task: ArchiveTask): Promise<ArchiveOutcome<ArchiveValue>> {
    const t0 = performance.now();
    const out = await this.pool.run(task);
    const observer = this.opts.observer;
    if (observer?.archiveFinished !== undefined && (task.op === 'pack' || task.op === 'unpack')) {
      const op = task.op === 'pack' ? 'upload' : 'download';
      const ms = performance.now() - t0;
      if (out.ok) observer.archiveFinished({ op, ok: true, bytes: 'bytes' in out.value ? out.value.bytes : 0, ms, code: null, found: 'found' in out.value ? out.value.found : true });
      else observer.archiveFinished({ op, ok: false, bytes: 0, ms, code: out.error.code, found: false });
    }
    return out;
  }

  private async buildConfig(builderId: number, workspaceId: string, loopbackToken: string): Promise<SpawnConfig> {
    const build = builderId === 0 ? this.opts.configBuilder : this.builders.get(builderId);
    if (build === undefined) throw new GatewayError('GW_BUILDER_FAILED', 'no config builder is configured');
    return await build(loopbackToken, { workspaceId });
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
    const turnRequestId = this.nextTurnRequestId++;
    if (onEvent !== undefined) this.turnSinks.set(turnRequestId, onEvent);
    const outcome = ref.rpc.call('runTurn', { ...turn, workspaceId, turnRequestId, stream: onEvent !== undefined }).finally(() => this.turnSinks.delete(turnRequestId));
    return {
      outcome,
      clientGone: (interrupt) => {
        this.turnSinks.delete(turnRequestId);
        ref.rpc.notify('turnClientGone', { turnRequestId, interrupt });
      },
    };
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
    let arrived!: () => void;
    const atGate = new Promise<void>((resolve) => (arrived = resolve));
    const done = (): void => {
      if (this.prestartsArriving.get(workspaceId) === done) this.prestartsArriving.delete(workspaceId);
      arrived();
    };
    this.prestartsArriving.set(workspaceId, done);
    const started = ref.rpc.call('prestart', { workspaceId, ...ticket });
    started.then(done, done);
    return { atGate, started };
  }

  /** Starts waiting at the spawn gate now, by priority. */
  get spawnQueue(): Record<SpawnPriority, number> {
    return this.gate.queued;
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
    const per = await Promise.all(this.liveShards().map((s) => s.rpc.call('shutdownAll', { reason: 'shutdown', concurrency: Math.max(1, Math.ceil(this.shutdownConcurrency / this.shardRefs.length)) })));
    return per.flat();
  }

  /** The workspace whose live child holds this loopback token. Asks every shard at once. */
  async lookupWorkspaceForLoopbackToken(token: string): Promise<string | undefined> {
    if (typeof token !== 'string' || token.length === 0 || token.length > 256) return undefined;
    const answers = await Promise.all(this.liveShards().map((s) => s.rpc.call('lookup', { token }, QUERY_DEADLINE)));
    return answers.find((a) => a !== null) ?? undefined;
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
    return this.shardRefs.filter((s) => !s.failed);
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

  /**
   * Lets go of every running child for a successor (restart.handover): each
   * shard closes its clients with 1012, returns its children's records and
   * waits for stops and uploads under way; then the shards end (their
   * released children keep running: they have no parent-death signal) and
   * the records are returned. Not to be mixed with close().
   */
  handover(): Promise<HandoverRecord[]> {
    let records: HandoverRecord[] = [];
    this.closing ??= (async () => {
      const per = await Promise.all(
        this.liveShards().map((s) =>
          s.rpc.call('handover', {}).catch((err: unknown) => {
            this.log.error({ shard: s.index, err: toGatewayError(err).describe() }, 'shard did not hand over; its children are left to the successor\'s recovery');
            return [] as HandoverRecord[];
          }),
        ),
      );
      records = per.flat();
      // Released children are not ours to kill on exit any more.
      for (const r of records) this.pids.delete(r.generation);
      await this.destroy();
      return [];
    })();
    return this.closing.then(() => records);
  }

  /** Immediate: ends workers and the pool without stopping children cleanly. */
  async destroy(): Promise<void> {
    for (const s of this.shardRefs) {
      s.failed = true;
      s.rpc.close();
      s.data.close();
    }
    await Promise.all(this.shardRefs.map((s) => s.worker.terminate()));
    // The shards are done: any upload still running outlived its drain budget.
    // Uploads are atomic and its home stays on disk for the next start, so it
    // is abandoned rather than waited for.
    await this.pool.close({ graceMs: 1000 });
    await this.opts.cluster?.close().catch((err: unknown) => this.log.warn({ err: toGatewayError(err).describe() }, 'cluster: close failed'));
    this.killAllOnExit();
    process.removeListener('exit', this.killAllOnExit);
  }

  /** Last resort when the process exits without close(): no child outlives the gateway. */
  private readonly killAllOnExit = (): void => {
    for (const { pid } of this.pids.values()) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    this.pids.clear();
  };
}

