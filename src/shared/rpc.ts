/**
 * Typed request/response over a MessagePort, for the control plane only (the
 * frame path has its own batched format). Plain postMessage rather than a
 * proxy library for two reasons: a call in flight must fail, not hang, when
 * the peer thread dies (`failAll`), and errors must keep their stable code
 * across the thread boundary (they travel as SerializedError).
 */
import type { MessagePort } from 'node:worker_threads';
import { GatewayError, deserializeError, serializeError } from './errors.js';
import type { ErrorCode } from './errors.js';
import type { ControlMessage, RpcResponseMessage } from './protocol.js';

export type MethodMap = Record<string, { params: unknown; result: unknown }>;
export type NoticeMap = Record<string, unknown>;

export type Handlers<M extends MethodMap> = {
  [K in keyof M]: (params: M[K]['params']) => Promise<M[K]['result']> | M[K]['result'];
};
export type NoticeHandlers<N extends NoticeMap> = { [K in keyof N]: (params: N[K]) => void };

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class RpcPeer<Local extends MethodMap, Remote extends MethodMap, LocalNotices extends NoticeMap, RemoteNotices extends NoticeMap> {
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private failure: GatewayError | undefined;

  constructor(
    private readonly port: MessagePort,
    private readonly handlers: Handlers<Local>,
    private readonly noticeHandlers: NoticeHandlers<LocalNotices>,
    private readonly onUnknown: (what: string) => void,
  ) {
    port.on('message', (msg: ControlMessage) => this.receive(msg));
  }

  /**
   * With `timeoutMs`, the call fails with `timeoutCode` (default
   * GW_SHARD_FAILED: the peer thread is not answering) when no answer came
   * by then; a late answer is dropped.
   */
  call<K extends keyof Remote & string>(method: K, params: Remote[K]['params'], o: { timeoutMs?: number; timeoutCode?: ErrorCode } = {}): Promise<Remote[K]['result']> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<Remote[K]['result']>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (): void => clearTimeout(timer);
      this.pending.set(id, {
        resolve: (v) => {
          done();
          resolve(v);
        },
        reject: (e) => {
          done();
          // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- passes on what failAll or the peer gave
          reject(e);
        },
      });
      if (o.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          if (!this.pending.delete(id)) return;
          reject(new GatewayError(o.timeoutCode ?? 'GW_SHARD_FAILED', `no answer to ${method} within ${o.timeoutMs} ms`));
        }, o.timeoutMs);
        timer.unref();
      }
      this.port.postMessage({ type: 'rpc/request', id, method, params });
    });
  }

  notify<K extends keyof RemoteNotices & string>(method: K, params: RemoteNotices[K]): void {
    if (this.failure !== undefined) return;
    this.port.postMessage({ type: 'rpc/notice', method, params });
  }

  /** Rejects every call in flight and every later one: the peer is gone. */
  failAll(code: ErrorCode, message: string): void {
    this.failure ??= new GatewayError(code, message);
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  get inFlight(): number {
    return this.pending.size;
  }

  close(): void {
    this.failAll('GW_CLOSED', 'control channel closed');
    this.port.close();
  }

  private receive(msg: ControlMessage): void {
    switch (msg.type) {
      case 'rpc/request':
        void this.serve(msg.id, msg.method, msg.params);
        return;
      case 'rpc/response': {
        const p = this.pending.get(msg.id);
        if (p === undefined) return;
        this.pending.delete(msg.id);
        if (msg.ok) p.resolve(msg.value);
        else p.reject(deserializeError(msg.error ?? { code: 'GW_INTERNAL', message: 'error without detail' }));
        return;
      }
      case 'rpc/notice': {
        const h = (this.noticeHandlers as Record<string, ((p: unknown) => void) | undefined>)[msg.method];
        if (h === undefined) this.onUnknown(`notice ${msg.method}`);
        else h(msg.params);
        return;
      }
      default:
        this.onUnknown(`message type ${String((msg as { type?: unknown }).type)}`);
    }
  }

  private async serve(id: number, method: string, params: unknown): Promise<void> {
    let reply: RpcResponseMessage;
    const h = (this.handlers as Record<string, ((p: unknown) => unknown) | undefined>)[method];
    if (h === undefined) {
      this.onUnknown(`method ${method}`);
      reply = { type: 'rpc/response', id, ok: false, error: { code: 'GW_INTERNAL', message: `unknown method ${method}` } };
    } else {
      try {
        reply = { type: 'rpc/response', id, ok: true, value: await h(params) };
      } catch (err) {
        reply = { type: 'rpc/response', id, ok: false, error: serializeError(err) };
      }
    }
    try {
      this.port.postMessage(reply);
    } catch (err) {
      // A result that cannot be cloned is a bug in this codebase: report it as an error reply.
      this.port.postMessage({ type: 'rpc/response', id, ok: false, error: serializeError(err) });
    }
  }
}
