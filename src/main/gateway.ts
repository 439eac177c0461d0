/**
 * A running gateway: supervisor, front door (WebSocket, /healthz, /readyz,
 * /metrics), the internal listener (/internal/*, /admin/*), the idle reaper,
 * and an orderly, bounded drain. `serve` (cli/serve.ts) builds one from
 * settings and adds signal handling; tests and embedders build one directly.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { CloseCode } from '../shared/close-codes.js';
import { TIMED_OUT, within } from '../shared/concurrency.js';
import { toGatewayError } from '../shared/errors.js';
import type { StopResult } from '../shared/protocol.js';
import type { DrainProgress, DrainReport, GatewayView } from './gateway-view.js';

export type { DrainProgress, DrainReport } from './gateway-view.js';
import { adminRoutes } from './http/admin-api.js';
import type { Authenticator } from './auth/front-door.js';
import type { ClusterForwarding } from './cluster/forwarding.js';
import { Front } from './front/front.js';
import type { FrontLimits, FrontMemory } from './front/front.js';

import { checkBearer } from './auth/bearer-check.js';
import { sendJson, sendText } from './http/http-util.js';
import { IdleReaper } from './supervisor/idle-reaper.js';
import type { IdleReaperOptions } from './supervisor/idle-reaper.js';
import { InternalApi } from './http/internal-api.js';
import { GatewayMetrics } from './metrics.js';
import { Supervisor } from './supervisor/supervisor.js';
import { DEFAULT_TURN_API } from './http/turn-request.js';
import type { TurnApiOptions } from './http/turn-request.js';
import type { SupervisorObserver, SupervisorOptions } from './supervisor/supervisor.js';
import type { TemplatedApp } from './http/uws.js';
import { WarmRestart, liveForRecord, takeWarmRecord, writeWarmRecord } from './supervisor/warm-restart.js';
import type { WarmRestartOptions } from './supervisor/warm-restart.js';
import type { HandoverRecord } from '../shared/handover.js';

const EMPTY_MEMORY: FrontMemory = { bufferedBytes: 0, maxBufferedBytes: null, toClientBufferedBytes: 0, slowChildCloses: 0, overloadCloses: 0 };

export interface GatewayOptions {
  supervisor: SupervisorOptions;
  auth: Authenticator;
  listen: { host: string; port: number };
  internal: { host: string; port: number; upstreamUrl?: string };
  limits: FrontLimits;
  reaper?: Omit<IdleReaperOptions, 'logger'>;
  /** POST /api/turns limits (deadlines, body size); served unless `false`. */
  turns?: Partial<TurnApiOptions> | false;
  /** Time the whole drain may take before the process gives up waiting. */
  shutdownBudgetMs: number;
  /** Bearer token of the admin API on the internal listener; unset: admin API off. */
  adminToken?: string;
  /** When set, GET /metrics needs `Authorization: Bearer <metricsToken>`. */
  metricsToken?: string;
  log: Logger;
  /** Extra routes on the public listener and on the internal one. */
  publicRoutes?: (app: TemplatedApp, gw: Gateway) => void;
  internalRoutes?: (app: TemplatedApp, gw: Gateway) => void;
  /** Tests only: the front's first connection id (see ConnectionIds). */
  firstConnectionId?: number;
  /** Record the live workspaces at a drain and pre-start them at the next start (warm-restart.ts); unset: off. */
  warmRestart?: WarmRestartOptions;
  /** With [cluster] and cluster.secret: clients of workspaces a live peer owns are forwarded to it (cluster/forwarding.ts). */
  forwarding?: ClusterForwarding;
}

/**
 * Events: 'drain-begin' (none: a drain was asked for, its budget runs from
 * now), 'drain-start' (DrainProgress), 'drain-progress' (DrainProgress),
 * 'drain-done' (DrainReport).
 */
export class Gateway extends EventEmitter implements GatewayView {
  private readonly reaperAbort = new AbortController();
  private draining: Promise<DrainReport> | undefined;
  private progress: DrainProgress | undefined;
  private readonly savedDuringDrain = new Set<string>();
  private readonly unsavedDuringDrain = new Set<string>();
  /** Streams (admin drain) that must flush before the listeners close. */
  readonly drainWatchers = new Set<Promise<void>>();
  readonly metrics: GatewayMetrics;
  front!: Front;
  internal!: InternalApi;
  sup!: Supervisor;
  /** The pre-starts of this start's warm restart. */
  warm: WarmRestart | undefined;

  private constructor(readonly o: GatewayOptions) {
    super();
    this.metrics = new GatewayMetrics();
  }

  static async start(o: GatewayOptions): Promise<Gateway> {
    const gw = new Gateway(o);
    const user = o.supervisor.observer;
    const observer: SupervisorObserver = {
      startFinished: (e) => {
        gw.metrics.startFinished(e);
        user?.startFinished?.(e);
      },
      spawnAdmitted: (e) => {
        gw.metrics.spawnAdmitted(e);
        user?.spawnAdmitted?.(e);
      },
      workspaceStopped: (e) => {
        gw.metrics.workspaceStopped(e);
        gw.noteStopped(e.workspaceId, e.saved);
        user?.workspaceStopped?.(e);
      },
      archiveFinished: (e) => {
        gw.metrics.archiveFinished(e);
        user?.archiveFinished?.(e);
      },
      approvalAnswered: (e) => {
        gw.metrics.approvalAnswered(e);
        user?.approvalAnswered?.(e);
      },
    };
    gw.sup = await Supervisor.start({ logger: o.log, ...o.supervisor, observer });
    const sup = gw.sup;
    const cluster = o.supervisor.cluster;
    gw.metrics.attach({
      shardStats: () => sup.stats(),
      childProcesses: () => sup.childProcessCount,
      spawnQueue: () => sup.spawnQueue,
      ...(cluster === undefined ? {} : { cluster: () => cluster.stats() }),
      ...(o.forwarding === undefined ? {} : { forwarding: () => (o.forwarding as ClusterForwarding).stats() }),
    });
    try {
      // The internal listener first: children may call it as soon as they run.
      gw.internal = await InternalApi.start({
        sup,
        host: o.internal.host,
        port: o.internal.port,
        ...(o.internal.upstreamUrl === undefined ? {} : { upstreamUrl: o.internal.upstreamUrl }),
        log: o.log,
        routes: (app) => {
          adminRoutes(app, gw, o.adminToken, o.log);
          o.internalRoutes?.(app, gw);
        },
      });
      gw.front = await Front.start({
        sup,
        auth: o.auth,
        host: o.listen.host,
        port: o.listen.port,
        limits: o.limits,
        log: o.log,
        ...(o.firstConnectionId === undefined ? {} : { firstConnectionId: o.firstConnectionId }),
        observer: gw.metrics.front,
        ...(o.forwarding === undefined ? {} : { forwarding: o.forwarding }),
        // Ready does not wait for the warm restart: see docs/operations.md#warm-restart.
        ...(o.warmRestart === undefined ? {} : { readiness: () => ({ warmRestart: gw.warm?.progress ?? { state: 'off' } }) }),
        ...(o.turns === false ? {} : { turns: { options: { ...DEFAULT_TURN_API, ...(o.turns ?? {}) }, observer: gw.metrics } }),
        routes: (app) => {
          // Read at scrape time; undefined until Front.start has returned.
          gw.metrics.front.memory = () => (gw.front as Front | undefined)?.memory() ?? EMPTY_MEMORY;
          app.get('/metrics', (res, req) => {
            const refused = o.metricsToken === undefined ? undefined : checkBearer(req.getHeader('authorization'), o.metricsToken);
            if (refused !== undefined) {
              sendJson(res, refused.status, refused.body, refused.headers);
              return;
            }
            let aborted = false;
            res.onAborted(() => (aborted = true));
            gw.metrics.render().then(
              (m) => !aborted && res.cork(() => sendText(res, 200, m.body, m.contentType)),
              (err: unknown) => {
                const e = toGatewayError(err);
                o.log.error({ err: e.describe() }, 'metrics failed');
                if (!aborted) res.cork(() => sendText(res, 500, `# metrics failed: ${e.code}\n`));
              },
            );
          });
          o.publicRoutes?.(app, gw);
        },
      });
    } catch (err) {
      gw.internal?.close();
      gw.metrics.close();
      await sup.close();
      throw err;
    }
    if (o.reaper !== undefined) {
      const reaper = new IdleReaper(sup, { ...o.reaper, logger: o.log });
      void reaper.run(gw.reaperAbort.signal);
    }
    const wr = o.warmRestart;
    // Taken even when off, so a record from an earlier setting is never used later.
    const entries = wr === undefined ? [] : await takeWarmRecord(wr.file, o.log);
    gw.warm = wr === undefined || wr.max === 0 || gw.isDraining ? WarmRestart.off(sup, o.log) : new WarmRestart(sup, entries.slice(0, wr.max), o.log);
    return gw;
  }

  get url(): string {
    return `ws://${this.o.listen.host.includes(':') ? `[${this.o.listen.host}]` : this.o.listen.host}:${this.front.port}`;
  }

  get isDraining(): boolean {
    return this.draining !== undefined;
  }

  /** Progress of the drain under way, if any. */
  get drainProgress(): DrainProgress | undefined {
    return this.progress === undefined ? undefined : { ...this.progress };
  }

  /** Resolves when a drain (from a signal or the admin API) has finished. */
  get drained(): Promise<DrainReport> | undefined {
    return this.draining;
  }

  /**
   * Stop accepting (upgrades and /readyz answer 503), close clients with
   * 1001, stop every child and upload every home, close the listeners.
   * Whatever is not uploaded within the budget stays on disk for the next
   * start. Idempotent.
   */
  drain(): Promise<DrainReport> {
    if (this.draining === undefined) {
      this.draining = this.runDrain();
      this.emit('drain-begin');
    }
    return this.draining;
  }

  /**
   * restart.handover (handover.ts): stop accepting, close clients with 1012,
   * let go of every child without stopping it, close the listeners, and
   * give the children's records to `deliver`. The homes stay with their
   * running children; nothing is uploaded. Counts as this gateway's drain.
   */
  handOver(deliver: (records: HandoverRecord[]) => Promise<void>): Promise<DrainReport> {
    if (this.draining === undefined) {
      this.draining = (async () => {
        this.front.draining = true;
        this.reaperAbort.abort();
        this.warm?.stop();
        await this.front.closeClients(CloseCode.ServiceRestart, 'GW_RESTARTING: gateway restarting; reconnect', 2000);
        const records = await this.sup.handover();
        this.front.close();
        this.internal.close();
        this.metrics.close();
        this.o.log.info({ children: records.length }, 'handover: children released; listeners closed');
        await deliver(records);
        return { results: [], saved: 0, unsaved: [], timedOut: false };
      })();
      this.emit('drain-begin');
    }
    return this.draining;
  }

  private noteStopped(workspaceId: string, saved: boolean): void {
    const p = this.progress;
    if (p === undefined) return;
    p.stopped += 1;
    if (saved) {
      p.saved += 1;
      this.savedDuringDrain.add(workspaceId);
    } else {
      this.unsavedDuringDrain.add(workspaceId);
    }
    this.o.log.info({ workspaceId, saved, stopped: p.stopped, total: p.total }, `drain: ${p.saved} of ${p.total} uploaded`);
    this.emit('drain-progress', { ...p, workspaceId });
  }

  /**
   * shutdown.budget is a promise: every wait below ends by the deadline,
   * whatever hangs (a store that accepts and never answers, an idle-reaper
   * pass stuck in its upload, a shard that does not answer). A reserve at
   * the end is kept for ending the workers and closing the listeners. The
   * report counts from what happened, not from what answered: a home is
   * saved when its upload was reported stored, and every other home the
   * drain knew of (running, being stopped, in the spool) is unsaved.
   */
  private async runDrain(): Promise<DrainReport> {
    const log = this.o.log;
    const t0 = Date.now();
    const budgetMs = this.o.shutdownBudgetMs;
    // The last part of the budget ends the workers (up to a second for the archive threads), closes
    // the listeners and lets the process exit.
    const deadline = t0 + budgetMs - Math.min(3000, budgetMs / 4);
    const left = (): number => Math.max(0, deadline - Date.now());
    this.progress = { total: 0, stopped: 0, saved: 0 };
    this.front.draining = true;
    this.reaperAbort.abort();
    // A reaper pass in flight is not waited for: it ends with its uploads, which may hang.
    // The shards' close() covers the homes it is stopping (they are `busy` there).
    const stats = (await this.sup.stats({ timeoutMs: Math.max(1, Math.min(5000, left())) }).catch(() => undefined)) ?? [];
    const known = new Map<string, { error?: string; spooledDir?: string }>();
    for (const s of stats) {
      for (const w of s.workspaces) known.set(w.workspaceId, {});
      for (const id of s.busy) known.set(id, {});
      for (const sp of s.spool) known.set(sp.workspaceId, { error: sp.lastError, spooledDir: sp.dir });
    }
    const total = stats.reduce((n, s) => n + s.workspaces.length, 0);
    this.progress.total = total;
    this.warm?.stop();
    const wr = this.o.warmRestart;
    if (wr !== undefined && stats.length > 0) {
      // Before the children stop, while their activity is known. Written whatever this gateway's
      // warm_restart.max: the next start's own setting decides, so a deploy that turns it on gains at once.
      const live = liveForRecord(stats.flatMap((s) => s.workspaces));
      const wrote = await within(writeWarmRecord(wr.file, live).then(() => true), Math.min(2000, left())).catch((err: unknown) => {
        log.error({ file: wr.file, err: toGatewayError(err).describe() }, 'drain: warm-restart record not written; the next start is cold');
        return false;
      });
      if (wrote === true) log.info({ file: wr.file, workspaces: live.length }, 'drain: warm-restart record written');
    }
    this.emit('drain-start', { ...this.progress });
    const clients = this.front.connectionCount;
    await this.front.closeClients(CloseCode.GoingAway, 'GW_CLOSED: gateway shutting down', Math.min(2000, budgetMs / 4, left()));
    log.info({ clients, workspaces: total }, 'drain: clients closed; stopping children');
    const outcome = await within(this.sup.close(), left());
    const timedOut = outcome === TIMED_OUT;
    if (timedOut) {
      log.error({ budgetMs }, 'drain: budget exceeded; homes not yet uploaded stay on disk for the next start');
      // Ends the shard workers (their children get SIGTERM, then SIGKILL) and the archive threads.
      await within(this.sup.destroy().catch(() => {}), Math.max(100, t0 + budgetMs - Date.now() - 1000));
    }
    const results = outcome === TIMED_OUT ? [] : outcome;
    const spooled = new Set(stats.flatMap((s) => s.spool.map((sp) => sp.workspaceId)));
    for (const r of results) {
      if (r.saved) this.savedDuringDrain.add(r.workspaceId);
      else if (r.stopped) known.set(r.workspaceId, { ...(r.error === undefined ? {} : { error: r.error }), ...(r.spooledDir === undefined ? {} : { spooledDir: r.spooledDir }) });
      // Nothing was running and no stop reported a home (a start that failed and left nothing to keep).
      else if (!this.unsavedDuringDrain.has(r.workspaceId) && !spooled.has(r.workspaceId)) known.delete(r.workspaceId);
    }
    for (const id of this.unsavedDuringDrain) if (!known.has(id)) known.set(id, {});
    const unsaved: StopResult[] = [...known]
      .filter(([id]) => !this.savedDuringDrain.has(id))
      .map(([workspaceId, d]) => ({ workspaceId, stopped: true, saved: false, error: d.error ?? (timedOut ? 'not stored within shutdown.budget; the home stays on disk' : 'not stored'), ...(d.spooledDir === undefined ? {} : { spooledDir: d.spooledDir }) }));
    const saved = this.savedDuringDrain.size;
    for (const r of unsaved) log.error({ workspaceId: r.workspaceId, dir: r.spooledDir, err: r.error }, 'drain: home not uploaded; kept on disk');
    log.info({ saved, unsaved: unsaved.length, ms: Date.now() - t0 }, 'drain: done');
    const report: DrainReport = { results, saved, unsaved, timedOut };
    this.emit('drain-done', report);
    // Let progress streams write their last line before their listener closes.
    await within(Promise.all(this.drainWatchers), Math.min(1000, Math.max(0, t0 + budgetMs - Date.now() - 800)));
    try {
      this.front.close();
      this.internal.close();
      this.metrics.close();
      this.o.forwarding?.close();
    } catch (err) {
      log.warn({ err: toGatewayError(err).describe() }, 'drain: closing listeners');
    }
    return report;
  }
}

