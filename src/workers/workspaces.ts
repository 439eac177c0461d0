/**
 * A shard's slice of the process map: workspaceId → codex child. Everything
 * about one workspace happens here, on this shard's event loop, in order; no
 * locks are needed because per-key state lives in one place.
 *
 * Invariants kept here (ARCHITECTURE.md):
 * 1. One spawn per key: concurrent ensures share the entry's `ready` promise.
 * 2. A start waits for any earlier stop or upload of its key (`busy`), and
 *    takes a spooled home before it would download older state (HomeStore).
 * 3. A workspace's CODEX_HOME is one stable path (home.ts); one process at a
 *    time uses it, since starts, stops, uploads and cache evictions of a key
 *    are serialized here. Each start is a new generation of its contents.
 * 4. Homes are deleted only through deleteHome, after their upload (HomeStore).
 * 6. Stopping a child stops its process group (spawn.ts).
 *
 * Where homes come from and go to (spool, store, recovery) is home-store.ts.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../shared/archive-protocol.js';
import { buildChildEnv, parseEnvEntries } from '../shared/child-env.js';
import { renderCodexConfig } from '../shared/codex-config.js';
import type { SpawnConfig } from '../shared/codex-config.js';
import { mapLimit, withTimeout } from '../shared/concurrency.js';
import { CrashLoopGuard } from '../shared/crash-loop.js';
import { GatewayError, toGatewayError } from '../shared/errors.js';
import { stripAnsi } from '../shared/logger.js';
import type { ChildInfo, PrestartTicket, ReapOptions, ShardInit, SpawnPriority, StopReason, StopResult, WorkspaceState, WorkspaceStatus } from '../shared/protocol.js';
import { shouldReap } from '../shared/reap-policy.js';
import { shardOf, validateWorkspaceId } from '../shared/workspace-id.js';
import type { ClusterHost } from './cluster-homes.js';
import { HomeStore } from './home-store.js';
import { Home, ensureWorkDir, homePath, newGeneration, processEnded, processStartTicks, writeHomeState, writePrivateFile } from './home.js';
import { findLeftovers } from './recovery.js';
import { describeExit, reapGroup, spawnAppServer, stopProcessGroup } from './spawn.js';
import { closeWorkspaceDir, openHomeTo } from './home-owner.js';
import type { ExitInfo, RunningChild } from './spawn.js';
import type { HandoverRecord } from '../shared/handover.js';
import { adoptedChild, adoptionRefusal } from './adoption.js';
import type { AdoptedChild } from './adoption.js';

export interface TableHost {
  buildConfig(builderId: number, workspaceId: string, loopbackToken: string): Promise<SpawnConfig>;
  archive(task: ArchiveTask): Promise<ArchiveOutcome<ArchiveValue>>;
  childStarted(workspaceId: string, generation: string, pid: number): void;
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

/** Start failures that mean the process itself is broken (they feed crash-loop protection). */
const PROCESS_FAILURES: ReadonlySet<string> = new Set(['GW_SPAWN_EXITED', 'GW_SPAWN_TIMEOUT', 'GW_SPAWN_NOT_READY']);

/** Why a child's clients lose it: a stop reason, or the child ended by itself. */
export type GoneReason = StopReason | 'crash';

export interface TableEvents {
  /** The child of `generation` is going away; its client connections must close. */
  childGone(workspaceId: string, generation: string, reason: GoneReason): void;
}

interface Entry {
  workspaceId: string;
  generation: string;
  state: WorkspaceState;
  ready: Promise<ChildInfo>;
  info: ChildInfo | undefined;
  home: Home | undefined;
  child: RunningChild | undefined;
  pid: number | undefined;
  loopbackToken: string;
  loopbackKey: string;
  wsToken: string;
  lastActivity: number;
  startedAt: number;
  readyAt: number;
  clients: number;
  exitHandled: boolean;
  /** `prestart` until a client asks for it (then `client`: it is promoted at the gate). */
  priority: SpawnPriority;
  rank: number;
  /** A pre-start no client has claimed yet: the activity its drain record gave it. */
  prestarted: { lastActivity: number } | undefined;
}

function tokenKey(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export class WorkspaceTable {
  private readonly live = new Map<string, Entry>();
  private readonly busy = new Map<string, Promise<unknown>>();
  private readonly tokens = new Map<string, { token: Buffer; workspaceId: string }>();
  readonly homes: HomeStore;
  private readonly crashLoop: CrashLoopGuard;
  private closed = false;
  /** Pending while recover() scans homes.root; starts wait for it (see recover). */
  private scanning: Promise<void> | undefined;
  /** True from recover() until every leftover it found is handled. */
  recovering = false;

  constructor(
    private readonly init: ShardInit,
    private readonly host: TableHost,
    private readonly events: TableEvents,
    private readonly log: Logger,
  ) {
    this.homes = new HomeStore(init, host, log, { cached: () => this.trimCache() });
    this.crashLoop = new CrashLoopGuard(init.crashLoop);
  }

  // ---- ensure --------------------------------------------------------------

  /**
   * A live child for the workspace, starting one if needed. Without
   * `prestart` a client waits for it; with it, it is a warm restart's
   * speculative start: it yields to client starts at the gate, leaves an
   * existing child's activity alone, and is promoted when a client asks for
   * the workspace while it is still queued.
   */
  async ensure(workspaceId: string, builderId: number, prestart?: PrestartTicket): Promise<ChildInfo> {
    validateWorkspaceId(workspaceId);
    if (this.scanning !== undefined) await this.scanning;
    for (;;) {
      if (this.closed) throw new GatewayError('GW_CLOSED', 'supervisor is shutting down');
      const e = this.live.get(workspaceId);
      if (e !== undefined) {
        if (e.state === 'starting') {
          if (prestart === undefined) this.claim(e);
          return await e.ready;
        }
        if (e.state === 'running' && e.child !== undefined && e.child.exitInfo() === undefined && e.info !== undefined) {
          // A dying child's sockets close before its exit is reported (it is a
          // zombie until reaped), so a client that reconnects at once would be
          // handed a dead child: wait for that exit instead, and look again.
          const child = e.child;
          if (await processEnded(child.pid)) {
            // Bounded, so an ensure can never hang here; the loop looks again.
            await withTimeout(child.exited, 2000, () => new Error('exit not reported')).catch(() => {});
            continue;
          }
          if (this.live.get(workspaceId) !== e || e.state !== 'running') continue;
          if (prestart === undefined) {
            e.lastActivity = Date.now();
            e.prestarted = undefined;
          }
          return e.info;
        }
        // Its process died and the exit is not processed yet: evict now.
        if (e.state === 'running' && e.child !== undefined) this.onExit(e, e.child.exitInfo() as ExitInfo);
        continue;
      }
      const pending = this.busy.get(workspaceId);
      if (pending !== undefined) {
        await pending.catch(() => {});
        continue;
      }
      this.crashLoop.check(workspaceId);
      return await this.begin(workspaceId, builderId, prestart).ready;
    }
  }

  /** A client waits for this start from now on: a queued pre-start moves ahead of the others. */
  private claim(e: Entry): void {
    e.prestarted = undefined;
    if (e.priority === 'client') return;
    e.priority = 'client';
    // Sent after the entry's enterSpawn (if any) on the same port, so the gate has it queued or admitted;
    // a start that has not asked yet asks with the new priority.
    if (this.init.gatedSpawns) this.host.promoteSpawn(e.generation);
  }

  private begin(workspaceId: string, builderId: number, prestart: PrestartTicket | undefined): Entry {
    const loopbackToken = randomBytes(32).toString('hex');
    const now = Date.now();
    const e: Entry = {
      workspaceId,
      generation: newGeneration(now),
      state: 'starting',
      ready: undefined as unknown as Promise<ChildInfo>,
      info: undefined,
      home: undefined,
      child: undefined,
      pid: undefined,
      loopbackToken,
      loopbackKey: tokenKey(loopbackToken),
      wsToken: randomBytes(32).toString('base64url'),
      lastActivity: now,
      startedAt: now,
      readyAt: 0,
      clients: 0,
      exitHandled: false,
      priority: prestart === undefined ? 'client' : 'prestart',
      rank: prestart?.rank ?? 0,
      prestarted: prestart === undefined ? undefined : { lastActivity: prestart.lastActivity },
    };
    this.live.set(workspaceId, e);
    e.ready = this.start(e, builderId).then(
      (info) => {
        e.info = info;
        e.state = 'running';
        e.readyAt = Date.now();
        this.tokens.set(e.loopbackKey, { token: Buffer.from(e.loopbackToken), workspaceId });
        // A crash during the last await of start is handled once we are running.
        const exit = e.child?.exitInfo();
        if (exit !== undefined) this.onExit(e, exit);
        try {
          this.host.startFinished(workspaceId, e.readyAt - now, null);
        } catch (err) {
          // Reporting must never leave a running child without its entry.
          this.log.error({ workspaceId, err: toGatewayError(err).describe() }, 'could not report a finished start');
        }
        return info;
      },
      (err: unknown) => {
        if (this.live.get(workspaceId) === e) this.live.delete(workspaceId);
        this.host.startFinished(workspaceId, Date.now() - now, toGatewayError(err).code);
        throw err;
      },
    );
    // Callers observe `ready`; a rejection nobody awaits is not a crash.
    e.ready.catch(() => {});
    return e;
  }

  private async start(e: Entry, builderId: number): Promise<ChildInfo> {
    const t0 = Date.now();
    const log = this.log.child({ workspaceId: e.workspaceId, generation: e.generation });
    const spawnConfig = await this.build(e, builderId);
    const toml = renderCodexConfig(spawnConfig.config, e.loopbackToken);
    parseEnvEntries(spawnConfig.env, 'config builder env');

    const home = await this.homes.prepare(e.workspaceId);
    e.home = home;
    // What the home holds before this run, for a start that fails before any process ran in it.
    const before = { generation: home.generation, stored: home.origin !== 'spool' };
    let gated = false;
    let queuedMs = 0;
    try {
      await writePrivateFile(path.join(home.dir, 'config.toml'), toml);
      await ensureWorkDir(home);
      if (this.init.gatedSpawns) {
        const admitted = await this.host.enterSpawn(e.workspaceId, e.generation, e.priority, e.rank);
        queuedMs = Math.round(admitted.queuedMs);
        gated = true;
      }
      // The new generation is recorded before the process exists: recovery then knows this home may hold unsaved work.
      await writeHomeState(home.dir, { generation: e.generation, stored: false, pid: null, startTicks: null, gatewayPid: process.pid });
      home.generation = e.generation;
      const runAs = this.init.runAs;
      if (runAs !== undefined) await openHomeTo(runAs, home.dir);
      const env = buildChildEnv({
        parent: process.env,
        allowlist: this.init.envAllowlist,
        extraEnv: this.init.extraEnv,
        builderEnv: spawnConfig.env,
        codexHome: home.dir,
        loopbackToken: e.loopbackToken,
        ...(runAs?.name === undefined ? {} : { userName: runAs.name }),
      });
      const wsDir = path.dirname(home.dir);
      let pidFile: Promise<void> = Promise.resolve();
      const child = await spawnAppServer({
        codexBin: this.init.codexBin,
        cwd: home.workDir,
        env,
        wsToken: e.wsToken,
        readyTimeoutMs: this.init.readyTimeoutMs,
        nice: this.init.childNice,
        ...(this.init.handover === true ? { outliveGateway: true } : {}),
        ...(runAs === undefined ? {} : { runAs }),
        ...(this.init.sandbox === 'bubblewrap' ? { sandbox: { workspaceDir: wsDir, cwd: home.workDir, codexBin: this.init.codexBin } } : {}),
        ...(runAs === undefined
          ? {}
          : {
              onExit: () => {
                const err = closeWorkspaceDir(wsDir);
                if (err !== undefined) log.error({ err: err.message }, 'could not take the workspace directory back from spawn.user');
              },
            }),
        onSpawned: (pid) => {
          home.ran = true;
          e.pid = pid;
          this.host.childStarted(e.workspaceId, e.generation, pid);
          pidFile = this.recordPid(home, pid);
        },
        onOutput: (stream, line) => log.info({ pid: e.pid, stream }, `[codex ${e.workspaceId}] ${stripAnsi(line)}`),
      });
      await pidFile;
      e.child = child;
      if (gated) this.host.spawnSettled(e.generation, true);
      void child.exited.then((exit) => this.onExit(e, exit));
      log.info({ pid: child.pid, wsUrl: child.wsUrl, origin: home.origin, priority: e.priority, queuedMs, ms: Date.now() - t0 }, 'codex app-server ready');
      return {
        workspaceId: e.workspaceId,
        generation: e.generation,
        pid: child.pid,
        wsUrl: child.wsUrl,
        wsToken: e.wsToken,
        httpUrl: child.httpUrl,
        codexHome: home.dir,
        startedAt: e.startedAt,
        shard: this.init.shard,
      };
    } catch (err) {
      // spawnAppServer kills and reaps the process before it throws.
      if (e.pid !== undefined) this.host.childExited(e.workspaceId, e.generation, { code: null, signal: null });
      // A start that failed before any process existed had no exit handler to take the directory back.
      if (this.init.runAs !== undefined) closeWorkspaceDir(path.dirname(home.dir));
      if (gated) this.host.spawnSettled(e.generation, false);
      const failure = toGatewayError(err);
      if (PROCESS_FAILURES.has(failure.code)) this.crashLoop.failed(e.workspaceId);
      log.warn({ err: failure.describe(), failures: this.crashLoop.failures(e.workspaceId) }, 'start failed');
      this.abandon(home, before, log);
      throw err;
    }
  }

  private async build(e: Entry, builderId: number): Promise<SpawnConfig> {
    let cfg: SpawnConfig;
    try {
      cfg = await withTimeout(
        this.host.buildConfig(builderId, e.workspaceId, e.loopbackToken),
        this.init.builderTimeoutMs,
        () => new GatewayError('GW_BUILDER_FAILED', `config builder did not answer within ${this.init.builderTimeoutMs} ms`),
      );
    } catch (err) {
      if (err instanceof GatewayError && err.code === 'GW_BUILDER_FAILED') throw err;
      throw new GatewayError('GW_BUILDER_FAILED', `config builder failed for workspace ${e.workspaceId}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    if (cfg === null || typeof cfg !== 'object') throw new GatewayError('GW_BAD_CONFIG', 'config builder returned no SpawnConfig');
    return cfg;
  }

  private async recordPid(home: Home, pid: number): Promise<void> {
    try {
      await writeHomeState(home.dir, { generation: home.generation, stored: false, pid, startTicks: await processStartTicks(pid), gatewayPid: process.pid });
    } catch (err) {
      this.log.warn({ workspaceId: home.workspaceId, err: toGatewayError(err).describe() }, 'could not record the child in its home');
    }
  }

  /** After a failed start: a home no process ran in goes back as it was; the rest is persisted. */
  private abandon(home: Home, before: { generation: string | null; stored: boolean }, log: Logger): void {
    const work = home.ran ? this.homes.persist(home, 'failed-start') : this.homes.release(home, before.generation, before.stored);
    this.setBusy(home.workspaceId, work.catch((err: unknown) => log.error({ err: toGatewayError(err).describe() }, 'could not put the home back after a failed start')));
  }

  // ---- exit, stop, persist --------------------------------------------------

  private onExit(e: Entry, exit: ExitInfo): void {
    if (e.exitHandled) return;
    if (e.state === 'starting') return; // start() reports it and cleans up
    e.exitHandled = true;
    this.tokens.delete(e.loopbackKey);
    this.host.childExited(e.workspaceId, e.generation, exit);
    if (e.state !== 'running') return; // a stop in progress owns the rest
    this.crashLoop.exited(e.workspaceId, Date.now() - e.readyAt);
    this.log.warn({ workspaceId: e.workspaceId, generation: e.generation, pid: e.pid, exit: describeExit(exit), failures: this.crashLoop.failures(e.workspaceId) }, 'codex app-server exited unexpectedly');
    e.state = 'stopping';
    if (this.live.get(e.workspaceId) === e) this.live.delete(e.workspaceId);
    this.events.childGone(e.workspaceId, e.generation, 'crash');
    const home = e.home as Home;
    this.setBusy(
      e.workspaceId,
      (async () => {
        await reapGroup(e.pid as number, 1000);
        return this.homes.persist(home, 'crash');
      })(),
    );
  }

  /**
   * Stops the workspace's child and stores its home. With `budgetMs`, answers
   * once that time is up even if the upload is still running: the home then
   * stays on disk (never deleted unstored) for the spool or the next start.
   */
  async shutdown(workspaceId: string, reason: StopReason, budgetMs?: number): Promise<StopResult> {
    validateWorkspaceId(workspaceId);
    const work = this.stopAndPersist(workspaceId, reason);
    if (budgetMs === undefined) return await work;
    // The budget covers every wait on the way: a start to finish, the stop,
    // our upload or one already under way (after a crash). The work goes on
    // unobserved; nothing deletes a home before its upload succeeded.
    const late: StopResult = { workspaceId, stopped: true, saved: false, error: `not stored within the ${budgetMs} ms budget; the home stays on disk` };
    const overBudget = new Error('budget');
    return await withTimeout(work, budgetMs, () => overBudget).catch((err: unknown) => {
      if (err === overBudget) return late;
      throw err;
    });
  }

  private async stopAndPersist(workspaceId: string, reason: StopReason): Promise<StopResult> {
    for (;;) {
      const e = this.live.get(workspaceId);
      if (e === undefined) {
        const pending = this.busy.get(workspaceId);
        if (pending !== undefined) await pending.catch(() => {});
        return { workspaceId, stopped: false, saved: false };
      }
      if (e.state === 'starting') {
        await e.ready.catch(() => {});
        continue;
      }
      const p = this.stop(e, reason);
      this.setBusy(workspaceId, p);
      return await p;
    }
  }

  async shutdownAll(reason: StopReason, concurrency: number, budgetMs?: number): Promise<StopResult[]> {
    const ids = [...new Set([...this.live.keys(), ...this.busy.keys()])];
    return mapLimit(ids, concurrency, (id) => this.shutdown(id, reason, budgetMs));
  }

  async reapIdle(o: ReapOptions): Promise<StopResult[]> {
    const now = Date.now();
    const idle = [...this.live.values()].filter((e) => e.state === 'running' && shouldReap(e, now, o));
    const results = await mapLimit(idle, 8, async (e) => {
      // Decided again when its turn comes: with more than eight to stop, a
      // client may have connected or spoken while the earlier ones stopped.
      const at = Date.now();
      if (this.live.get(e.workspaceId) !== e || e.state !== 'running' || !shouldReap(e, at, o)) return undefined;
      this.log.info({ workspaceId: e.workspaceId, idleMs: at - e.lastActivity, clients: e.clients }, 'reaping idle child');
      return this.shutdown(e.workspaceId, 'idle');
    });
    return results.filter((r): r is StopResult => r !== undefined);
  }

  private async stop(e: Entry, reason: StopReason): Promise<StopResult> {
    e.state = 'stopping';
    this.live.delete(e.workspaceId);
    this.tokens.delete(e.loopbackKey);
    this.events.childGone(e.workspaceId, e.generation, reason);
    const child = e.child as RunningChild;
    const exit = await stopProcessGroup(child, this.init.stopGraceMs);
    if (Date.now() - e.readyAt >= this.init.crashLoop.windowMs) this.crashLoop.healthy(e.workspaceId);
    this.log.info({ workspaceId: e.workspaceId, pid: child.pid, reason, exit: describeExit(exit) }, 'codex app-server stopped');
    return this.homes.persist(e.home as Home, reason);
  }

  private setBusy(workspaceId: string, p: Promise<unknown>): void {
    this.busy.set(workspaceId, p);
    const clear = (): void => {
      if (this.busy.get(workspaceId) === p) this.busy.delete(workspaceId);
    };
    p.then(clear, clear);
  }

  // ---- recovery and eviction ---------------------------------------------------

  /**
   * Takes over homes a previous gateway left under homes.root for this
   * shard's workspaces (recovery.ts): leftover processes are stopped, homes
   * that ran something go to the spool and are uploaded at once, the rest are
   * removed. Starts of those workspaces wait until their home is handled.
   */
  recover(adopt: readonly HandoverRecord[] = []): void {
    this.recovering = true;
    const scan = (async () => {
      // Adopted children run in their homes: recovery must not stop them.
      await this.adoptAll(adopt);
      const leftovers = await findLeftovers(this.init.homeRoot, (id) => shardOf(id, this.init.shards) === this.init.shard && !this.live.has(id));
      return leftovers.map((w) => {
        const p = this.homes.recoverWorkspace(w);
        this.setBusy(w.workspaceId, p);
        return p.catch((err: unknown) => this.log.error({ workspaceId: w.workspaceId, err: toGatewayError(err).describe() }, 'recovery of a workspace failed'));
      });
    })();
    // Until the scan has marked every leftover's workspace busy, a start could
    // download state older than its leftover home, and the scan could take
    // the home of that start for a leftover. So starts wait for the scan (not
    // for the recoveries it began, which `busy` covers for their workspaces).
    const scanning = scan.then(
      () => {},
      () => {},
    );
    this.scanning = scanning;
    void scanning.then(() => {
      if (this.scanning === scanning) this.scanning = undefined;
    });
    scan.then(
      async (done) => {
        await Promise.all(done);
        // Homes kept warm while their workspace was busy recovering are weighed against the budget now.
        this.trimCache();
        this.recovering = false;
        if (done.length > 0) this.log.info({ workspaces: done.length }, 'recovery: homes left by a previous gateway taken over');
      },
      (err: unknown) => {
        this.recovering = false;
        this.log.error({ err: toGatewayError(err).describe() }, 'recovery failed');
      },
    );
  }


  /**
   * Removes least recently used warm homes past the cache's budget, each
   * serialized with its workspace's starts (a workspace live, busy or
   * spooled keeps its home).
   */
  private trimCache(): void {
    const removable = (id: string): boolean => !this.live.has(id) && !this.busy.has(id) && !this.homes.spool.has(id);
    for (const id of this.homes.cache.overBudget(removable)) this.setBusy(id, this.homes.evict(id));
  }

  /** The least recently active running child without clients, for the capacity limit. */
  evictCandidate(): { workspaceId: string; lastActivity: number } | null {
    let best: Entry | undefined;
    for (const e of this.live.values()) {
      if (e.state === 'running' && e.clients === 0 && (best === undefined || e.lastActivity < best.lastActivity)) best = e;
    }
    return best === undefined ? null : { workspaceId: best.workspaceId, lastActivity: best.lastActivity };
  }

  /** Starts stopping that child if nothing touched it since; true when it began. */
  evict(workspaceId: string, lastActivity: number): boolean {
    const e = this.live.get(workspaceId);
    if (e === undefined || e.state !== 'running' || e.clients > 0 || e.lastActivity !== lastActivity) return false;
    this.log.info({ workspaceId, idleMs: Date.now() - lastActivity }, 'stopping the least recently active child to make room');
    void this.shutdown(workspaceId, 'evict');
    return true;
  }

  // ---- handover -----------------------------------------------------------------

  /**
   * Adopts the children a previous gateway handed over (adoption.ts), before
   * recovery looks at their homes. A child that is not the recorded one, or
   * does not answer, is not adopted: recovery then stops it like any child a
   * gateway left behind, and stores its home.
   */
  private async adoptAll(records: readonly HandoverRecord[]): Promise<void> {
    let adopted = 0;
    for (const rec of records) {
      if (shardOf(rec.workspaceId, this.init.shards) !== this.init.shard) continue;
      const dir = homePath(this.init.homeRoot, rec.workspaceId);
      const refusal = await adoptionRefusal(rec, dir);
      if (refusal !== undefined) {
        this.log.warn({ workspaceId: rec.workspaceId, pid: rec.pid, why: refusal }, 'handover: child not adopted; recovery stops it and stores its home');
        continue;
      }
      const home = new Home(rec.workspaceId, rec.generation, dir, 'cache');
      home.ran = true;
      const e: Entry = {
        workspaceId: rec.workspaceId,
        generation: rec.generation,
        state: 'running',
        ready: undefined as unknown as Promise<ChildInfo>,
        info: { workspaceId: rec.workspaceId, generation: rec.generation, pid: rec.pid, wsUrl: rec.wsUrl, wsToken: rec.wsToken, httpUrl: rec.httpUrl, codexHome: dir, startedAt: rec.startedAt, shard: this.init.shard },
        home,
        child: undefined,
        pid: rec.pid,
        loopbackToken: rec.loopbackToken,
        loopbackKey: tokenKey(rec.loopbackToken),
        wsToken: rec.wsToken,
        lastActivity: rec.lastActivity,
        startedAt: rec.startedAt,
        readyAt: Date.now(),
        clients: 0,
        exitHandled: false,
        priority: 'client',
        rank: 0,
        prestarted: rec.prestartedActivity === undefined ? undefined : { lastActivity: rec.prestartedActivity },
      };
      e.ready = Promise.resolve(e.info as ChildInfo);
      const wsDir = path.dirname(dir);
      const child = adoptedChild(rec, this.init.runAs === undefined ? undefined : () => void closeWorkspaceDir(wsDir));
      e.child = child;
      this.live.set(rec.workspaceId, e);
      this.tokens.set(e.loopbackKey, { token: Buffer.from(e.loopbackToken), workspaceId: rec.workspaceId });
      this.host.childStarted(rec.workspaceId, rec.generation, rec.pid);
      // The home's state names this gateway from now on (recovery reads pid and start time, not this).
      await this.recordPid(home, rec.pid);
      void child.exited.then((exit) => this.onExit(e, exit));
      this.log.info({ workspaceId: rec.workspaceId, generation: rec.generation, pid: rec.pid }, 'handover: child adopted');
      adopted++;
    }
    if (records.length > 0) this.log.info({ adopted, offered: records.filter((r) => shardOf(r.workspaceId, this.init.shards) === this.init.shard).length }, 'handover: children adopted');
  }

  /**
   * Lets go of every running child without stopping it, for a successor
   * that adopts them: their clients are closed (1012, reconnect), their
   * tokens forgotten, and their records returned. Starts under way finish
   * first and are handed over too; stops and uploads under way finish
   * within the drain budget (the successor's recovery finds what is left).
   * New ensures fail from here on, as in close().
   */
  async release(): Promise<HandoverRecord[]> {
    this.closed = true;
    await Promise.all([...this.live.values()].filter((e) => e.state === 'starting').map((e) => e.ready.catch(() => {})));
    const out: HandoverRecord[] = [];
    for (const e of [...this.live.values()]) {
      const child = e.child;
      if (e.state !== 'running' || child === undefined || child.exitInfo() !== undefined || e.pid === undefined) continue;
      const startTicks = await processStartTicks(e.pid);
      if (startTicks === null || this.live.get(e.workspaceId) !== e || e.state !== 'running') continue;
      out.push({
        workspaceId: e.workspaceId,
        generation: e.generation,
        pid: e.pid,
        startTicks,
        wsUrl: child.wsUrl,
        httpUrl: child.httpUrl,
        wsToken: e.wsToken,
        loopbackToken: e.loopbackToken,
        lastActivity: e.lastActivity,
        startedAt: e.startedAt,
        ...(e.prestarted === undefined ? {} : { prestartedActivity: e.prestarted.lastActivity }),
      });
      // Its exit is no longer ours to handle: the successor watches it.
      e.exitHandled = true;
      e.state = 'stopping';
      this.live.delete(e.workspaceId);
      this.tokens.delete(e.loopbackKey);
      (child as Partial<AdoptedChild>).release?.();
      this.events.childGone(e.workspaceId, e.generation, 'restart');
    }
    const left = this.init.drainBudgetMs;
    await Promise.all([...this.busy.values()].map((p) => withTimeout(p, left, () => new Error('budget')).catch(() => {})));
    this.homes.spool.close();
    return out;
  }

  // ---- activity, lookup, status ----------------------------------------------

  touch(workspaceId: string): void {
    const e = this.live.get(workspaceId);
    if (e === undefined) return;
    e.lastActivity = Date.now();
    e.prestarted = undefined;
  }

  /** Counts a data-plane client of the current child (for the reaper). */
  attachClient(workspaceId: string, generation: string): boolean {
    const e = this.live.get(workspaceId);
    if (e === undefined || e.generation !== generation || e.state !== 'running') return false;
    e.prestarted = undefined;
    e.clients += 1;
    e.lastActivity = Date.now();
    return true;
  }

  detachClient(workspaceId: string, generation: string): void {
    const e = this.live.get(workspaceId);
    if (e !== undefined && e.generation === generation && e.clients > 0) {
      e.clients -= 1;
      e.lastActivity = Date.now();
    }
  }

  lookup(token: string): string | null {
    if (typeof token !== 'string' || token.length === 0) return null;
    const hit = this.tokens.get(tokenKey(token));
    if (hit === undefined) return null;
    const given = Buffer.from(token);
    return given.length === hit.token.length && timingSafeEqual(given, hit.token) ? hit.workspaceId : null;
  }

  status(workspaceId: string): WorkspaceStatus | null {
    const e = this.live.get(workspaceId);
    return e === undefined ? null : this.describe(e);
  }

  statuses(): WorkspaceStatus[] {
    return [...this.live.values()].map((e) => this.describe(e));
  }

  private describe(e: Entry): WorkspaceStatus {
    return {
      workspaceId: e.workspaceId,
      state: e.state,
      generation: e.generation,
      pid: e.pid,
      shard: this.init.shard,
      clients: e.clients,
      lastActivity: e.lastActivity,
      startedAt: e.startedAt,
      codexHome: e.home?.dir ?? homePath(this.init.homeRoot, e.workspaceId),
      ...(e.prestarted === undefined ? {} : { prestarted: { ...e.prestarted } }),
    };
  }

  /** Workspaces whose stop or upload is under way without a live entry (a drain must count their homes). */
  busyWorkspaces(): string[] {
    return [...this.busy.keys()].filter((id) => !this.live.has(id));
  }

  get liveCount(): number {
    return this.live.size;
  }

  /**
   * Stops every child and uploads every home, each within the drain budget;
   * what is not stored by then stays on disk for the next start.
   */
  async close(concurrency: number): Promise<StopResult[]> {
    // New ensures fail from here on; starts already under way finish and are stopped.
    this.closed = true;
    const deadline = Date.now() + this.init.drainBudgetMs;
    const results = await this.shutdownAll('drain', concurrency, this.init.drainBudgetMs);
    // Work that began meanwhile (a failed start's cleanup) gets what is left of
    // the budget, not a budget of its own: each shutdown above had one already.
    const left = Math.max(0, deadline - Date.now());
    await Promise.all([...this.busy.values()].map((p) => withTimeout(p, left, () => new Error('budget')).catch(() => {})));
    this.homes.spool.close();
    return results;
  }
}
