/**
 * POST /api/turns on the public listener: a turn in a workspace without a
 * WebSocket, for bots, webhooks, schedulers and CI. The front reads the body
 * (bounded), authenticates the bearer token like an upgrade (the token's
 * workspace must be the body's), and hands the turn to the owning shard
 * (Supervisor.runTurn), which runs it over its own connection to the child.
 *
 * Answers: 200 `{threadId, turn}` with the completed turn and its items;
 * `{threadId, transport: {code, message}}` when it could not run or finish
 * (504 brokerTimeout, 503 when retrying later helps, 502 otherwise); 400,
 * 401, 403, 413 with `{error: {code, message}}` before anything runs.
 *
 * With `Accept: text/event-stream` the answer is a stream: one event per
 * notification of the turn (`event: <method>`, `data: <params>`), a comment
 * line every 15 s while quiet, and last `event: result` with what the JSON
 * form would have answered. The status is then 200 from the start.
 *
 * A client that goes away only stops its events; the turn runs on to its
 * end (or deadline) unless the request said `interruptOnDisconnect`.
 */
import { TIMED_OUT, within } from '../../shared/concurrency.js';
import type { Logger } from 'pino';
import { toGatewayError } from '../../shared/errors.js';
import type { TurnOutcome } from '../../shared/protocol.js';
import { publicError } from '../../shared/public-error.js';
import type { Authenticator } from '../auth/front-door.js';
import { bearerToken } from '../auth/front-door.js';
import { sendJson, statusLine } from './http-util.js';
import type { Supervisor } from '../supervisor/supervisor.js';
import { RETRY_LATER_CODES } from '../../shared/close-codes.js';
import { isTurnBodyError, parseTurnBody } from './turn-request.js';
import type { TurnApiOptions, TurnBody } from './turn-request.js';
import type { HttpResponse, TemplatedApp } from './uws.js';

export interface TurnObserver {
  /** Refused before it ran (400, 401, 403, 413, 503), by error code. */
  turnRefused?(code: string): void;
  turnStarted?(): void;
  /** `result` is the turn's status (completed, interrupted, failed) or the transport code. */
  turnFinished?(e: { ok: boolean; result: string; ms: number }): void;
}

export interface TurnApiContext {
  sup: Supervisor;
  auth: Authenticator;
  options: TurnApiOptions;
  log: Logger;
  observer?: TurnObserver;
  /** Why new turns are refused now (draining, shard down), or undefined. */
  refusal(workspaceId: string): { status: number; code: string; message: string } | undefined;
}

export const TURNS_PATH = '/api/turns';

/** The shard answers within the turn's deadline plus its interrupt grace; past this the front answers alone. */
const FRONT_SLACK_MS = 15_000;
const KEEPALIVE_MS = 15_000;
/** Events buffered for a client that does not read before its stream is cut (the turn runs on). */
const MAX_STREAM_BACKLOG = 16 * 1024 * 1024;

const RETRY_LATER = new Set<string>([...RETRY_LATER_CODES, 'GW_SHARD_FAILED']);

/** HTTP status of an outcome. */
export function turnStatus(outcome: TurnOutcome): number {
  if ('turn' in outcome) return 200;
  const code = outcome.transport.code;
  if (code === 'brokerTimeout') return 504;
  return RETRY_LATER.has(code) ? 503 : 502;
}

export function registerTurnApi(app: TemplatedApp, ctx: TurnApiContext): void {
  app.post(TURNS_PATH, (res, req) => {
    const token = bearerToken(req.getHeader('authorization'));
    const stream = req.getHeader('accept').includes('text/event-stream');
    const declared = Number(req.getHeader('content-length') || '0');
    const refuse = (status: number, code: string, message: string, headers: Record<string, string> = {}): void => {
      ctx.observer?.turnRefused?.(code);
      sendJson(res, status, { error: { code, message } }, headers);
    };
    if (token === undefined) {
      refuse(401, 'GW_UNAUTHORIZED', 'missing bearer token', { 'www-authenticate': 'Bearer' });
      return;
    }
    if (declared > ctx.options.maxBodyBytes) {
      refuse(413, 'GW_TOO_LARGE', `request body above ${ctx.options.maxBodyBytes} bytes`);
      return;
    }
    new TurnCall(res, ctx, token, stream).start();
  });
}

/** One request, from its first body byte to its last response byte. */
class TurnCall {
  private aborted = false;
  private finished = false;
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private clientGone: ((interrupt: boolean) => void) | undefined;
  private interruptOnDisconnect = false;
  private keepalive: NodeJS.Timeout | undefined;
  /** Bytes written since the socket last said it was writable. */
  private backlog = 0;
  private readonly t0 = performance.now();

  constructor(
    private readonly res: HttpResponse,
    private readonly ctx: TurnApiContext,
    private readonly token: string,
    private readonly stream: boolean,
  ) {}

  start(): void {
    this.res.onAborted(() => {
      this.aborted = true;
      this.stop();
      if (this.clientGone !== undefined) {
        this.ctx.log.info({ interrupt: this.interruptOnDisconnect }, 'HTTP turn client went away');
        this.clientGone(this.interruptOnDisconnect);
      }
    });
    this.res.onData((chunk, last) => {
      if (this.finished) return;
      this.size += chunk.byteLength;
      if (this.size > this.ctx.options.maxBodyBytes) {
        this.refuse(413, 'GW_TOO_LARGE', `request body above ${this.ctx.options.maxBodyBytes} bytes`);
        return;
      }
      // uWS reuses the chunk's memory after this callback.
      this.chunks.push(Buffer.from(chunk.slice(0)));
      if (last) void this.received(Buffer.concat(this.chunks));
    });
  }

  private async received(body: Buffer): Promise<void> {
    let workspaceId: string;
    try {
      const now = this.ctx.auth.verifyNow?.(this.token);
      workspaceId = (now ?? (await this.ctx.auth.verify(this.token))).workspaceId;
    } catch (err) {
      const e = toGatewayError(err, 'GW_UNAUTHORIZED');
      // Why a token failed goes to the log, as on the WebSocket path.
      this.ctx.log.info({ err: e.describe() }, 'HTTP turn refused: token');
      const p = publicError(e);
      if (e.code === 'GW_AUTH_UNAVAILABLE') this.refuse(503, p.code, p.message);
      else this.refuse(401, p.code, p.message, { 'www-authenticate': 'Bearer error="invalid_token"' });
      return;
    }
    if (this.aborted) return;
    const parsed = parseTurnBody(body, this.ctx.options);
    if (isTurnBodyError(parsed)) {
      this.refuse(400, parsed.code, parsed.message);
      return;
    }
    if (parsed.workspaceId !== workspaceId) {
      this.refuse(403, 'GW_FORBIDDEN', 'the bearer token is not for this workspaceId');
      return;
    }
    const refusal = this.ctx.refusal(workspaceId);
    if (refusal !== undefined) {
      this.refuse(refusal.status, refusal.code, refusal.message);
      return;
    }
    this.run(parsed);
  }

  private run(body: TurnBody): void {
    const { ctx } = this;
    this.interruptOnDisconnect = body.interruptOnDisconnect;
    ctx.observer?.turnStarted?.();
    ctx.log.info({ workspaceId: body.workspaceId, threadId: body.threadId, timeoutMs: body.timeoutMs, stream: this.stream }, 'HTTP turn requested');
    if (this.stream) this.openStream();
    let handle: ReturnType<Supervisor['runTurn']>;
    try {
      handle = ctx.sup.runTurn(
        { workspaceId: body.workspaceId, threadId: body.threadId, params: body.params, timeoutMs: body.timeoutMs },
        this.stream ? (method, params) => this.event(method, JSON.stringify(params)) : undefined,
      );
    } catch (err) {
      ctx.log.error({ workspaceId: body.workspaceId, err: toGatewayError(err).describe() }, 'HTTP turn could not run');
      this.done({ threadId: body.threadId ?? null, transport: publicError(err) });
      return;
    }
    this.clientGone = (interrupt) => handle.clientGone(interrupt);
    const deadlineMs = body.timeoutMs + FRONT_SLACK_MS;
    within(handle.outcome, deadlineMs)
      .then(
        (outcome): TurnOutcome =>
          outcome === TIMED_OUT ? { threadId: body.threadId ?? null, transport: { code: 'brokerTimeout', message: `no answer from the workspace's shard within ${deadlineMs} ms` } } : outcome,
        (err: unknown): TurnOutcome => {
          ctx.log.error({ workspaceId: body.workspaceId, err: toGatewayError(err).describe() }, 'HTTP turn failed');
          return { threadId: body.threadId ?? null, transport: publicError(err) };
        },
      )
      .then((outcome) => this.done(outcome), (err: unknown) => ctx.log.error({ err: toGatewayError(err).describe() }, 'HTTP turn answer failed'));
  }

  private done(outcome: TurnOutcome): void {
    const ms = performance.now() - this.t0;
    const ok = 'turn' in outcome;
    const status = ok ? outcome.turn.status : undefined;
    const result = ok ? (typeof status === 'string' ? status : 'unknown') : outcome.transport.code;
    this.ctx.observer?.turnFinished?.({ ok, result, ms });
    this.clientGone = undefined;
    if (this.aborted || this.finished) return;
    this.corked(() => {
      if (this.stream) {
        this.write(`event: result\ndata: ${JSON.stringify(outcome)}\n\n`);
        this.finish(() => this.res.end());
      } else {
        this.finish(() => sendJson(this.res, turnStatus(outcome), outcome));
      }
    });
  }

  // ---- the event stream ---------------------------------------------------------

  private openStream(): void {
    this.corked(() => {
      this.res.writeStatus(statusLine(200));
      this.res.writeHeader('content-type', 'text/event-stream; charset=utf-8');
      this.res.writeHeader('cache-control', 'no-store');
      // Proxies such as nginx buffer responses unless told not to.
      this.res.writeHeader('x-accel-buffering', 'no');
      this.write(': turn accepted\n\n');
    });
    this.res.onWritable(() => {
      this.backlog = 0;
      return true;
    });
    this.keepalive = setInterval(() => this.corked(() => this.write(': keepalive\n\n')), KEEPALIVE_MS);
    this.keepalive.unref();
  }

  private event(method: string, json: string): void {
    if (this.aborted || this.finished) return;
    this.corked(() => this.write(`event: ${method}\ndata: ${json}\n\n`));
  }

  /** Writes to the open stream; a client that does not read loses its stream, not the turn. */
  private write(text: string): void {
    if (this.aborted || this.finished) return;
    if (this.backlog > 0) this.backlog += Buffer.byteLength(text);
    if (this.backlog > MAX_STREAM_BACKLOG) {
      this.ctx.log.warn({ backlog: this.backlog }, 'HTTP turn client is not reading its stream; closing it (the turn goes on)');
      this.clientGone?.(false);
      this.clientGone = undefined;
      this.finish(() => this.res.close());
      return;
    }
    if (!this.res.write(text) && this.backlog === 0) this.backlog = Buffer.byteLength(text);
  }

  // ---- helpers --------------------------------------------------------------------

  private refuse(status: number, code: string, message: string, headers: Record<string, string> = {}): void {
    this.ctx.observer?.turnRefused?.(code);
    this.corked(() => this.finish(() => sendJson(this.res, status, { error: { code, message } }, headers)));
  }

  private finish(respond: () => void): void {
    if (this.aborted || this.finished) return;
    this.finished = true;
    this.stop();
    respond();
  }

  private stop(): void {
    clearInterval(this.keepalive);
    this.keepalive = undefined;
  }

  /** Outside a uWS callback every write must be corked. */
  private corked(f: () => void): void {
    if (this.aborted) return;
    this.res.cork(f);
  }
}
