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
 * Its parts: a start (child-start.ts), a child's end (child-end.ts), idle
 * reaping and eviction (reaping.ts), start-up recovery (recovery-scan.ts),
 * handover (handover-table.ts); homes come and go through home-store.ts.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { mapLimit, withTimeout } from '../shared/concurrency.js';
import { CrashLoopGuard } from '../shared/crash-loop.js';
import { GatewayError, toGatewayError } from '../shared/errors.js';
import type { HandoverRecord } from '../shared/handover.js';
import type { ChildInfo, PrestartTicket, ReapOptions, ShardInit, StopReason, StopResult, WorkspaceStatus } from '../shared/protocol.js';
import { validateWorkspaceId } from '../shared/workspace-id.js';
import { claimStart, startChild } from './child-start.js';
import { release } from './handover-table.js';
import { HomeStore } from './home-store.js';
import { newGeneration } from './home.js';
import { processEnded } from '../shared/proc.js';
import { LoopbackTokens } from './loopback-tokens.js';
import { recoverAtStart } from './recovery-scan.js';
import { evict, evictCandidate, reapIdle, trimCache } from './reaping.js';
import type { ExitInfo } from './spawn.js';
import { childExited, stopChild } from './child-end.js';
import { describeEntry } from './workspace-entry.js';
import type { Entry, TableCore, TableEvents } from './workspace-entry.js';
import type { TableHost } from './table-host.js';

export type { GoneReason, TableEvents } from './workspace-entry.js';
export type { TableHost } from './table-host.js';

export class WorkspaceTable implements TableCore {
  // TableCore: open to the files that implement parts of the table (workspace-entry.ts), not to other callers.
  readonly live = new Map<string, Entry>();
  readonly busy = new Map<string, Promise<unknown>>();
  readonly tokens: LoopbackTokens;
  readonly homes: HomeStore;
  readonly crashLoop: CrashLoopGuard;
  closed = false;
  /** Pending while recover() scans homes.root; starts wait for it (see recover). */
  private scanning: Promise<void> | undefined;
  /** True from recover() until every leftover it found is handled. */
  recovering = false;

  constructor(
    readonly init: ShardInit,
    readonly host: TableHost,
    readonly events: TableEvents,
    readonly log: Logger,
  ) {
    this.homes = new HomeStore(init, host, log, { cached: () => trimCache(this) });
    this.tokens = new LoopbackTokens(host);
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
          if (prestart === undefined) claimStart(this, e);
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
    e.ready = startChild(this, e, builderId).then(
      (info) => {
        e.info = info;
        e.state = 'running';
        e.readyAt = Date.now();
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

  // ---- exit, stop, persist --------------------------------------------------

  /** The child of `e` exited: a crash unless a stop is under way (child-end.ts). */
  onExit(e: Entry, exit: ExitInfo): void {
    childExited(this, e, exit);
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
    return reapIdle(this, o, (id) => this.shutdown(id, 'idle'));
  }

  private stop(e: Entry, reason: StopReason): Promise<StopResult> {
    return stopChild(this, e, reason);
  }

  setBusy(workspaceId: string, p: Promise<unknown>): void {
    this.busy.set(workspaceId, p);
    const clear = (): void => {
      if (this.busy.get(workspaceId) === p) this.busy.delete(workspaceId);
    };
    p.then(clear, clear);
  }

  // ---- recovery and eviction ---------------------------------------------------

  /**
   * Adopts handed-over children, then takes over the homes a previous
   * gateway left for this shard's workspaces (recovery-scan.ts). Starts of
   * those workspaces wait until their home is handled.
   */
  recover(adopt: readonly HandoverRecord[] = []): void {
    this.recovering = true;
    const { scanned, done } = recoverAtStart(this, adopt, () => trimCache(this));
    // Until the scan has marked every leftover's workspace busy, a start could
    // download state older than its leftover home, and the scan could take
    // the home of that start for a leftover. So starts wait for the scan (not
    // for the recoveries it began, which `busy` covers for their workspaces).
    this.scanning = scanned;
    void scanned.then(() => {
      if (this.scanning === scanned) this.scanning = undefined;
    });
    void done.then(() => (this.recovering = false));
  }

  /** The least recently active running child without clients, for the capacity limit. */
  evictCandidate(): { workspaceId: string; lastActivity: number } | null {
    return evictCandidate(this);
  }

  /** Starts stopping that child if nothing touched it since; true when it began. */
  evict(workspaceId: string, lastActivity: number): boolean {
    return evict(this, workspaceId, lastActivity, (id) => void this.shutdown(id, 'evict'));
  }

  // ---- handover -----------------------------------------------------------------

  /** Lets go of every running child for a successor (handover-table.ts). */
  release(): Promise<HandoverRecord[]> {
    return release(this);
  }

  // ---- activity, status ----------------------------------------------

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

  /** The exit of the workspace's running child `generation`, resolved once the table has handled it; undefined if that child is not current. */
  childExit(workspaceId: string, generation: string): Promise<unknown> | undefined {
    const e = this.live.get(workspaceId);
    return e !== undefined && e.generation === generation && e.state === 'running' ? e.child?.exited : undefined;
  }

  detachClient(workspaceId: string, generation: string): void {
    const e = this.live.get(workspaceId);
    if (e !== undefined && e.generation === generation && e.clients > 0) {
      e.clients -= 1;
      e.lastActivity = Date.now();
    }
  }

  status(workspaceId: string): WorkspaceStatus | null {
    const e = this.live.get(workspaceId);
    return e === undefined ? null : describeEntry(this.init, e);
  }

  statuses(): WorkspaceStatus[] {
    return [...this.live.values()].map((e) => describeEntry(this.init, e));
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
