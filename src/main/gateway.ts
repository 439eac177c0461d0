/**
 * A running gateway: supervisor, front door, internal listener and idle
 * reaper, with an orderly drain. `serve` (server.ts) builds one from
 * settings and adds signal handling; tests build one directly.
 */
import type { Logger } from 'pino';
import { CloseCode } from '../shared/close-codes.js';
import { toGatewayError } from '../shared/errors.js';
import type { StopResult } from '../shared/protocol.js';
import type { Authenticator } from './auth.js';
import { Front } from './front.js';
import type { FrontLimits, FrontObserver } from './front.js';
import { IdleReaper } from './idle-reaper.js';
import type { IdleReaperOptions } from './idle-reaper.js';
import { InternalApi } from './internal-api.js';
import { Supervisor } from './supervisor.js';
import type { SupervisorOptions } from './supervisor.js';
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
  log: Logger;
  observer?: FrontObserver;
  /** Extra routes on the public listener and on the internal one. */
  publicRoutes?: (app: TemplatedApp, gw: Gateway) => void;
  internalRoutes?: (app: TemplatedApp, gw: Gateway) => void;
}

export interface DrainReport {
  results: StopResult[];
  saved: number;
  unsaved: StopResult[];
  timedOut: boolean;
}

export class Gateway {
  private readonly reaperAbort = new AbortController();
  private reaperRun: Promise<void> | undefined;
  private draining: Promise<DrainReport> | undefined;
  front!: Front;
  internal!: InternalApi;

  private constructor(
    readonly o: GatewayOptions,
    readonly sup: Supervisor,
  ) {}

  static async start(o: GatewayOptions): Promise<Gateway> {
    const sup = await Supervisor.start({ logger: o.log, ...o.supervisor });
    const gw = new Gateway(o, sup);
    try {
      // The internal listener first: children may call it as soon as they run.
      gw.internal = await InternalApi.start({
        sup,
        host: o.internal.host,
        port: o.internal.port,
        ...(o.internal.upstreamUrl === undefined ? {} : { upstreamUrl: o.internal.upstreamUrl }),
        log: o.log,
        routes: (app) => o.internalRoutes?.(app, gw),
      });
      gw.front = await Front.start({
        sup,
        auth: o.auth,
        host: o.listen.host,
        port: o.listen.port,
        limits: o.limits,
        log: o.log,
        ...(o.observer === undefined ? {} : { observer: o.observer }),
        routes: (app) => o.publicRoutes?.(app, gw),
      });
    } catch (err) {
      gw.internal?.close();
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

  private async runDrain(): Promise<DrainReport> {
    const log = this.o.log;
    const t0 = Date.now();
    this.front.draining = true;
    this.reaperAbort.abort();
    await this.reaperRun;
    const clients = this.front.connectionCount;
    await this.front.closeClients(CloseCode.GoingAway, 'gateway shutting down', Math.min(2000, this.o.shutdownBudgetMs / 4));
    log.info({ clients }, 'drain: clients closed; stopping children');
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
    try {
      this.front.close();
      this.internal.close();
    } catch (err) {
      log.warn({ err: toGatewayError(err).describe() }, 'drain: closing listeners');
    }
    return { results, saved, unsaved, timedOut };
  }
}
