/**
 * A running gateway: supervisor, front door (WebSocket, /healthz, /readyz,
 * /metrics), the internal listener (/internal/*, /admin/*), the idle reaper,
 * and an orderly, bounded drain. `serve` (server.ts) builds one from
 * settings and adds signal handling; tests and embedders build one directly.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { CloseCode } from '../shared/close-codes.js';
import { toGatewayError } from '../shared/errors.js';
import type { StopResult } from '../shared/protocol.js';
import { adminRoutes } from './admin-api.js';
import type { Authenticator } from './auth.js';
import { Front } from './front.js';
import type { FrontLimits } from './front.js';
import { checkBearer } from './bearer-check.js';
import { sendJson, sendText } from './http-util.js';
import { IdleReaper } from './idle-reaper.js';
import type { IdleReaperOptions } from './idle-reaper.js';
import { InternalApi } from './internal-api.js';
import { GatewayMetrics } from './metrics.js';
import { Supervisor } from './supervisor.js';
import type { SupervisorObserver, SupervisorOptions } from './supervisor.js';
import type { TemplatedApp } from './uws.js';

export interface GatewayOptions {
  supervisor: SupervisorOptions;
  auth: Authenticator;
  listen: { host: string; port: number };
  internal: { host: string; port: number; upstreamUrl?: string };
  limits: FrontLimits;
  reaper?: Omit<IdleReaperOptions, 'logger'>;
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
}

export interface DrainReport {
  results: StopResult[];
  saved: number;
  unsaved: StopResult[];
  timedOut: boolean;
}

export interface DrainProgress {
  total: number;
  stopped: number;
  saved: number;
  workspaceId?: string;
}

/** Events: 'drain-start' (DrainProgress), 'drain-progress' (DrainProgress), 'drain-done' (DrainReport). */
export class Gateway extends EventEmitter {
  private readonly reaperAbort = new AbortController();
  private reaperRun: Promise<void> | undefined;
  private draining: Promise<DrainReport> | undefined;
  private progress: DrainProgress | undefined;
  /** Streams (admin drain) that must flush before the listeners close. */
  readonly drainWatchers = new Set<Promise<void>>();
  readonly metrics: GatewayMetrics;
  front!: Front;
  internal!: InternalApi;
  sup!: Supervisor;

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
      workspaceStopped: (e) => {
        gw.metrics.workspaceStopped(e);
        gw.noteStopped(e.workspaceId, e.saved);
        user?.workspaceStopped?.(e);
      },
      archiveFinished: (e) => {
        gw.metrics.archiveFinished(e);
        user?.archiveFinished?.(e);
      },
    };
    gw.sup = await Supervisor.start({ logger: o.log, ...o.supervisor, observer });
    const sup = gw.sup;
    gw.metrics.attach({ shardStats: () => sup.stats(), childProcesses: () => sup.childProcessCount });
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
        routes: (app) => {
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
      gw.reaperRun = reaper.run(gw.reaperAbort.signal);
    }
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
    this.draining ??= this.runDrain();
    return this.draining;
  }

  private noteStopped(workspaceId: string, saved: boolean): void {
    const p = this.progress;
    if (p === undefined) return;
    p.stopped += 1;
    if (saved) p.saved += 1;
    this.o.log.info({ workspaceId, saved, stopped: p.stopped, total: p.total }, `drain: ${p.saved} of ${p.total} uploaded`);
    this.emit('drain-progress', { ...p, workspaceId });
  }

  private async runDrain(): Promise<DrainReport> {
    const log = this.o.log;
    const t0 = Date.now();
    this.front.draining = true;
    this.reaperAbort.abort();
    await this.reaperRun;
    const total = await this.sup.stats().then(
      (stats) => stats.reduce((n, s) => n + s.workspaces.length, 0),
      () => 0,
    );
    this.progress = { total, stopped: 0, saved: 0 };
    this.emit('drain-start', { ...this.progress });
    const clients = this.front.connectionCount;
    await this.front.closeClients(CloseCode.GoingAway, 'GW_CLOSED: gateway shutting down', Math.min(2000, this.o.shutdownBudgetMs / 4));
    log.info({ clients, workspaces: total }, 'drain: clients closed; stopping children');
    let timer: NodeJS.Timeout | undefined;
    const budget = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), Math.max(0, this.o.shutdownBudgetMs - (Date.now() - t0)))));
    const outcome = await Promise.race([this.sup.close(), budget]);
    clearTimeout(timer);
    const timedOut = outcome === 'timeout';
    const results = timedOut ? [] : outcome;
    const unsaved = results.filter((r) => r.stopped && !r.saved);
    const saved = results.filter((r) => r.saved).length;
    if (timedOut) log.error({ budgetMs: this.o.shutdownBudgetMs }, 'drain: budget exceeded; homes not yet uploaded stay on disk for the next start');
    for (const r of unsaved) log.error({ workspaceId: r.workspaceId, dir: r.spooledDir, err: r.error }, 'drain: home not uploaded; kept on disk');
    log.info({ saved, unsaved: unsaved.length, ms: Date.now() - t0 }, 'drain: done');
    const report: DrainReport = { results, saved, unsaved, timedOut };
    this.emit('drain-done', report);
    // Let progress streams write their last line before their listener closes.
    await Promise.race([Promise.all(this.drainWatchers), new Promise((r) => setTimeout(r, 1000))]);
    try {
      this.front.close();
      this.internal.close();
      this.metrics.close();
    } catch (err) {
      log.warn({ err: toGatewayError(err).describe() }, 'drain: closing listeners');
    }
    return report;
  }
}
