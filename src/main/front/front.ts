/**
 * The front door: uWebSockets.js on the main thread. It authenticates each
 * upgrade (upgrade.ts), hashes the workspace to its shard and moves frames
 * between client sockets and that shard's data port (data-plane.ts). It
 * never spawns, never touches a workspace's disk, never tars: it routes.
 * This file wires them into one uWS app with /healthz, /readyz, the turn
 * API and the caller's routes, and stops it: first accepting, then clients.
 */
import { CloseCode } from '../../shared/close-codes.js';
import { within } from '../../shared/concurrency.js';
import { GatewayError } from '../../shared/errors.js';
import { sendError, sendJson } from '../http/http-util.js';
import { registerTurnApi } from '../http/turn-api.js';
import { closeApp, listen, uws } from '../http/uws.js';
import type { HttpRequest, HttpResponse, ListenSocket, SocketContext, TemplatedApp } from '../http/uws.js';
import type { Client, ClientData } from './client.js';
import { DataPlane } from './data-plane.js';
import type { FrontMemory, FrontOptions } from './limits.js';
import { Upgrades } from './upgrade.js';

export { DEFAULT_FRONT_LIMITS } from './limits.js';
export type { FrontLimits, FrontMemory, FrontObserver, FrontOptions } from './limits.js';

const WS_PATHS = ['/', '/codex-app/ws'];

export class Front {
  private readonly plane: DataPlane;
  private readonly upgrades: Upgrades;
  private listenSocket: ListenSocket | undefined;
  draining = false;
  port = 0;

  private constructor(
    private readonly o: FrontOptions,
    private readonly app: TemplatedApp,
  ) {
    this.plane = new DataPlane(o);
    this.upgrades = new Upgrades(o, this.plane, () => this.draining);
  }

  static async start(o: FrontOptions): Promise<Front> {
    const idleTimeout = o.limits.idleTimeoutSeconds ?? 120;
    // uWS calls std::terminate on any other value: refuse it here, loudly and catchably.
    if (!Number.isInteger(idleTimeout) || (idleTimeout !== 0 && (idleTimeout < 8 || idleTimeout > 960))) {
      throw new GatewayError('GW_BAD_OPTIONS', `limits.idleTimeoutSeconds must be 0 or an integer from 8 to 960, got ${String(idleTimeout)}`);
    }
    const u = uws();
    const app = u.App();
    const front = new Front(o, app);
    const { plane, upgrades } = front;
    const behavior = {
      compression: u.DISABLED,
      // uWS cuts the TCP connection (no close frame) on a frame above its
      // limit, so its limit sits above ours and the message handler answers
      // 1009 for frames up to twice the limit; beyond that the cut remains.
      maxPayloadLength: o.limits.maxFrameBytes + Math.min(o.limits.maxFrameBytes, 64 * 1024 * 1024),
      // uWS itself must never drop a frame: its limit sits above ours, which closes with 1008 first.
      maxBackpressure: o.limits.clientMaxBufferedBytes + o.limits.maxFrameBytes + 1024 * 1024,
      closeOnBackpressureLimit: 1,
      idleTimeout,
      sendPingsAutomatically: true,
      upgrade: (res: HttpResponse, req: HttpRequest, ctx: SocketContext) => upgrades.upgrade(res, req, ctx),
      open: (ws: Client) => {
        if (!plane.opened(ws)) upgrades.verifyPending(ws, ws.getUserData());
      },
      message: (ws: Client, msg: ArrayBuffer, isBinary: boolean) => front.clientFrame(ws, msg, isBinary),
      drain: (ws: Client) => plane.drained(ws),
      close: (ws: Client, code: number) => plane.clientClosed(ws, code),
    };
    for (const p of WS_PATHS) app.ws<ClientData>(p, behavior);
    app.get('/healthz', (res) => sendJson(res, 200, { status: 'ok' }));
    app.get('/readyz', (res) => {
      const ready = !front.draining && o.sup.healthy;
      sendJson(res, ready ? 200 : 503, { status: ready ? 'ready' : front.draining ? 'draining' : 'unhealthy', ...(o.readiness?.() ?? {}) });
    });
    if (o.turns !== undefined) {
      registerTurnApi(app, {
        sup: o.sup,
        auth: o.auth,
        options: o.turns.options,
        log: o.log,
        ...(o.turns.observer === undefined ? {} : { observer: o.turns.observer }),
        refusal: (workspaceId) => {
          if (front.draining) return { status: 503, code: 'GW_CLOSED', message: 'gateway is shutting down' };
          if (plane.isDown(o.sup.shardFor(workspaceId))) return { status: 503, code: 'GW_SHARD_FAILED', message: 'the shard serving this workspace is down' };
          return undefined;
        },
      });
    }
    o.routes?.(app);
    app.any('/*', (res) => sendError(res, 404, 'GW_NOT_FOUND', 'no such route'));
    const { socket, port } = await listen(app, o.host, o.port);
    front.listenSocket = socket;
    front.port = port;
    return front;
  }

  private clientFrame(ws: Client, msg: ArrayBuffer, isBinary: boolean): void {
    const d = ws.getUserData();
    if (d.closed) return;
    if (msg.byteLength > this.o.limits.maxFrameBytes) {
      d.closed = true;
      ws.end(CloseCode.MessageTooBig, `GW_TOO_LARGE: message above the ${this.o.limits.maxFrameBytes}-byte limit`);
      return;
    }
    if (d.pendingAuth !== undefined) this.upgrades.holdPending(ws, d, msg, isBinary);
    else this.plane.clientFrame(ws, d, msg, isBinary);
  }

  get connectionCount(): number {
    return this.plane.size;
  }

  memory(): FrontMemory {
    return this.plane.memory();
  }

  /** Stops accepting connections; /readyz answers 503 from now on. */
  stopAccepting(): void {
    this.draining = true;
    if (this.listenSocket !== undefined) {
      uws().us_listen_socket_close(this.listenSocket);
      this.listenSocket = undefined;
    }
  }

  /** Closes every client with `code` and waits (bounded) until they are gone. */
  async closeClients(code: number, reason: string, waitMs: number): Promise<void> {
    if (this.plane.size === 0) return;
    const gone = new Promise<void>((resolve) => (this.plane.onEmpty = resolve));
    this.plane.endAll(code, reason);
    await within(gone, waitMs);
  }

  close(): void {
    this.stopAccepting();
    this.plane.closeAll();
    closeApp(this.app);
  }
}
