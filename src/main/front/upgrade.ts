/**
 * The upgrade of a client connection: limits first (draining, connection
 * count), then the bearer token, then the workspace's shard. A token the
 * authenticator can answer at once is checked before the upgrade (401 on
 * refusal); otherwise (a remote verifier's cache miss) the connection is
 * upgraded at once and verified after it opened, its frames held meanwhile.
 */
import { CloseCode } from '../../shared/close-codes.js';
import { GatewayError, toGatewayError } from '../../shared/errors.js';
import type { ErrorCode } from '../../shared/errors.js';
import { publicError, reasonFor } from '../../shared/public-error.js';
import { bearerToken } from '../auth/front-door.js';
import { sendError, sendJson } from '../http/http-util.js';
import type { HttpRequest, HttpResponse, SocketContext } from '../http/uws.js';
import { PENDING_AUTH_BYTES } from './client.js';
import type { Client, ClientData } from './client.js';
import type { DataPlane } from './data-plane.js';
import type { FrontOptions } from './limits.js';

export class Upgrades {
  constructor(
    private readonly o: FrontOptions,
    private readonly plane: DataPlane,
    private readonly draining: () => boolean,
  ) {}

  upgrade(res: HttpResponse, req: HttpRequest, ctx: SocketContext): void {
    // HttpRequest dies with this callback: copy what is needed first.
    const key = req.getHeader('sec-websocket-key');
    const protocol = req.getHeader('sec-websocket-protocol').split(',')[0]?.trim() ?? '';
    const extensions = req.getHeader('sec-websocket-extensions');
    const token = bearerToken(req.getHeader('authorization'));
    const peer = Buffer.from(res.getRemoteAddressAsText()).toString('latin1');
    if (this.draining()) {
      sendError(res, 503, 'GW_CLOSED', 'gateway is shutting down');
      return;
    }
    const max = this.o.limits.maxConnections;
    if (max !== undefined && this.plane.size >= max) {
      // Before auth: a flood of connections costs a header check each, no verification.
      this.o.log.warn({ peer, connections: this.plane.size, max }, 'upgrade refused: connection limit');
      sendJson(res, 503, { error: publicError(new GatewayError('GW_TOO_MANY_CONNECTIONS')) }, { 'retry-after': '5' });
      return;
    }
    if (token === undefined) {
      this.o.observer?.authFailed?.('GW_UNAUTHORIZED');
      sendError(res, 401, 'GW_UNAUTHORIZED', 'missing bearer token', { 'www-authenticate': 'Bearer' });
      return;
    }
    // Every upgrade happens inside this callback (see below).
    const upgrade = (data: ClientData): void => void res.upgrade(data, key, protocol, extensions, ctx);
    let now: { workspaceId: string } | undefined;
    try {
      now = this.o.auth.verifyNow?.(token);
    } catch (err) {
      this.refuse(res, err, peer);
      return;
    }
    if (now !== undefined) {
      this.accept(res, now.workspaceId, upgrade);
      return;
    }
    // No answer yet (a remote verifier's cache miss): upgrade now, inside
    // this callback, and verify once the socket is open (verifyPending).
    // Upgrading later from res.cork() is what uWS 20.30 gets wrong: its
    // cork() runs HTTP logic after its handler returns and, when the upgrade
    // reallocated the socket in place, reads the freed HTTP state of what is
    // now a WebSocket and may close it (uNetworking/uWebSockets#1928, fixed
    // upstream by #1929); an uncorked upgrade prints a warning per call.
    // The price: a refused token sees a close (1008) after its 101, not a 401.
    const data = this.plane.newClient('', -1);
    data.pendingAuth = { token, frames: [], bytes: 0 };
    upgrade(data);
  }

  /** Upgrades an authenticated request, unless the workspace's shard is down. */
  private accept(res: HttpResponse, workspaceId: string, upgrade: (data: ClientData) => void): void {
    const shard = this.o.sup.shardFor(workspaceId);
    if (this.plane.isDown(shard)) {
      sendError(res, 503, 'GW_SHARD_FAILED', 'the shard serving this workspace is down');
      return;
    }
    upgrade(this.plane.newClient(workspaceId, shard));
  }

  /**
   * The client learns the code and its fixed message; why exactly (expired,
   * wrong key, the verifier's status) is logged, with the peer's address.
   */
  private refuse(res: HttpResponse, err: unknown, peer: string): void {
    const e = toGatewayError(err, 'GW_UNAUTHORIZED');
    this.o.observer?.authFailed?.(e.code);
    const status = e.code === 'GW_AUTH_UNAVAILABLE' ? 503 : 401;
    this.o.log.info({ peer, status, err: e.describe() }, 'upgrade refused');
    sendJson(res, status, { error: publicError(e) }, status === 401 ? { 'www-authenticate': 'Bearer error="invalid_token"' } : {});
  }

  /** Verifies the token of a connection upgraded before its answer was known. */
  verifyPending(ws: Client, d: ClientData): void {
    const token = d.pendingAuth?.token ?? '';
    if (d.pendingAuth !== undefined) d.pendingAuth.token = '';
    this.o.auth.verify(token).then(
      ({ workspaceId }) => {
        if (d.closed) return;
        const shard = this.o.sup.shardFor(workspaceId);
        if (this.draining() || this.plane.isDown(shard)) {
          const code = this.draining() ? 'GW_CLOSED' : 'GW_SHARD_FAILED';
          this.closePending(ws, d, this.draining() ? CloseCode.TryAgainLater : CloseCode.InternalError, code);
          return;
        }
        this.plane.attach(d, workspaceId, shard);
      },
      (err: unknown) => {
        const e = toGatewayError(err, 'GW_UNAUTHORIZED');
        this.o.observer?.authFailed?.(e.code);
        this.o.log.info({ connId: d.id, err: e.describe() }, 'connection refused after upgrade');
        if (d.closed) return;
        this.closePending(ws, d, e.code === 'GW_AUTH_UNAVAILABLE' ? CloseCode.TryAgainLater : CloseCode.PolicyViolation, e.code === 'GW_AUTH_UNAVAILABLE' ? e.code : 'GW_UNAUTHORIZED');
      },
    );
  }

  /** Holds a frame of a connection still being verified; past PENDING_AUTH_BYTES the connection is closed. */
  holdPending(ws: Client, d: ClientData, msg: ArrayBuffer, isBinary: boolean): void {
    const pending = d.pendingAuth;
    if (pending === undefined) return;
    if (pending.bytes + msg.byteLength > PENDING_AUTH_BYTES) {
      this.closePending(ws, d, CloseCode.PolicyViolation, 'GW_TOO_LARGE');
      return;
    }
    // A copy: uWS reuses `msg` once this callback returns.
    pending.frames.push({ data: new Uint8Array(msg.slice(0)), binary: isBinary });
    pending.bytes += msg.byteLength;
  }

  private closePending(ws: Client, d: ClientData, code: number, reason: ErrorCode): void {
    d.closed = true;
    d.pendingAuth = undefined;
    ws.cork(() => ws.end(code, reasonFor(reason)));
  }
}
