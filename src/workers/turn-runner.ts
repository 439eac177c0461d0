/**
 * Runs HTTP turns (POST /api/turns) on the shard that owns the workspace:
 * ensure the child, open the shard's own connection to it (as ChildProxy
 * does for clients), `initialize`, `thread/start` or `thread/resume`,
 * `turn/start`, then collect the turn's notifications until
 * `turn/completed`. Approval requests codex pushes meanwhile are answered by
 * the `approvals.headless` policy; other requests that need a person are
 * refused, so a turn never waits on an answer that cannot come.
 *
 * Every step runs against the request's deadline. Past it the turn is
 * interrupted (`turn/interrupt`, then a short grace for `turn/completed`)
 * and the answer is the transport code `brokerTimeout`. An HTTP client that
 * goes away only stops the events, unless it asked for an interrupt.
 */
import type { Logger } from 'pino';
import { within } from '../shared/concurrency.js';
import { toGatewayError } from '../shared/errors.js';
import { publicError } from '../shared/public-error.js';
import type { ApprovalPolicies, ChildInfo, TurnOutcome, TurnRequest, TurnTransportError } from '../shared/protocol.js';
import { AppServerConnection, AppServerRpcError } from './app-server-connection.js';
import type { ServerRequestMessage } from './app-server-connection.js';
import { approvalReply, headlessRefusal, isApprovalRequest } from './approval-policy.js';
import type { GoneReason, WorkspaceTable } from './workspaces.js';

export interface TurnRunnerHooks {
  event(turnRequestId: number, method: string, params: unknown): void;
  approvalAnswered(workspaceId: string, method: string, decision: string): void;
}

/** Time a turn gets to end after `turn/interrupt`, and a closed connection to learn whether its child died. */
const GRACE_MS = 5000;
const CHILD_GONE_WAIT_MS = 1000;
const CLIENT_NAME = 'codex-app-gateway-turns';

type Abort = { why: 'deadline' } | { why: 'closed' } | { why: 'gone'; reason: GoneReason };

interface Run {
  req: TurnRequest;
  deadline: number;
  streaming: boolean;
  interruptOnDetach: boolean;
  generation: string | undefined;
  conn: AppServerConnection | undefined;
  threadId: string | null;
  turnId: string | null;
  /** Notifications of the thread that came before turn/start answered. */
  early: Array<{ method: string; params: unknown }>;
  items: unknown[];
  completedTurn: Record<string, unknown> | undefined;
  onCompleted: (() => void) | undefined;
  gone: GoneReason | undefined;
  onGone: (() => void) | undefined;
  abort: (a: Abort) => void;
  aborted: Promise<Abort>;
}

class Aborted extends Error {
  constructor(readonly abort: Abort) {
    super(abort.why);
  }
}

export class TurnRunner {
  private readonly runs = new Map<number, Run>();

  constructor(
    private readonly table: WorkspaceTable,
    private readonly approvals: ApprovalPolicies,
    private readonly maxFrameBytes: number,
    private readonly hooks: TurnRunnerHooks,
    private readonly log: Logger,
  ) {}

  get activeCount(): number {
    return this.runs.size;
  }

  async run(req: TurnRequest): Promise<TurnOutcome> {
    let abort!: (a: Abort) => void;
    const aborted = new Promise<Abort>((resolve) => (abort = resolve));
    const run: Run = {
      req,
      deadline: Date.now() + req.timeoutMs,
      streaming: req.stream,
      interruptOnDetach: false,
      generation: undefined,
      conn: undefined,
      threadId: req.threadId ?? null,
      turnId: null,
      early: [],
      items: [],
      completedTurn: undefined,
      onCompleted: undefined,
      gone: undefined,
      onGone: undefined,
      abort,
      aborted,
    };
    this.runs.set(req.turnRequestId, run);
    const timer = setTimeout(() => abort({ why: 'deadline' }), req.timeoutMs);
    try {
      return await this.execute(run);
    } catch (err) {
      return await this.failed(run, err);
    } finally {
      clearTimeout(timer);
      run.conn?.close();
      if (run.generation !== undefined) this.table.detachClient(req.workspaceId, run.generation);
      this.runs.delete(req.turnRequestId);
    }
  }

  /** The HTTP client went away: no more events; interrupt the turn if it asked to. */
  clientGone(turnRequestId: number, interrupt: boolean): void {
    const run = this.runs.get(turnRequestId);
    if (run === undefined) return;
    run.streaming = false;
    if (!interrupt) return;
    this.log.info({ workspaceId: run.req.workspaceId, threadId: run.threadId, turnId: run.turnId }, 'HTTP turn client gone; interrupting the turn as it asked');
    if (run.turnId !== null) this.interrupt(run);
    else run.interruptOnDetach = true;
  }

  /** The child of `generation` is going away: its turns end now. */
  childGone(workspaceId: string, generation: string, reason: GoneReason): void {
    for (const run of this.runs.values()) {
      if (run.req.workspaceId !== workspaceId || run.generation !== generation) continue;
      run.gone = reason;
      run.onGone?.();
      run.abort({ why: 'gone', reason });
    }
  }

  // ---- the steps ---------------------------------------------------------------

  private left(run: Run): number {
    return Math.max(1, run.deadline - Date.now());
  }

  /** `p`, unless the run is aborted first (deadline, child gone, connection closed). */
  private async step<T>(run: Run, p: Promise<T>): Promise<T> {
    const a = run.aborted.then((x) => {
      throw new Aborted(x);
    });
    // Whichever loses must not become an unhandled rejection.
    p.catch(() => {});
    a.catch(() => {});
    return Promise.race([p, a]);
  }

  private async execute(run: Run): Promise<TurnOutcome> {
    const { workspaceId } = run.req;
    const info = await this.attach(run);
    const conn = await this.step(
      run,
      AppServerConnection.open(info.wsUrl, info.wsToken, this.maxFrameBytes, this.left(run), {
        frame: () => this.table.touch(workspaceId),
        notification: (method, params) => this.notification(run, method, params),
        serverRequest: (r) => this.serverRequest(run, r),
      }),
    );
    run.conn = conn;
    void conn.closed.then(() => run.abort({ why: 'closed' }));
    await this.step(run, conn.request('initialize', { clientInfo: { name: CLIENT_NAME, title: null, version: '1' }, capabilities: null }, this.left(run)));
    conn.notify('initialized');
    const thread =
      run.threadId === null
        ? await this.step(run, conn.request<{ thread: { id: string } }>('thread/start', {}, this.left(run)))
        : await this.step(run, conn.request<{ thread: { id: string } }>('thread/resume', { threadId: run.threadId, excludeTurns: true }, this.left(run)));
    run.threadId = thread.thread.id;
    const completed = new Promise<void>((resolve) => (run.onCompleted = resolve));
    const started = await this.step(run, conn.request<{ turn: { id: string } }>('turn/start', { ...run.req.params, threadId: run.threadId }, this.left(run)));
    run.turnId = started.turn.id;
    this.log.info({ workspaceId, threadId: run.threadId, turnId: run.turnId, timeoutMs: run.req.timeoutMs }, 'HTTP turn started');
    for (const n of run.early.splice(0)) this.notification(run, n.method, n.params);
    if (run.interruptOnDetach) this.interrupt(run);
    await this.step(run, completed);
    const turn = run.completedTurn ?? {};
    const items = Array.isArray(turn.items) && turn.items.length > 0 ? turn.items : run.items;
    return { threadId: run.threadId, turn: { ...turn, items } };
  }

  /** A running child of the workspace, counted as a client so the reaper leaves it alone. */
  private async attach(run: Run): Promise<ChildInfo> {
    const { workspaceId } = run.req;
    for (let attempt = 1; ; attempt++) {
      const info = await this.step(run, this.table.ensure(workspaceId, 0));
      if (this.table.attachClient(workspaceId, info.generation)) {
        run.generation = info.generation;
        return info;
      }
      // The child went away between ensure and now: start over once, as ChildProxy does.
      if (attempt > 1) throw new AppServerRpcError('ensure', { rpcCode: undefined, message: 'codex app-server exited before the turn could start', kind: 'closed' });
    }
  }

  private notification(run: Run, method: string, params: unknown): void {
    const p = params as { threadId?: unknown; turnId?: unknown; turn?: { id?: unknown }; item?: unknown } | null;
    if (run.threadId === null || p?.threadId !== run.threadId) return;
    if (run.turnId === null) {
      run.early.push({ method, params });
      return;
    }
    const turnId = p.turnId ?? p.turn?.id;
    if (turnId !== undefined && turnId !== run.turnId) return;
    if (method === 'item/completed' && p.item !== undefined) run.items.push(p.item);
    if (run.streaming) this.hooks.event(run.req.turnRequestId, method, params);
    if (method === 'turn/completed') {
      run.completedTurn = p.turn ?? {};
      run.onCompleted?.();
    }
  }

  private serverRequest(run: Run, r: ServerRequestMessage): void {
    const conn = run.conn;
    if (conn === undefined) return;
    const { workspaceId } = run.req;
    if (isApprovalRequest(r.method)) {
      const decision = this.approvals.headless;
      conn.answer(r.id, { result: approvalReply(r.method, r.params, decision) });
      this.log.info({ workspaceId, threadId: run.threadId, turnId: run.turnId, method: r.method, decision, policy: 'approvals.headless' }, 'approval request answered by policy');
      this.hooks.approvalAnswered(workspaceId, r.method, decision);
      if (run.streaming) this.hooks.event(run.req.turnRequestId, 'gateway/approvalAnswered', { threadId: run.threadId, turnId: run.turnId, method: r.method, decision, request: r.params });
      return;
    }
    this.log.warn({ workspaceId, threadId: run.threadId, method: r.method }, 'request that needs a person refused in an HTTP turn');
    conn.answer(r.id, headlessRefusal(r.method));
  }

  private interrupt(run: Run): void {
    if (run.conn === undefined || run.threadId === null || run.turnId === null) return;
    run.conn.request('turn/interrupt', { threadId: run.threadId, turnId: run.turnId }, GRACE_MS).catch((err: unknown) => {
      this.log.warn({ workspaceId: run.req.workspaceId, turnId: run.turnId, err: (err as Error).message }, 'turn/interrupt failed');
    });
  }

  // ---- failures --------------------------------------------------------------------

  private async failed(run: Run, err: unknown): Promise<TurnOutcome> {
    const transport = await this.transportOf(run, err);
    const log = transport.code === 'brokerTimeout' ? this.log.warn.bind(this.log) : this.log.error.bind(this.log);
    log({ workspaceId: run.req.workspaceId, threadId: run.threadId, turnId: run.turnId, code: transport.code, reason: transport.message }, 'HTTP turn did not complete');
    return { threadId: run.threadId, transport, ...(run.turnId === null ? {} : { turnId: run.turnId }) };
  }

  private async transportOf(run: Run, err: unknown): Promise<TurnTransportError> {
    if (err instanceof Aborted) {
      const a = err.abort;
      if (a.why === 'deadline') return this.timedOut(run);
      if (a.why === 'gone') return this.goneError(a.reason);
      return this.closedError(run);
    }
    if (err instanceof AppServerRpcError) {
      const f = err.failure;
      if (f.kind === 'rpc') return { code: 'codexRPCError', message: err.message, ...(f.rpcCode === undefined ? {} : { rpcCode: f.rpcCode }) };
      if (f.kind === 'timeout') return this.timedOut(run);
      if (run.gone !== undefined) return this.goneError(run.gone);
      if (run.conn === undefined) {
        this.log.error({ workspaceId: run.req.workspaceId, err: f.message }, 'HTTP turn could not connect to codex app-server');
        return { code: 'wsDisconnect', message: 'could not connect to codex app-server' };
      }
      return this.closedError(run);
    }
    // A start that failed keeps its own code (GW_SPAWN_EXITED, GW_CAPACITY, …)
    // with the code's fixed message: its own message may carry codex's stderr
    // or host paths, which only the log gets.
    const e = toGatewayError(err);
    this.log.error({ workspaceId: run.req.workspaceId, err: e.describe() }, 'HTTP turn could not start');
    return publicError(e);
  }

  /** Past the deadline: interrupt a started turn and give it a moment to end. */
  private async timedOut(run: Run): Promise<TurnTransportError> {
    const message = `the turn did not complete within ${run.req.timeoutMs} ms`;
    if (run.turnId === null || run.conn?.isOpen !== true) return { code: 'brokerTimeout', message };
    const ended = new Promise<void>((resolve) => (run.onCompleted = resolve));
    if (run.completedTurn !== undefined) return { code: 'brokerTimeout', message };
    this.interrupt(run);
    const outcome = await within(Promise.race([ended.then(() => 'ended' as const), run.conn.closed.then(() => 'closed' as const)]), GRACE_MS);
    return { code: 'brokerTimeout', message: outcome === 'ended' ? `${message}; interrupted` : `${message}; interrupt not confirmed` };
  }

  /** The connection closed: a child that died says subprocessCrash, anything else wsDisconnect. */
  private async closedError(run: Run): Promise<TurnTransportError> {
    if (run.gone === undefined) {
      // The socket often closes before the shard learns that the process exited.
      await within(new Promise<void>((resolve) => (run.onGone = resolve)), CHILD_GONE_WAIT_MS);
    }
    if (run.gone !== undefined) return this.goneError(run.gone);
    return { code: 'wsDisconnect', message: 'the connection to codex app-server closed during the turn' };
  }

  private goneError(reason: GoneReason): TurnTransportError {
    if (reason === 'crash') return { code: 'subprocessCrash', message: 'codex app-server exited during the turn' };
    return { code: 'wsDisconnect', message: `the workspace's codex app-server was stopped during the turn (${reason})` };
  }
}
