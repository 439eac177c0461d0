/**
 * The front door: uWebSockets.js on the main thread. It authenticates each
 * upgrade, hashes the workspace to its shard and moves frames between client
 * sockets and that shard's data port. It never spawns, never touches a
 * workspace's disk, never tars: it routes.
 *
 * Flow control is by credit (frames.ts, Ack). Frames from a shard are acked
 * as soon as the client's socket takes them without backing up; while its
 * buffer is above `clientHighWaterBytes` the acks wait for it to drain below
 * `clientLowWaterBytes`, so the shard stops reading that child connection.
 * A client still behind after `slowClientTimeoutMs`, or whose buffer would
 * pass `clientMaxBufferedBytes`, is closed with 1008 GW_SLOW_CLIENT.
 *
 * Toward the shard, the shard acks a client's bytes only once the child's
 * socket has taken them, so what a child does not read stays counted here.
 * uWS 20.30 cannot stop reading a WebSocket (its WebSocket has no pause()),
 * so a client past a bound is closed rather than held: past
 * `maxUnackedToShardBytes` in flight with 1008 GW_SLOW_CHILD; and while the
 * bytes in flight over all connections would pass `maxBufferedBytes`, a
 * client with more than OVERLOAD_SHARE in flight with 1013 GW_OVERLOADED.
 * A client with nothing in flight may always send one frame.
 */
import type { Logger } from 'pino';
import { CloseCode } from '../../shared/close-codes.js';
import { GatewayError, toGatewayError } from '../../shared/errors.js';
import type { ErrorCode } from '../../shared/errors.js';
import { publicError, reasonFor } from '../../shared/public-error.js';
import { AckTally, FLAG_BINARY, FrameBatcher, RecordKind, ackPayload, decodeText, readAck, readBatch } from '../../shared/frames.js';
import type { Authenticator } from '../auth/front-door.js';
import { bearerToken } from '../auth/front-door.js';
import { ConnectionIds } from './connection-ids.js';
import { sendJson } from '../http/http-util.js';
import type { Supervisor } from '../supervisor/supervisor.js';
import { registerTurnApi } from '../http/turn-api.js';
import type { TurnObserver } from '../http/turn-api.js';
import type { TurnApiOptions } from '../http/turn-request.js';
import { closeApp, listen, uws } from '../http/uws.js';
import type { HttpRequest, HttpResponse, ListenSocket, SocketContext, TemplatedApp, UwsSocket } from '../http/uws.js';

export interface FrontLimits {
  maxFrameBytes: number;
  clientHighWaterBytes: number;
  clientLowWaterBytes: number;
  clientMaxBufferedBytes: number;
  slowClientTimeoutMs: number;
  maxUnackedToShardBytes: number;
  /**
   * Seconds without a frame before uWS closes a client; it pings the client
   * before that, so only a peer that stopped answering reaches it. 0 or
   * 8..960 (uWS aborts the process on anything else). Default 120.
   */
  idleTimeoutSeconds?: number;
  /** Client connections open (or being authenticated) at most; unset: no limit. */
  maxConnections?: number;
  /** Client bytes in flight toward the children (not yet taken by their sockets), over all connections; unset: no cap. */
  maxBufferedBytes?: number;
}

/** What the front holds now, for /metrics and the admin API. */
export interface FrontMemory {
  /** Client bytes sent toward the children and not yet taken by their sockets. */
  bufferedBytes: number;
  maxBufferedBytes: number | null;
  /** Bytes waiting in the sockets of clients that read slowly (those above the high-water mark). */
  toClientBufferedBytes: number;
  /** Clients closed with 1008 GW_SLOW_CHILD (their window full), so far. */
  slowChildCloses: number;
  /** Clients closed with 1013 GW_OVERLOADED (the gateway-wide cap), so far. */
  overloadCloses: number;
}

/**
 * In flight per client that the gateway-wide cap never refuses: JSON-RPC
 * requests of a client whose child reads are far below it.
 */
const OVERLOAD_SHARE = 1024 * 1024;

export const DEFAULT_FRONT_LIMITS: Omit<FrontLimits, 'maxFrameBytes'> = {
  clientHighWaterBytes: 1024 * 1024,
  clientLowWaterBytes: 256 * 1024,
  clientMaxBufferedBytes: 16 * 1024 * 1024,
  slowClientTimeoutMs: 30_000,
  maxUnackedToShardBytes: 16 * 1024 * 1024,
};

export interface FrontOptions {
  sup: Supervisor;
  auth: Authenticator;
  host: string;
  port: number;
  limits: FrontLimits;
  log: Logger;
  /** Extra HTTP routes (metrics, admin) registered before the catch-all. */
  routes?: (app: TemplatedApp) => void;
  /** Observes data-plane events (metrics). */
  observer?: FrontObserver;
  /** POST /api/turns (turns without a WebSocket); unset: not served. */
  turns?: { options: TurnApiOptions; observer?: TurnObserver };
  /** Tests only: the first connection id, to reach the u32 wrap quickly. */
  firstConnectionId?: number;
  /** More fields for the /readyz body (they do not change the status). */
  readiness?: () => Record<string, unknown>;
}

export interface FrontObserver {
  connectionOpened?(): void;
  connectionClosed?(): void;
  frame?(direction: 'in' | 'out', bytes: number): void;
  backpressure?(what: 'pause' | 'resume' | 'close'): void;
  authFailed?(code: string): void;
}

interface ClientData {
  id: number;
  workspaceId: string;
  shard: number;
  closed: boolean;
  /** The client socket is above its high-water mark; acks wait for its drain. */
  behind: boolean;
  behindSince: number;
  /** Bytes written to the client whose ack waits for the drain. */
  pendingAck: number;
  /** Bytes sent toward the shard and not yet acked by it. */
  toShard: number;
  /**
   * Set while the token is being verified after the upgrade (a remote
   * verifier's cache miss): the connection has no workspace or shard yet,
   * and its frames wait here, in order, up to PENDING_AUTH_BYTES.
   */
  pendingAuth: { token: string; frames: Array<{ data: Uint8Array; binary: boolean }>; bytes: number } | undefined;
}

/** Frames a client may send before its token is verified (codex sends one `initialize`). */
const PENDING_AUTH_BYTES = 1024 * 1024;

type Client = UwsSocket<ClientData>;

const WS_PATHS = ['/', '/codex-app/ws'];

export class Front {
  private readonly conns = new Map<number, Client>();
  private readonly behind = new Set<Client>();
  private readonly toShard: FrameBatcher[];
  private readonly acks: AckTally[];
  /** Shards without a live worker (dead, not yet replaced, or given up): their workspaces get 503. */
  private readonly downShards = new Set<number>();
  private readonly ids: ConnectionIds;
  private listenSocket: ListenSocket | undefined;
  private sweep: NodeJS.Timeout | undefined;
  private closedAll: (() => void) | undefined;
  /** Σ toShard over live connections. */
  private buffered = 0;
  private readonly maxBuffered: number;
  private slowChildCloses = 0;
  private overloadCloses = 0;
  draining = false;
  port = 0;

  private constructor(
    private readonly o: FrontOptions,
    private readonly app: TemplatedApp,
  ) {
    const sup = o.sup;
    this.ids = new ConnectionIds(o.firstConnectionId);
    this.maxBuffered = o.limits.maxBufferedBytes ?? Number.POSITIVE_INFINITY;
    this.acks = Array.from({ length: sup.shardCount }, () => new AckTally());
    this.toShard = Array.from({ length: sup.shardCount }, (_, i) => this.bind(i));
    sup.on('shard-died', (i: number) => this.shardLost(i));
    sup.on('shard-restarted', (i: number) => this.shardBack(i));
  }

  private bind(i: number): FrameBatcher {
    const port = this.o.sup.dataPort(i);
    port.on('message', (batch: ArrayBuffer) => this.fromShard(i, batch));
    return new FrameBatcher((batch) => port.postMessage(batch, [batch]));
  }

  /**
   * A shard worker died: its connections went with it, so their clients are
   * closed with 1011 at once, and its workspaces' upgrades get 503 until a
   * new worker answers (shardBack), or for good when it is given up.
   */
  private shardLost(i: number): void {
    this.downShards.add(i);
    for (const ws of [...this.conns.values()]) {
      const d = ws.getUserData();
      if (d.shard !== i || d.closed) continue;
      d.closed = true;
      ws.cork(() => ws.end(CloseCode.InternalError, 'GW_SHARD_FAILED: the workspace\'s shard failed; reconnect'));
    }
    this.acks[i] = new AckTally();
  }

  /** A new worker serves shard i: its new port is used from now on. */
  private shardBack(i: number): void {
    this.acks[i] = new AckTally();
    this.toShard[i] = this.bind(i);
    this.downShards.delete(i);
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
      upgrade: (res: HttpResponse, req: HttpRequest, ctx: SocketContext) => front.upgrade(res, req, ctx),
      open: (ws: Client) => front.opened(ws),
      message: (ws: Client, msg: ArrayBuffer, isBinary: boolean) => front.clientFrame(ws, msg, isBinary),
      drain: (ws: Client) => front.drained(ws),
      close: (ws: Client, code: number, msg: ArrayBuffer) => front.clientClosed(ws, code, msg),
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
          if (front.downShards.has(o.sup.shardFor(workspaceId))) return { status: 503, code: 'GW_SHARD_FAILED', message: 'the shard serving this workspace is down' };
          return undefined;
        },
      });
    }
    o.routes?.(app);
    app.any('/*', (res) => sendJson(res, 404, { error: { code: 'GW_NOT_FOUND', message: 'no such route' } }));
    const { socket, port } = await listen(app, o.host, o.port);
    front.listenSocket = socket;
    front.port = port;
    front.sweep = setInterval(() => front.closeStalled(), 1000);
    front.sweep.unref();
    return front;
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  // ---- upgrade and auth ------------------------------------------------------

  private upgrade(res: HttpResponse, req: HttpRequest, ctx: SocketContext): void {
    // HttpRequest dies with this callback: copy what is needed first.
    const key = req.getHeader('sec-websocket-key');
    const protocol = req.getHeader('sec-websocket-protocol').split(',')[0]?.trim() ?? '';
    const extensions = req.getHeader('sec-websocket-extensions');
    const token = bearerToken(req.getHeader('authorization'));
    const peer = Buffer.from(res.getRemoteAddressAsText()).toString('latin1');
    if (this.draining) {
      sendJson(res, 503, { error: { code: 'GW_CLOSED', message: 'gateway is shutting down' } });
      return;
    }
    const max = this.o.limits.maxConnections;
    if (max !== undefined && this.conns.size >= max) {
      // Before auth: a flood of connections costs a header check each, no verification.
      this.o.log.warn({ peer, connections: this.conns.size, max }, 'upgrade refused: connection limit');
      sendJson(res, 503, { error: publicError(new GatewayError('GW_TOO_MANY_CONNECTIONS')) }, { 'retry-after': '5' });
      return;
    }
    if (token === undefined) {
      this.o.observer?.authFailed?.('GW_UNAUTHORIZED');
      sendJson(res, 401, { error: { code: 'GW_UNAUTHORIZED', message: 'missing bearer token' } }, { 'www-authenticate': 'Bearer' });
      return;
    }
    // Every upgrade happens inside this callback (see below).
    const upgrade = (data: ClientData): void => void res.upgrade(data, key, protocol, extensions, ctx);
    let now: { workspaceId: string } | undefined;
    try {
      now = this.o.auth.verifyNow?.(token);
    } catch (err) {
      this.refuse(res, err, (f) => f(), peer);
      return;
    }
    if (now !== undefined) {
      this.accept(res, now.workspaceId, (f) => f(), upgrade);
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
    const data = this.newClient('', -1);
    data.pendingAuth = { token, frames: [], bytes: 0 };
    upgrade(data);
  }

  private newClient(workspaceId: string, shard: number): ClientData {
    // The id joins `conns` in opened(), which uWS calls from within upgrade(),
    // so no other id is taken in between.
    return { id: this.ids.take((id) => this.conns.has(id)), workspaceId, shard, closed: false, behind: false, behindSince: 0, pendingAck: 0, toShard: 0, pendingAuth: undefined };
  }

  /** Verifies the token of a connection upgraded before its answer was known. */
  private verifyPending(ws: Client, d: ClientData, token: string): void {
    this.o.auth.verify(token).then(
      ({ workspaceId }) => {
        if (d.closed) return;
        const shard = this.o.sup.shardFor(workspaceId);
        if (this.draining || this.downShards.has(shard)) {
          const code = this.draining ? 'GW_CLOSED' : 'GW_SHARD_FAILED';
          this.closePending(ws, d, this.draining ? CloseCode.TryAgainLater : CloseCode.InternalError, code);
          return;
        }
        const pending = d.pendingAuth;
        d.pendingAuth = undefined;
        d.workspaceId = workspaceId;
        d.shard = shard;
        const out = this.toShard[shard] as FrameBatcher;
        out.push(RecordKind.Open, 0, 0, d.id, workspaceId);
        for (const f of pending?.frames ?? []) {
          d.toShard += f.data.byteLength;
          this.buffered += f.data.byteLength;
          out.push(RecordKind.Frame, f.binary ? FLAG_BINARY : 0, 0, d.id, f.data);
        }
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

  private closePending(ws: Client, d: ClientData, code: number, reason: ErrorCode): void {
    d.closed = true;
    d.pendingAuth = undefined;
    ws.cork(() => ws.end(code, reasonFor(reason)));
  }

  /** Upgrades an authenticated request, unless the gateway drains or the workspace's shard is down. */
  private accept(res: HttpResponse, workspaceId: string, write: (f: () => void) => void, upgrade: (data: ClientData) => void): void {
    if (this.draining) {
      write(() => sendJson(res, 503, { error: { code: 'GW_CLOSED', message: 'gateway is shutting down' } }));
      return;
    }
    const shard = this.o.sup.shardFor(workspaceId);
    if (this.downShards.has(shard)) {
      write(() => sendJson(res, 503, { error: { code: 'GW_SHARD_FAILED', message: 'the shard serving this workspace is down' } }));
      return;
    }
    const data = this.newClient(workspaceId, shard);
    write(() => upgrade(data));
  }

  /**
   * The client learns the code and its fixed message; why exactly (expired,
   * wrong key, the verifier's status) is logged, with the peer's address.
   */
  private refuse(res: HttpResponse, err: unknown, write: (f: () => void) => void, peer: string): void {
    const e = toGatewayError(err, 'GW_UNAUTHORIZED');
    this.o.observer?.authFailed?.(e.code);
    const status = e.code === 'GW_AUTH_UNAVAILABLE' ? 503 : 401;
    this.o.log.info({ peer, status, err: e.describe() }, 'upgrade refused');
    write(() => sendJson(res, status, { error: publicError(e) }, status === 401 ? { 'www-authenticate': 'Bearer error="invalid_token"' } : {}));
  }

  // ---- client → shard ----------------------------------------------------------

  private opened(ws: Client): void {
    const d = ws.getUserData();
    this.conns.set(d.id, ws);
    this.o.observer?.connectionOpened?.();
    if (d.pendingAuth !== undefined) {
      this.verifyPending(ws, d, d.pendingAuth.token);
      d.pendingAuth.token = '';
      return;
    }
    (this.toShard[d.shard] as FrameBatcher).push(RecordKind.Open, 0, 0, d.id, d.workspaceId);
  }

  private clientFrame(ws: Client, msg: ArrayBuffer, isBinary: boolean): void {
    const d = ws.getUserData();
    if (d.closed) return;
    if (msg.byteLength > this.o.limits.maxFrameBytes) {
      d.closed = true;
      ws.end(CloseCode.MessageTooBig, `GW_TOO_LARGE: message above the ${this.o.limits.maxFrameBytes}-byte limit`);
      return;
    }
    const pending = d.pendingAuth;
    if (pending !== undefined) {
      if (pending.bytes + msg.byteLength > PENDING_AUTH_BYTES) {
        this.closePending(ws, d, CloseCode.PolicyViolation, 'GW_TOO_LARGE');
        return;
      }
      // A copy: uWS reuses `msg` once this callback returns.
      pending.frames.push({ data: new Uint8Array(msg.slice(0)), binary: isBinary });
      pending.bytes += msg.byteLength;
      return;
    }
    if (!this.admit(ws, d, msg.byteLength)) return;
    d.toShard += msg.byteLength;
    this.buffered += msg.byteLength;
    // The batcher copies: uWS reuses `msg` once this callback returns.
    (this.toShard[d.shard] as FrameBatcher).push(RecordKind.Frame, isBinary ? FLAG_BINARY : 0, 0, d.id, new Uint8Array(msg));
    this.o.observer?.frame?.('in', msg.byteLength);
  }

  /**
   * Whether a client may add `bytes` in flight; otherwise it is closed. A
   * client with nothing in flight may always send one frame, and one with
   * less than OVERLOAD_SHARE in flight is not refused for the cap, so clients
   * of children that read keep working while others flood.
   */
  private admit(ws: Client, d: ClientData, bytes: number): boolean {
    if (d.toShard === 0) return true;
    const after = d.toShard + bytes;
    if (after > this.o.limits.maxUnackedToShardBytes) {
      this.slowChildCloses++;
      this.closeBehind(ws, d, CloseCode.PolicyViolation, reasonFor('GW_SLOW_CHILD'), 'child not taking this client\'s frames');
      return false;
    }
    if (this.buffered + bytes > this.maxBuffered && after > OVERLOAD_SHARE) {
      this.overloadCloses++;
      this.closeBehind(ws, d, CloseCode.TryAgainLater, reasonFor('GW_OVERLOADED'), 'gateway-wide buffered-bytes cap');
      return false;
    }
    return true;
  }

  /** A connection's in-flight bytes leave the gateway-wide count (acked, or the client is gone). */
  private unbuffer(d: ClientData, bytes: number): void {
    d.toShard -= bytes;
    this.buffered -= bytes;
  }

  memory(): FrontMemory {
    let toClient = 0;
    for (const ws of this.behind) toClient += ws.getBufferedAmount();
    return {
      bufferedBytes: this.buffered,
      maxBufferedBytes: Number.isFinite(this.maxBuffered) ? this.maxBuffered : null,
      toClientBufferedBytes: toClient,
      slowChildCloses: this.slowChildCloses,
      overloadCloses: this.overloadCloses,
    };
  }

  private clientClosed(ws: Client, code: number, _msg: ArrayBuffer): void {
    const d = ws.getUserData();
    d.closed = true;
    this.conns.delete(d.id);
    this.behind.delete(ws);
    this.unbuffer(d, d.toShard);
    this.o.observer?.connectionClosed?.();
    // A connection still without a workspace never reached a shard.
    if (d.shard >= 0) (this.toShard[d.shard] as FrameBatcher).push(RecordKind.Close, 0, code, d.id);
    d.pendingAuth = undefined;
    if (this.conns.size === 0) this.closedAll?.();
  }

  private drained(ws: Client): void {
    const d = ws.getUserData();
    if (d.behind && ws.getBufferedAmount() <= this.o.limits.clientLowWaterBytes) {
      d.behind = false;
      this.behind.delete(ws);
      this.o.observer?.backpressure?.('resume');
      (this.toShard[d.shard] as FrameBatcher).push(RecordKind.Ack, 0, 0, d.id, ackPayload(d.pendingAck));
      d.pendingAck = 0;
    }
  }

  // ---- shard → client ------------------------------------------------------------

  private fromShard(shard: number, batch: ArrayBuffer): void {
    try {
      readBatch(batch, this.onRecord);
    } catch (err) {
      this.o.log.error({ err: toGatewayError(err).describe() }, 'bad frame batch from shard');
    }
    (this.acks[shard] as AckTally).flushTo(this.toShard[shard] as FrameBatcher);
  }

  private readonly onRecord = (kind: RecordKind, flags: number, code: number, id: number, payload: Uint8Array): void => {
    const ws = this.conns.get(id);
    if (ws === undefined) return;
    const d = ws.getUserData();
    if (d.closed) return;
    if (kind === RecordKind.Frame) {
      this.toClient(ws, d, payload, (flags & FLAG_BINARY) !== 0);
    } else if (kind === RecordKind.Ack) {
      this.unbuffer(d, Math.min(d.toShard, readAck(payload)));
    } else if (kind === RecordKind.Close) {
      d.closed = true;
      ws.cork(() => ws.end(code, decodeText(payload)));
    }
  };

  private toClient(ws: Client, d: ClientData, payload: Uint8Array, binary: boolean): void {
    const limits = this.o.limits;
    if (ws.getBufferedAmount() + payload.byteLength > limits.clientMaxBufferedBytes + limits.maxFrameBytes) {
      this.closeBehind(ws, d, CloseCode.PolicyViolation, 'GW_SLOW_CLIENT: client is not reading fast enough', 'buffer limit');
      return;
    }
    ws.cork(() => ws.send(payload, binary));
    this.o.observer?.frame?.('out', payload.byteLength);
    if (!d.behind && ws.getBufferedAmount() <= limits.clientHighWaterBytes) {
      (this.acks[d.shard] as AckTally).add(d.id, payload.byteLength);
      return;
    }
    d.pendingAck += payload.byteLength;
    if (!d.behind) {
      d.behind = true;
      d.behindSince = Date.now();
      this.behind.add(ws);
      this.o.observer?.backpressure?.('pause');
    }
  }

  private closeBehind(ws: Client, d: ClientData, code: number, reason: string, why: string): void {
    if (d.closed) return;
    d.closed = true;
    this.o.observer?.backpressure?.('close');
    this.o.log.warn({ workspaceId: d.workspaceId, connId: d.id, why, buffered: ws.getBufferedAmount() }, 'closing connection that fell behind');
    ws.cork(() => ws.end(code, reason));
  }

  private closeStalled(): void {
    const limit = Date.now() - this.o.limits.slowClientTimeoutMs;
    for (const ws of this.behind) {
      const d = ws.getUserData();
      if (d.behindSince < limit) this.closeBehind(ws, d, CloseCode.PolicyViolation, 'GW_SLOW_CLIENT: client is not reading fast enough', `behind for more than ${this.o.limits.slowClientTimeoutMs} ms`);
    }
  }

  // ---- shutdown -------------------------------------------------------------------

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
    if (this.conns.size === 0) return;
    const gone = new Promise<void>((resolve) => (this.closedAll = resolve));
    for (const ws of [...this.conns.values()]) {
      const d = ws.getUserData();
      if (d.closed) continue;
      d.closed = true;
      ws.cork(() => ws.end(code, reason));
    }
    for (const b of this.toShard) b.flush();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([gone, new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
  }

  close(): void {
    this.stopAccepting();
    clearInterval(this.sweep);
    for (const ws of [...this.conns.values()]) ws.close();
    for (const b of this.toShard) b.flush();
    closeApp(this.app);
  }
}
