/**
 * The loopback-only listener. Children reach back to the gateway here with
 * their per-process token (`X-Loopback-Token`, the CXG_LOOPBACK_TOKEN of
 * their environment). Peers that are not loopback get 403 even if the
 * listener is bound wider.
 */
import type { Logger } from 'pino';
import { isLoopbackAddress } from '../../shared/net.js';
import { asyncRoute, errorReply, sendError } from './http-util.js';
import type { HttpReply, RequestInfo } from './http-util.js';
import type { Supervisor } from '../supervisor/supervisor.js';
import { closeApp, listen, uws } from './uws.js';
import type { ListenSocket, TemplatedApp } from './uws.js';

export interface InternalApiOptions {
  sup: Supervisor;
  host: string;
  port: number;
  /** When set, /internal/connected adds what `GET <upstream>/connected?workspace_id=…` returns. */
  upstreamUrl?: string;
  log: Logger;
  /** Further routes on this listener (admin API). */
  routes?: (app: TemplatedApp) => void;
  fetch?: typeof fetch;
}

export class InternalApi {
  private constructor(
    private readonly app: TemplatedApp,
    private socket: ListenSocket | undefined,
    readonly port: number,
  ) {}

  static async start(o: InternalApiOptions): Promise<InternalApi> {
    const app = uws().App();
    app.get('/internal/connected', asyncRoute(0, (req) => connected(o, req), o.log));
    o.routes?.(app);
    app.any('/*', (res) => sendError(res, 404, 'GW_NOT_FOUND', 'no such route'));
    const { socket, port } = await listen(app, o.host, o.port);
    return new InternalApi(app, socket, port);
  }

  close(): void {
    if (this.socket !== undefined) uws().us_listen_socket_close(this.socket);
    this.socket = undefined;
    closeApp(this.app);
  }
}

/** Refuses peers that are not loopback: 403. */
export function loopbackOnly(req: RequestInfo): HttpReply | undefined {
  if (isLoopbackAddress(req.remoteAddress)) return undefined;
  return errorReply(403, 'GW_FORBIDDEN', 'the internal API answers loopback peers only');
}

async function connected(o: InternalApiOptions, req: RequestInfo): Promise<HttpReply> {
  const refused = loopbackOnly(req);
  if (refused !== undefined) return refused;
  const token = req.headers['x-loopback-token'];
  if (token === undefined || token === '') return errorReply(401, 'GW_UNAUTHORIZED', 'missing X-Loopback-Token');
  const workspaceId = await o.sup.lookupWorkspaceForLoopbackToken(token);
  if (workspaceId === undefined) return errorReply(401, 'GW_UNAUTHORIZED', 'unknown loopback token');
  const status = await o.sup.workspaceStatus({ workspaceId });
  const body: Record<string, unknown> = {
    workspace_id: workspaceId,
    status:
      status === undefined
        ? { state: 'absent' }
        : {
            state: status.state,
            pid: status.pid ?? null,
            connected_clients: status.clients,
            last_activity: new Date(status.lastActivity).toISOString(),
            started_at: new Date(status.startedAt).toISOString(),
            shard: status.shard,
          },
  };
  if (o.upstreamUrl !== undefined) {
    const url = `${o.upstreamUrl.replace(/\/+$/, '')}/connected?workspace_id=${encodeURIComponent(workspaceId)}`;
    try {
      const r = await (o.fetch ?? fetch)(url, { signal: AbortSignal.timeout(5000) });
      if (!r.ok) {
        // Logged like the other upstream failures: a child only sees the 502.
        o.log.warn({ workspaceId, status: r.status }, 'upstream /connected failed');
        await r.body?.cancel();
        return errorReply(502, 'GW_UPSTREAM', `upstream answered ${r.status}`);
      }
      body.upstream = await r.json();
    } catch (err) {
      o.log.warn({ workspaceId, err: err instanceof Error ? err.message : String(err) }, 'upstream /connected failed');
      return errorReply(502, 'GW_UPSTREAM', 'upstream /connected failed');
    }
  }
  return { status: 200, body };
}
