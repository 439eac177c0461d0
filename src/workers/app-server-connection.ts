/**
 * The shard's own JSON-RPC connection to a child, for turns that no client
 * connection carries (POST /api/turns). Wire format of codex app-server
 * 0.169: JSON text frames without a `jsonrpc` field; requests `{id, method,
 * params}`, answers `{id, result}` or `{id, error: {code, message}}`,
 * notifications `{method, params}`; the server sends requests too
 * (approvals), which must be answered with the same id.
 *
 * Every request has a deadline; the connection closing fails every request
 * in flight. Nothing here waits without a bound.
 */
import WebSocket from 'ws';

export interface RpcFailure {
  /** JSON-RPC error code, or undefined when the connection failed or the deadline passed. */
  rpcCode: number | undefined;
  message: string;
  kind: 'rpc' | 'timeout' | 'closed';
}

export class AppServerRpcError extends Error {
  constructor(
    readonly method: string,
    readonly failure: RpcFailure,
  ) {
    super(`${method}: ${failure.message}`);
    this.name = 'AppServerRpcError';
  }
}

export interface ServerRequestMessage {
  id: number | string;
  method: string;
  params: unknown;
}

export interface ConnectionHandlers {
  notification(method: string, params: unknown): void;
  /** Must answer (connection.answer) or the child waits. */
  serverRequest(req: ServerRequestMessage): void;
  /** Any frame arrived (activity, for the idle reaper). */
  frame(): void;
}

interface Pending {
  method: string;
  resolve: (v: unknown) => void;
  reject: (e: AppServerRpcError) => void;
  timer: NodeJS.Timeout;
}

export class AppServerConnection {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closedWith: { code: number; reason: string } | undefined;
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(
    private readonly ws: WebSocket,
    private readonly handlers: ConnectionHandlers,
  ) {
    this.closed = new Promise((resolve) => {
      ws.on('close', (code: number, reason: Buffer) => {
        this.closedWith = { code, reason: reason.toString() };
        for (const [id, p] of this.pending) {
          clearTimeout(p.timer);
          this.pending.delete(id);
          p.reject(new AppServerRpcError(p.method, { rpcCode: undefined, message: `connection closed (${code})`, kind: 'closed' }));
        }
        resolve(this.closedWith);
      });
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onFrame(data, isBinary));
  }

  /** Connects with the child's capability secret; rejects after `timeoutMs` or on refusal. */
  static open(url: string, token: string, maxPayload: number, timeoutMs: number, handlers: ConnectionHandlers): Promise<AppServerConnection> {
    // No Origin header: app-server answers 403 to upgrades that carry one.
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false, maxPayload, handshakeTimeout: Math.max(1, timeoutMs) });
    return new Promise((resolve, reject) => {
      const fail = (why: string): void => {
        ws.terminate();
        reject(new AppServerRpcError('connect', { rpcCode: undefined, message: why, kind: 'closed' }));
      };
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        fail(`upgrade refused with HTTP ${res.statusCode ?? 0}`);
      });
      ws.on('error', (err) => fail(err.message));
      ws.once('open', () => resolve(new AppServerConnection(ws, handlers)));
    });
  }

  get isOpen(): boolean {
    return this.closedWith === undefined && this.ws.readyState === WebSocket.OPEN;
  }

  request<T>(method: string, params: unknown, timeoutMs: number): Promise<T> {
    if (!this.isOpen) return Promise.reject(new AppServerRpcError(method, { rpcCode: undefined, message: 'connection closed', kind: 'closed' }));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new AppServerRpcError(method, { rpcCode: undefined, message: `no answer within ${timeoutMs} ms`, kind: 'timeout' }));
      }, Math.max(1, timeoutMs));
      this.pending.set(id, { method, resolve: resolve as (v: unknown) => void, reject, timer });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  notify(method: string, params?: unknown): void {
    if (this.isOpen) this.ws.send(JSON.stringify(params === undefined ? { method } : { method, params }));
  }

  answer(id: number | string, reply: { result: unknown } | { error: { code: number; message: string } }): void {
    if (this.isOpen) this.ws.send(JSON.stringify({ id, ...reply }));
  }

  close(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    else if (this.ws.readyState === WebSocket.CONNECTING) this.ws.terminate();
  }

  private onFrame(data: Buffer, isBinary: boolean): void {
    this.handlers.frame();
    if (isBinary) return;
    let msg: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(data.toString('utf8'));
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return;
      msg = parsed as Record<string, unknown>;
    } catch {
      return;
    }
    const hasId = typeof msg.id === 'number' || typeof msg.id === 'string';
    if (hasId && typeof msg.method === 'string') {
      this.handlers.serverRequest({ id: msg.id as number | string, method: msg.method, params: msg.params });
      return;
    }
    if (hasId) {
      const p = this.pending.get(msg.id as number);
      if (p === undefined) return;
      this.pending.delete(msg.id as number);
      clearTimeout(p.timer);
      const err = msg.error as { code?: unknown; message?: unknown } | undefined;
      if (err !== undefined && err !== null) {
        p.reject(new AppServerRpcError(p.method, { rpcCode: typeof err.code === 'number' ? err.code : undefined, message: typeof err.message === 'string' ? err.message : 'error', kind: 'rpc' }));
      } else {
        p.resolve(msg.result);
      }
      return;
    }
    if (typeof msg.method === 'string') this.handlers.notification(msg.method, msg.params);
  }
}
