/**
 * The shard's half of the data plane. For each client connection the front
 * thread reports, it ensures the workspace's child, opens a WebSocket to it
 * with the capability secret, and moves frames both ways in order.
 *
 * Memory stays bounded both ways:
 * - toward the client: at most `windowBytes` per connection are sent to the
 *   front and not yet acked (the front acks what the client socket took
 *   without backing up); past it the child connection is paused, which is
 *   TCP backpressure on the child, until acks bring it under half.
 * - toward the child: a client frame is acked to the front only once the
 *   child connection's socket has taken it (ws `bufferedAmount` back down,
 *   seen after each send and in its write callback), never on receipt. So
 *   what a child does not read stays counted in the front's per-connection
 *   window and gateway-wide cap, which close the client past them (1008
 *   GW_SLOW_CHILD, 1013 GW_OVERLOADED): a child that does not read costs
 *   its clients, not the gateway's memory. `maxPendingToChildBytes` stays
 *   as a last guard (1008 GW_SLOW_CHILD); the front's window keeps it out
 *   of reach.
 * Nothing is dropped silently.
 *
 * Approval requests the child pushes go to the client, unless an operator
 * set `approvals.websocket` to `accept` or `decline`: then the gateway
 * answers them to the child and the client never sees them.
 */
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { withTimeout } from '../shared/concurrency.js';
import { toGatewayError } from '../shared/errors.js';
import { FLAG_BINARY, FrameBatcher, RecordKind, batchOf, decodeText, postBatch, readAck, readBatch } from '../shared/frames.js';
import type { DataMessage } from '../shared/frames.js';
import type { ChildInfo, DataPlaneLimits, WebSocketApprovalPolicy } from '../shared/protocol.js';
import { policyAnswer } from './approval-policy.js';
import { BatchLeases } from './batch-leases.js';
import { SEND_BINARY, SEND_TEXT, zeroMask } from './child-conn.js';
import type { Conn } from './child-conn.js';
import { CloseCode, RETRY_LATER_CODES, closeCodeForGone, forwardableCloseCode } from '../shared/close-codes.js';
import { publicReason, reasonFor, truncateReason } from '../shared/public-error.js';
import type { GoneReason, WorkspaceTable } from './workspaces.js';

/** How long a failed connection to a child waits for the table to see that child's exit. */
const EXIT_SEEN_WAIT_MS = 2000;

export class ChildProxy {
  private readonly conns = new Map<number, Conn>();
  private readonly out: FrameBatcher;
  private readonly leases = new BatchLeases();

  constructor(
    port: MessagePort,
    private readonly table: WorkspaceTable,
    private readonly limits: DataPlaneLimits,
    private readonly log: Logger,
    private readonly approvals: WebSocketApprovalPolicy = 'client',
    private readonly onApproval: (workspaceId: string, method: string, decision: string) => void = () => {},
  ) {
    // Pooled both ways: each side hands the other's batch buffers back with its next batch.
    const leases = this.leases;
    const out = new FrameBatcher((batch) => postBatch(port, batch, leases.returns), undefined, true);
    this.out = out;
    const give = (b: ArrayBuffer): void => out.give(b);
    port.on('message', (m: DataMessage) => {
      const batch = batchOf(m, give);
      leases.begin(batch);
      try {
        readBatch(batch, this.onRecord);
      } catch (err) {
        this.log.error({ err: toGatewayError(err).describe() }, 'bad frame batch from front');
      }
      leases.end();
    });
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  private readonly onRecord = (kind: RecordKind, flags: number, code: number, connId: number, payload: Uint8Array): void => {
    switch (kind) {
      case RecordKind.Frame:
        this.fromClient(connId, payload, (flags & FLAG_BINARY) !== 0);
        return;
      case RecordKind.Open:
        this.open(connId, decodeText(payload));
        return;
      case RecordKind.Close:
        this.clientClosed(connId, code);
        return;
      case RecordKind.Ack:
        this.acked(connId, readAck(payload));
        return;
      default:
        this.log.error({ kind }, 'unknown data-plane record');
    }
  };

  private open(id: number, workspaceId: string): void {
    const c: Conn = { id, workspaceId, generation: undefined, ws: undefined, open: false, closed: false, queue: [], queuedBytes: 0, unacked: 0, paused: false, held: 0, written: () => this.written(c), attempts: 0, sent: [] };
    this.conns.set(id, c);
    this.startChild(c);
  }

  /** Finds or starts the workspace's child for a client whose child connection is not open. */
  private startChild(c: Conn): void {
    c.attempts += 1;
    this.table.ensure(c.workspaceId, 0).then(
      (info) => this.connectChild(c, info),
      (err: unknown) => this.startFailed(c, err),
    );
  }

  /**
   * The child a client was about to reach is gone before the client talked
   * to it (what a reconnect right after a crash meets): its frames are still
   * queued, so it gets the workspace's next child, once.
   */
  private retryStart(c: Conn, code: number, reason: string): void {
    if (c.closed) return;
    if (c.attempts > 1) return this.closeClient(c, code, reason);
    if (c.generation !== undefined) this.table.detachClient(c.workspaceId, c.generation);
    c.generation = undefined;
    c.ws?.terminate();
    c.ws = undefined;
    this.startChild(c);
  }

  private connectChild(c: Conn, info: ChildInfo): void {
    if (c.closed) return;
    if (!this.table.attachClient(c.workspaceId, info.generation)) {
      // The child went away between ensure and now.
      this.retryStart(c, CloseCode.InternalError, reasonFor('GW_CHILD_EXITED'));
      return;
    }
    c.generation = info.generation;
    const ws = new WebSocket(info.wsUrl, {
      headers: { authorization: `Bearer ${info.wsToken}` },
      perMessageDeflate: false,
      maxPayload: this.limits.maxFrameBytes,
      skipUTF8Validation: true,
      // A zero mask, which ws then skips applying: no copy of every frame
      // toward the child. Masking guards intermediaries that cache; this
      // socket is loopback to a child only the gateway can reach.
      generateMask: zeroMask,
      // Past it ws emits 'error' ("Opening handshake has timed out"): the client gets 1011 GW_CHILD_CONNECT.
      handshakeTimeout: this.limits.childHandshakeTimeoutMs ?? 10_000,
    });
    c.ws = ws;
    ws.on('open', () => {
      c.open = true;
      for (const f of c.queue) {
        c.sent.push(undefined);
        ws.send(f.data, f.binary ? SEND_BINARY : SEND_TEXT, c.written);
      }
      c.queue = [];
      c.queuedBytes = 0;
      this.settle(c);
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      this.table.touch(c.workspaceId);
      if (this.approvals !== 'client' && !isBinary && this.answeredByPolicy(c, ws, data)) return;
      this.out.push(RecordKind.Frame, isBinary ? FLAG_BINARY : 0, 0, c.id, data);
      c.unacked += data.byteLength;
      if (!c.paused && c.unacked > this.limits.windowBytes) {
        c.paused = true;
        ws.pause();
      }
    });
    ws.on('close', (code: number, reason: Buffer) => {
      if (c.closed || c.ws !== ws) return;
      if (!c.open) {
        this.childUnreachable(c, ws, info.generation);
        return;
      }
      // codex's own reason stays in the log: it is not ours to vouch for.
      this.log.info({ workspaceId: c.workspaceId, connId: c.id, code, reason: reason.toString() }, 'child closed the connection');
      this.closeClient(c, forwardableCloseCode(code), code === 1009 ? reasonFor('GW_TOO_LARGE') : reasonFor('GW_CHILD_EXITED'));
    });
    ws.on('error', (err) => {
      if (c.ws !== ws) return;
      this.log.warn({ workspaceId: c.workspaceId, connId: c.id, err: err.message }, 'child connection error');
      if (!c.open) this.childUnreachable(c, ws, info.generation);
    });
  }

  /**
   * The connection to the child failed before it opened. A child that died
   * has its sockets gone before the table sees its exit: once it does (a
   * bounded wait), the client starts over with the next child. A child that
   * lives and cannot be reached gets the client a 1011 GW_CHILD_CONNECT.
   */
  private childUnreachable(c: Conn, ws: WebSocket, generation: string): void {
    if (c.closed || c.ws !== ws) return;
    c.ws = undefined;
    const failed = reasonFor('GW_CHILD_CONNECT');
    // childGone may have started the client over already: then its generation moved on.
    void withTimeout(this.table.childExit(c.workspaceId, generation) ?? Promise.resolve(), EXIT_SEEN_WAIT_MS, () => new Error('exit not seen')).then(
      () => c.generation === generation && this.retryStart(c, CloseCode.InternalError, failed),
      () => c.generation === generation && c.ws === undefined && this.closeClient(c, CloseCode.InternalError, failed),
    );
  }

  /** Answers an approval request from the child by the `approvals.websocket` policy; true when it did (the frame is not forwarded). */
  private answeredByPolicy(c: Conn, ws: WebSocket, data: Buffer): boolean {
    const decision = this.approvals === 'accept' ? 'accept' : 'decline';
    const answer = policyAnswer(data, decision);
    if (answer === undefined) return false;
    ws.send(answer.reply);
    this.log.info({ workspaceId: c.workspaceId, connId: c.id, method: answer.method, decision, policy: 'approvals.websocket' }, 'approval request answered by policy');
    this.onApproval(c.workspaceId, answer.method, decision);
    return true;
  }

  /**
   * 1013 (retry later) when waiting helps, else 1011. The client gets the
   * code and its fixed message; the whole error (paths, store URLs, codex's
   * stderr) goes to the log under the connection id.
   */
  private startFailed(c: Conn, err: unknown): void {
    const e = toGatewayError(err);
    const code = RETRY_LATER_CODES.has(e.code) ? CloseCode.TryAgainLater : CloseCode.InternalError;
    this.log.warn({ workspaceId: c.workspaceId, connId: c.id, closeCode: code, err: e.describe() }, 'client closed: workspace did not start');
    this.closeClient(c, code, publicReason(e));
  }

  private fromClient(id: number, data: Uint8Array, binary: boolean): void {
    const c = this.conns.get(id);
    if (c === undefined || c.closed) return;
    this.table.touch(c.workspaceId);
    if (c.open && c.ws !== undefined && c.ws.readyState !== WebSocket.OPEN) {
      // A closing socket would drop the frame and call back at once, ahead of the writes before it (the leases go
      // by their order): it is dropped here, and its bytes acked as that callback would have.
      this.out.ack(c.id, data.byteLength);
      return;
    }
    c.held += data.byteLength;
    if (c.open && c.ws !== undefined) {
      c.sent.push(this.leases.hold());
      c.ws.send(data, binary ? SEND_BINARY : SEND_TEXT, c.written);
      if (c.ws.bufferedAmount > this.limits.maxPendingToChildBytes) {
        this.closeClient(c, CloseCode.PolicyViolation, reasonFor('GW_SLOW_CHILD'));
        return;
      }
      this.settle(c);
      return;
    }
    c.queuedBytes += data.byteLength;
    if (c.queuedBytes > this.limits.maxPendingToChildBytes) {
      this.log.warn({ workspaceId: c.workspaceId, connId: c.id, queuedBytes: c.queuedBytes }, 'client closed: too much sent before the workspace was ready');
      this.closeClient(c, CloseCode.PolicyViolation, reasonFor('GW_SLOW_CHILD'));
      return;
    }
    // A copy: the payload is a view into a pooled batch, which goes back to the front once read.
    c.queue.push({ data: data.slice(), binary });
  }

  /** A send to the child was written out (or its socket is gone): its batch may go back, and its bytes are acked. */
  private written(c: Conn): void {
    this.leases.release(c.sent.shift());
    this.settle(c);
  }

  /**
   * Acks what the child connection's socket has taken: everything held but
   * what it still buffers. Frame headers count in `bufferedAmount`, so this
   * acks a little late, never early; an empty buffer acks all.
   */
  private settle(c: Conn): void {
    if (c.closed || c.held === 0 || c.ws === undefined || !c.open) return;
    const taken = c.held - c.ws.bufferedAmount;
    if (taken <= 0) return;
    c.held -= taken;
    this.out.ack(c.id, taken);
  }

  private clientClosed(id: number, code: number): void {
    const c = this.conns.get(id);
    if (c === undefined) return;
    this.conns.delete(id);
    if (c.closed) return;
    c.closed = true;
    this.release(c, code === 1000 || code === 1001 ? code : 1000);
  }

  private acked(id: number, bytes: number): void {
    const c = this.conns.get(id);
    if (c === undefined || c.closed) return;
    c.unacked = Math.max(0, c.unacked - bytes);
    if (c.paused && c.unacked <= this.limits.windowBytes / 2) {
      c.paused = false;
      c.ws?.resume();
    }
  }

  /** Closes the client side (the front ends its socket) and the child side. */
  private closeClient(c: Conn, code: number, reason: string): void {
    if (c.closed) return;
    c.closed = true;
    this.out.push(RecordKind.Close, 0, code, c.id, truncateReason(reason));
    this.release(c, 1000);
    // The front answers with its own Close once the socket is gone, which removes the entry.
  }

  private release(c: Conn, code: number): void {
    c.queue = [];
    c.queuedBytes = 0;
    c.held = 0;
    if (c.generation !== undefined) this.table.detachClient(c.workspaceId, c.generation);
    const ws = c.ws;
    if (ws === undefined) return;
    // A child that left more than a window unread is not reading: a closing
    // handshake would keep those bytes for ws's 30 s close timeout, past the
    // front's accounting (it forgets them when the client goes).
    if (ws.readyState === WebSocket.OPEN && ws.bufferedAmount <= this.limits.windowBytes) ws.close(code);
    else if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.terminate();
  }

  /** The child of `generation` is going away: its clients learn why. */
  childGone(workspaceId: string, generation: string, reason: GoneReason): void {
    const { code, text } = closeCodeForGone(reason);
    for (const c of this.conns.values()) {
      if (c.workspaceId !== workspaceId || c.generation !== generation) continue;
      // A client still waiting for this child's socket never talked to it: after a crash it gets the next child.
      if (reason === 'crash' && !c.open) this.retryStart(c, code, text);
      else this.closeClient(c, code, text);
    }
  }

  closeAll(code: number, reason: string): void {
    for (const c of this.conns.values()) this.closeClient(c, code, reason);
    this.out.flush();
  }
}
