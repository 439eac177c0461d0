/**
 * The admin API, on the internal listener, behind `Authorization: Bearer
 * <admin.token>`. The token is required even from loopback: children run
 * tools on this host and must not be able to stop other workspaces. Without
 * admin.token the API is off (403).
 *
 *   GET  /admin/workspaces                 every live workspace, the spool, and the data plane's buffered bytes
 *   GET  /admin/workspaces/:id             one workspace
 *   POST /admin/workspaces/:id/shutdown    stop it and upload its home
 *   POST /admin/drain                      drain the gateway; NDJSON progress
 *   GET  /admin/cluster                    [cluster]: this node's lease and ownership
 */
import type { Logger } from 'pino';
import { ERROR_CODES } from '../../shared/errors.js';
import type { SpoolStatus, WorkspaceStatus } from '../../shared/protocol.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';
import { checkBearer } from '../auth/bearer-check.js';
import type { DrainProgress, DrainReport, GatewayView as Gateway } from '../gateway-view.js';
import { processRssBytes } from '../../shared/proc.js';
import { asyncRoute, errorReply, statusLine } from './http-util.js';
import type { HttpReply, RequestInfo } from './http-util.js';
import type { HttpRequest, HttpResponse, TemplatedApp } from './uws.js';

export function adminRoutes(app: TemplatedApp, gw: Gateway, token: string | undefined, log: Logger): void {
  // The token is checked on the headers, before any body is read (asyncRoute's gate).
  const gate = (req: RequestInfo): HttpReply | undefined => checkToken(req.headers.authorization, token);
  const route = (params: number, handler: (req: RequestInfo) => Promise<HttpReply>) => asyncRoute(params, handler, log, gate);
  app.get('/admin/workspaces', route(0, () => listWorkspaces(gw)));
  app.get('/admin/workspaces/:id', route(1, (req) => oneWorkspace(gw, req.params[0] ?? '')));
  app.post('/admin/workspaces/:id/shutdown', route(1, (req) => shutdownWorkspace(gw, req.params[0] ?? '')));
  app.post('/admin/drain', (res, req) => drainStream(res, req, gw, token));
  app.get('/admin/cluster', route(0, () => Promise.resolve(clusterStatus(gw))));
  app.any('/admin/*', route(0, () => Promise.resolve(errorReply(404, 'GW_NOT_FOUND', 'no such admin route'))));
}

function checkToken(header: string | undefined, token: string | undefined): HttpReply | undefined {
  if (token === undefined) return errorReply(403, 'GW_FORBIDDEN', 'the admin API is off: set admin.token (CXG_ADMIN_TOKEN)');
  return checkBearer(header, token);
}

async function rssBytes(pid: number | undefined): Promise<number | null> {
  return pid === undefined ? null : await processRssBytes(pid);
}

async function describeWorkspace(w: WorkspaceStatus): Promise<Record<string, unknown>> {
  return {
    workspace_id: w.workspaceId,
    state: w.state,
    pid: w.pid ?? null,
    rss_bytes: await rssBytes(w.pid),
    clients: w.clients,
    last_activity: new Date(w.lastActivity).toISOString(),
    started_at: new Date(w.startedAt).toISOString(),
    shard: w.shard,
    generation: w.generation,
    codex_home: w.codexHome,
    // A warm restart's pre-start no client has claimed yet.
    prestarted: w.prestarted !== undefined,
  };
}

function describeSpool(e: SpoolStatus): Record<string, unknown> {
  return {
    workspace_id: e.workspaceId,
    dir: e.dir,
    bytes: e.bytes,
    attempts: e.attempts,
    since: new Date(e.since).toISOString(),
    next_retry_at: e.nextRetryAt === undefined ? null : new Date(e.nextRetryAt).toISOString(),
    last_error: e.lastError ?? null,
  };
}

async function listWorkspaces(gw: Gateway): Promise<HttpReply> {
  const stats = await gw.sup.stats();
  const workspaces = await Promise.all(stats.flatMap((s) => s.workspaces).sort((a, b) => a.workspaceId.localeCompare(b.workspaceId)).map(describeWorkspace));
  // The internal listener starts before the front.
  const front = gw.front as Gateway['front'] | undefined;
  const m = front?.memory();
  const dataPlane = m === undefined || front === undefined ? null : {
    connections: front.connectionCount,
    buffered_bytes: m.bufferedBytes,
    max_buffered_bytes: m.maxBufferedBytes,
    to_clients_buffered_bytes: m.toClientBufferedBytes,
    slow_child_closes: m.slowChildCloses,
    overload_closes: m.overloadCloses,
  };
  return { status: 200, body: { workspaces, spool: stats.flatMap((s) => s.spool).map(describeSpool), data_plane: dataPlane } };
}

function parseId(id: string): string | HttpReply {
  try {
    return validateWorkspaceId(decodeURIComponent(id));
  } catch {
    return errorReply(400, 'GW_BAD_WORKSPACE_ID', ERROR_CODES.GW_BAD_WORKSPACE_ID);
  }
}

async function oneWorkspace(gw: Gateway, raw: string): Promise<HttpReply> {
  const id = parseId(raw);
  if (typeof id !== 'string') return id;
  const w = await gw.sup.workspaceStatus({ workspaceId: id });
  if (w === undefined) return errorReply(404, 'GW_NOT_FOUND', `workspace ${id} has no running child`);
  return { status: 200, body: await describeWorkspace(w) };
}

async function shutdownWorkspace(gw: Gateway, raw: string): Promise<HttpReply> {
  const id = parseId(raw);
  if (typeof id !== 'string') return id;
  if (gw.isDraining) return errorReply(409, 'GW_CLOSED', 'the gateway is draining');
  if ((await gw.sup.workspaceStatus({ workspaceId: id })) === undefined) return errorReply(404, 'GW_NOT_FOUND', `workspace ${id} has no running child`);
  const r = await gw.sup.shutdown({ workspaceId: id });
  return { status: 200, body: { workspace_id: r.workspaceId, stopped: r.stopped, saved: r.saved, error: r.error ?? null, spooled_dir: r.spooledDir ?? null } };
}

/**
 * POST /admin/drain answers with one JSON line per event while the drain
 * runs: {"event":"start","total":n}, {"event":"progress","stopped":k,
 * "saved":s,"total":n,"workspace_id":…} per workspace, then
 * {"event":"done","saved":s,"unsaved":u,"timed_out":b}. Joining a drain
 * already under way streams the rest of it.
 */
function drainStream(res: HttpResponse, req: HttpRequest, gw: Gateway, token: string | undefined): void {
  const refused = checkToken(req.getHeader('authorization'), token);
  if (refused !== undefined) {
    res.writeStatus(statusLine(refused.status)).writeHeader('content-type', 'application/json').end(JSON.stringify(refused.body));
    return;
  }
  let open = true;
  let finish!: () => void;
  const flushed = new Promise<void>((r) => (finish = r));
  gw.drainWatchers.add(flushed);
  const write = (line: Record<string, unknown>, last = false): void => {
    if (!open) return;
    res.cork(() => {
      if (last) res.end(`${JSON.stringify(line)}\n`);
      else res.write(`${JSON.stringify(line)}\n`);
    });
    if (last) {
      open = false;
      finish();
    }
  };
  const onStart = (p: DrainProgress): void => write({ event: 'start', total: p.total });
  const onProgress = (p: DrainProgress): void => write({ event: 'progress', stopped: p.stopped, saved: p.saved, total: p.total, workspace_id: p.workspaceId ?? null });
  const onDone = (r: DrainReport): void => {
    detach();
    write({ event: 'done', saved: r.saved, unsaved: r.unsaved.length, timed_out: r.timedOut, unsaved_workspaces: r.unsaved.map((u) => u.workspaceId) }, true);
  };
  const detach = (): void => {
    gw.off('drain-start', onStart);
    gw.off('drain-progress', onProgress);
    gw.off('drain-done', onDone);
  };
  res.onAborted(() => {
    open = false;
    detach();
    finish();
  });
  res.writeStatus('200 OK');
  res.writeHeader('content-type', 'application/x-ndjson');
  res.writeHeader('cache-control', 'no-store');
  gw.on('drain-start', onStart);
  gw.on('drain-progress', onProgress);
  gw.on('drain-done', onDone);
  const current = gw.drainProgress;
  if (current !== undefined) write({ event: 'start', total: current.total, stopped: current.stopped, saved: current.saved });
  void gw.drain();
}

/** This node's lease and ownership counts; 404 without [cluster]. */
function clusterStatus(gw: Gateway): HttpReply {
  const cluster = gw.o.supervisor.cluster;
  if (cluster === undefined) return errorReply(404, 'GW_NOT_FOUND', 'no [cluster] is configured');
  const s = cluster.stats();
  return {
    status: 200,
    body: {
      node_id: s.nodeId,
      lease: s.lease,
      lease_alive: s.leaseAlive,
      lease_remaining_ms: s.leaseRemainingMs,
      workspaces_held: s.held,
      takeovers: s.takeovers,
      fenced_uploads: s.fencedCommits,
      lease_losses: s.leaseLosses,
    },
  };
}
