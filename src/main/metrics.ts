/**
 * Prometheus metrics for the whole process, served at GET /metrics. One
 * registry on the main thread: event counts arrive as notices from the
 * shards (starts, stops) and the archive pool (transfers); gauges are read at
 * scrape time from every shard's stats and from the front's counters, so
 * nothing on the frame path touches prom-client.
 */
import type { ClusterStats } from './cluster/ownership.js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { LoopDelayWindow } from '../shared/loop-delay.js';
import type { ShardStats } from '../shared/protocol.js';
import type { FrontMemory, FrontObserver } from './front/front.js';
import type { SupervisorObserver } from './supervisor/supervisor.js';
import type { TurnObserver } from './http/turn-api.js';

/** Plain counters the front bumps per frame; read at scrape time. */
export class FrontCounters implements FrontObserver {
  connected = 0;
  opened = 0;
  framesIn = 0;
  framesOut = 0;
  bytesIn = 0;
  bytesOut = 0;
  pauses = 0;
  resumes = 0;
  slowCloses = 0;
  readonly authFailures = new Map<string, number>();
  /** The front's buffered bytes, read at scrape time. */
  memory: (() => FrontMemory) | undefined;

  connectionOpened(): void {
    this.connected++;
    this.opened++;
  }

  connectionClosed(): void {
    this.connected--;
  }

  frame(direction: 'in' | 'out', bytes: number): void {
    if (direction === 'in') {
      this.framesIn++;
      this.bytesIn += bytes;
    } else {
      this.framesOut++;
      this.bytesOut += bytes;
    }
  }

  backpressure(what: 'pause' | 'resume' | 'close'): void {
    if (what === 'pause') this.pauses++;
    else if (what === 'resume') this.resumes++;
    else this.slowCloses++;
  }

  authFailed(code: string): void {
    this.authFailures.set(code, (this.authFailures.get(code) ?? 0) + 1);
  }
}

export interface MetricsSources {
  /** Stats of every shard (one round trip each). */
  shardStats(): Promise<ShardStats[]>;
  /** Child processes alive, as the main thread counts them. */
  childProcesses(): number;
  /** Starts waiting for a spawn permit now, by priority. */
  spawnQueue?(): Record<'client' | 'prestart', number>;
  /** With [cluster]: this node's lease and ownership counts. */
  cluster?(): ClusterStats;
}

const SPAWN_BUCKETS = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30];
const TRANSFER_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TURN_BUCKETS = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

export class GatewayMetrics implements SupervisorObserver, TurnObserver {
  readonly registry = new Registry();
  readonly front = new FrontCounters();
  private sources: MetricsSources | undefined;
  private readonly loopDelay = new LoopDelayWindow();

  private readonly spawns: Counter<'result' | 'code'>;
  private readonly spawnDuration: Histogram<'result'>;
  private readonly spawnQueued: Histogram<'priority'>;
  private readonly stops: Counter<'reason' | 'saved'>;
  private readonly reaped: Counter<string>;
  private readonly transfers: Counter<'op' | 'result' | 'code'>;
  private readonly transferBytes: Counter<'op'>;
  private readonly transferDuration: Histogram<'op'>;
  private readonly turnsStarted: Counter<string>;
  private readonly turnsCompleted: Counter<'status'>;
  private readonly turnsFailed: Counter<'code'>;
  private readonly turnsRefused: Counter<'code'>;
  private readonly turnDuration: Histogram<'result'>;
  private readonly turnsInFlight: Gauge<string>;
  private readonly approvals: Counter<'path' | 'method' | 'decision'>;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.spawns = new Counter({ name: 'cxg_spawns_total', help: 'Child starts, by result and error code.', labelNames: ['result', 'code'], registers });
    this.spawnDuration = new Histogram({ name: 'cxg_spawn_duration_seconds', help: 'Time from ensure to a ready child (download, spawn, /readyz).', labelNames: ['result'], buckets: SPAWN_BUCKETS, registers });
    this.spawnQueued = new Histogram({ name: 'cxg_spawn_queue_seconds', help: 'Time a start waited for its spawn permit (limits.max_concurrent_spawns), by priority (client: a client waits for it; prestart: a warm restart\'s).', labelNames: ['priority'], buckets: SPAWN_BUCKETS, registers });
    const queue = new Gauge({ name: 'cxg_spawn_queue_length', help: 'Starts waiting for a spawn permit now, by priority.', labelNames: ['priority'], registers, collect: () => {
      const q = this.sources?.spawnQueue?.() ?? { client: 0, prestart: 0 };
      queue.set({ priority: 'client' }, q.client);
      queue.set({ priority: 'prestart' }, q.prestart);
    } });
    this.stops = new Counter({ name: 'cxg_workspace_stops_total', help: 'Children stopped, by reason (shutdown, idle, drain, evict, crash, failed-start) and whether the home was stored.', labelNames: ['reason', 'saved'], registers });
    this.reaped = new Counter({ name: 'cxg_reaped_total', help: 'Children stopped by the idle reaper.', registers });
    this.transfers = new Counter({ name: 'cxg_archive_transfers_total', help: 'Uploads and downloads of workspace state, by result and error code.', labelNames: ['op', 'result', 'code'], registers });
    this.transferBytes = new Counter({ name: 'cxg_archive_bytes_total', help: 'Compressed bytes uploaded and downloaded.', labelNames: ['op'], registers });
    this.transferDuration = new Histogram({ name: 'cxg_archive_duration_seconds', help: 'Duration of uploads and downloads.', labelNames: ['op'], buckets: TRANSFER_BUCKETS, registers });

    this.turnsStarted = new Counter({ name: 'cxg_turns_started_total', help: 'HTTP turns (POST /api/turns) handed to a shard.', registers });
    this.turnsCompleted = new Counter({ name: 'cxg_turns_completed_total', help: 'HTTP turns that ended with a turn, by its status (completed, interrupted, failed).', labelNames: ['status'], registers });
    this.turnsFailed = new Counter({ name: 'cxg_turns_failed_total', help: 'HTTP turns answered with a transport error, by code (brokerTimeout, codexRPCError, subprocessCrash, wsDisconnect, or the start\'s GW_* code).', labelNames: ['code'], registers });
    this.turnsRefused = new Counter({ name: 'cxg_turn_requests_refused_total', help: 'HTTP turn requests refused before they ran (400, 401, 403, 413, 503), by error code.', labelNames: ['code'], registers });
    this.turnDuration = new Histogram({ name: 'cxg_turn_duration_seconds', help: 'Duration of HTTP turns, from request to answer, by result (ok, failed).', labelNames: ['result'], buckets: TURN_BUCKETS, registers });
    this.turnsInFlight = new Gauge({ name: 'cxg_turns_in_flight', help: 'HTTP turns running now.', registers });
    this.approvals = new Counter({ name: 'cxg_approvals_answered_total', help: 'Approval requests the gateway answered by policy, by path (http: approvals.headless, websocket: approvals.websocket), method and decision.', labelNames: ['path', 'method', 'decision'], registers });

    const front = this.front;
    new Gauge({ name: 'cxg_clients_connected', help: 'Client WebSocket connections open now.', registers, collect() { this.set(front.connected); } });
    const frames = new Counter({ name: 'cxg_frames_total', help: 'WebSocket frames proxied, by direction (in: client to child).', labelNames: ['direction'], registers, collect() {
      frames.reset();
      frames.inc({ direction: 'in' }, front.framesIn);
      frames.inc({ direction: 'out' }, front.framesOut);
    } });
    const bytes = new Counter({ name: 'cxg_frame_bytes_total', help: 'Payload bytes proxied, by direction.', labelNames: ['direction'], registers, collect() {
      bytes.reset();
      bytes.inc({ direction: 'in' }, front.bytesIn);
      bytes.inc({ direction: 'out' }, front.bytesOut);
    } });
    const bp = new Counter({ name: 'cxg_backpressure_events_total', help: 'Flow control toward clients: pause (client behind), resume, close (dropped as too slow).', labelNames: ['event'], registers, collect() {
      bp.reset();
      bp.inc({ event: 'pause' }, front.pauses);
      bp.inc({ event: 'resume' }, front.resumes);
      bp.inc({ event: 'close' }, front.slowCloses);
    } });
    const buffered = new Gauge({ name: 'cxg_buffered_bytes', help: 'Bytes the gateway holds for clients now, by direction (to_children: sent by clients, not yet taken by a child\'s socket, bounded by limits.max_buffered; to_clients: waiting in the sockets of clients above the high-water mark).', labelNames: ['direction'], registers, collect() {
      const m = front.memory?.();
      buffered.set({ direction: 'to_children' }, m?.bufferedBytes ?? 0);
      buffered.set({ direction: 'to_clients' }, m?.toClientBufferedBytes ?? 0);
    } });
    new Gauge({ name: 'cxg_buffered_bytes_limit', help: 'limits.max_buffered: the most client bytes in flight toward the children (0: no limit).', registers, collect() {
      this.set(front.memory?.().maxBufferedBytes ?? 0);
    } });
    const refused = new Counter({ name: 'cxg_client_buffer_closes_total', help: 'Clients closed for what they had in flight toward their child, by code (GW_SLOW_CHILD: their own window; GW_OVERLOADED: the gateway-wide limits.max_buffered).', labelNames: ['code'], registers, collect() {
      const m = front.memory?.();
      refused.reset();
      refused.inc({ code: 'GW_SLOW_CHILD' }, m?.slowChildCloses ?? 0);
      refused.inc({ code: 'GW_OVERLOADED' }, m?.overloadCloses ?? 0);
    } });
    const auth = new Counter({ name: 'cxg_auth_failures_total', help: 'Refused upgrades, by error code.', labelNames: ['code'], registers, collect() {
      auth.reset();
      for (const [code, n] of front.authFailures) auth.inc({ code }, n);
    } });

    const children = new Gauge({ name: 'cxg_children', help: 'Children per shard and state (starting, running, stopping).', labelNames: ['shard', 'state'], registers, collect: async () => {
      const stats = await this.stats();
      children.reset();
      for (const s of stats) {
        for (const state of ['starting', 'running', 'stopping']) children.set({ shard: String(s.shard), state }, s.workspaces.filter((w) => w.state === state).length);
      }
    } });
    const spoolHomes = new Gauge({ name: 'cxg_spool_homes', help: 'Homes waiting in the spool for a successful upload.', registers, collect: async () => {
      spoolHomes.set((await this.stats()).reduce((n, s) => n + s.spool.length, 0));
    } });
    const spoolBytes = new Gauge({ name: 'cxg_spool_bytes', help: 'Bytes of the homes in the spool.', registers, collect: async () => {
      spoolBytes.set((await this.stats()).reduce((n, s) => n + s.spool.reduce((m, e) => m + e.bytes, 0), 0));
    } });
    const spoolAge = new Gauge({ name: 'cxg_spool_oldest_age_seconds', help: 'Age of the oldest home in the spool (0 when empty).', registers, collect: async () => {
      const oldest = Math.min(...(await this.stats()).flatMap((s) => s.spool.map((e) => e.since)));
      spoolAge.set(Number.isFinite(oldest) ? (Date.now() - oldest) / 1000 : 0);
    } });
    const delay = new Gauge({ name: 'cxg_event_loop_delay_p99_seconds', help: 'p99 event-loop delay over the last 10 s window (or the current one, if higher), per thread.', labelNames: ['thread'], registers, collect: async () => {
      delay.reset();
      delay.set({ thread: 'main' }, this.loopDelay.p99Ms() / 1000);
      for (const s of await this.stats()) delay.set({ thread: `shard-${s.shard}` }, s.eventLoopDelayP99Ms / 1000);
    } });
    // Cluster figures read from the ClusterNode at scrape time; 0 without [cluster].
    const cluster = (): ClusterStats | undefined => this.sources?.cluster?.();
    const leaseAlive: Gauge = new Gauge({ name: 'cxg_cluster_lease_alive', help: 'With [cluster]: 1 while this gateway can prove its etcd lease alive, else 0.', registers, collect: () => {
      leaseAlive.set(cluster()?.leaseAlive === true ? 1 : 0);
    } });
    const held: Gauge = new Gauge({ name: 'cxg_cluster_workspaces_held', help: 'With [cluster]: workspaces this gateway owns in etcd now.', registers, collect: () => {
      held.set(cluster()?.held ?? 0);
    } });
    const counted = (name: string, help: string, value: (s: ClusterStats) => number): void => {
      const c: Counter = new Counter({ name, help, registers, collect: () => {
        const s = cluster();
        c.reset();
        c.inc(s === undefined ? 0 : value(s));
      } });
    };
    counted('cxg_cluster_takeovers_total', 'With [cluster]: workspaces this gateway took over (a new epoch).', (s) => s.takeovers);
    counted('cxg_cluster_fenced_uploads_total', 'With [cluster]: uploads refused as current because this gateway no longer held the workspace or a later owner stored state.', (s) => s.fencedCommits);
    counted('cxg_cluster_lease_losses_total', 'With [cluster]: times this gateway could not prove its lease alive and stopped its children.', (s) => s.leaseLosses);
    const processes: Gauge = new Gauge({
      name: 'cxg_child_processes',
      help: 'codex app-server processes alive now.',
      registers,
      collect: () => {
        processes.set(this.sources?.childProcesses() ?? 0);
      },
    });
  }

  attach(sources: MetricsSources): void {
    this.sources = sources;
  }

  private statsScrape: Promise<ShardStats[]> | undefined;

  /** One stats round trip per scrape, shared by every gauge that needs it. */
  private stats(): Promise<ShardStats[]> {
    if (this.sources === undefined) return Promise.resolve([]);
    this.statsScrape ??= this.sources.shardStats().finally(() => {
      setImmediate(() => (this.statsScrape = undefined));
    });
    return this.statsScrape;
  }

  // ---- SupervisorObserver ----------------------------------------------------

  startFinished(e: { workspaceId: string; ms: number; errorCode: string | null }): void {
    const result = e.errorCode === null ? 'ok' : 'failed';
    this.spawns.inc({ result, code: e.errorCode ?? '' });
    this.spawnDuration.observe({ result }, e.ms / 1000);
  }

  spawnAdmitted(e: { priority: 'client' | 'prestart'; queuedMs: number }): void {
    this.spawnQueued.observe({ priority: e.priority }, e.queuedMs / 1000);
  }

  workspaceStopped(e: { workspaceId: string; reason: string; saved: boolean }): void {
    this.stops.inc({ reason: e.reason, saved: String(e.saved) });
    if (e.reason === 'idle') this.reaped.inc();
  }

  archiveFinished(e: { op: 'upload' | 'download'; ok: boolean; bytes: number; ms: number; code: string | null }): void {
    this.transfers.inc({ op: e.op, result: e.ok ? 'ok' : 'failed', code: e.code ?? '' });
    if (e.ok) {
      this.transferBytes.inc({ op: e.op }, e.bytes);
      this.transferDuration.observe({ op: e.op }, e.ms / 1000);
    }
  }

  approvalAnswered(e: { path: 'http' | 'websocket'; method: string; decision: string }): void {
    this.approvals.inc({ path: e.path, method: e.method, decision: e.decision });
  }

  // ---- TurnObserver ----------------------------------------------------------------

  turnRefused(code: string): void {
    this.turnsRefused.inc({ code });
  }

  turnStarted(): void {
    this.turnsStarted.inc();
    this.turnsInFlight.inc();
  }

  turnFinished(e: { ok: boolean; result: string; ms: number }): void {
    this.turnsInFlight.dec();
    if (e.ok) this.turnsCompleted.inc({ status: e.result });
    else this.turnsFailed.inc({ code: e.result });
    this.turnDuration.observe({ result: e.ok ? 'ok' : 'failed' }, e.ms / 1000);
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  close(): void {
    this.loopDelay.close();
  }
}
