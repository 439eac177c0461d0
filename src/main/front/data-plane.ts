/**
 * The data plane: frames between client sockets and their shard's data
 * port. Flow control is by credit (frames.ts, Ack). Frames from a shard are
 * acked as soon as the client's socket takes them without backing up; while
 * its buffer is above `clientHighWaterBytes` the acks wait for it to drain
 * below `clientLowWaterBytes`, so the shard stops reading that child
 * connection. A client still behind after `slowClientTimeoutMs`, or whose
 * buffer would pass `clientMaxBufferedBytes`, is closed with 1008
 * GW_SLOW_CLIENT.
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
import { CloseCode } from '../../shared/close-codes.js';
import { toGatewayError } from '../../shared/errors.js';
import { reasonFor } from '../../shared/public-error.js';
import { AckTally, FLAG_BINARY, FrameBatcher, MAX_POOLED, RecordKind, ackPayload, batchOf, decodeText, isPooledBatch, postBatch, readAck, readBatch } from '../../shared/frames.js';
import type { DataMessage } from '../../shared/frames.js';
import type { Client, ClientData } from './client.js';
import { ConnectionIds } from './connection-ids.js';
import type { FrontMemory, FrontOptions } from './limits.js';

/**
 * In flight per client that the gateway-wide cap never refuses: JSON-RPC
 * requests of a client whose child reads are far below it.
 */
const OVERLOAD_SHARE = 1024 * 1024;

export class DataPlane {
  private readonly conns = new Map<number, Client>();
  private readonly behind = new Set<Client>();
  private readonly toShard: FrameBatcher[];
  private readonly acks: AckTally[];
  /** Per shard: its pooled batch buffers, read and going back with the next batch to it. */
  private readonly returns: ArrayBuffer[][];
  /** Shards without a live worker (dead, not yet replaced, or given up): their workspaces get 503. */
  private readonly downShards = new Set<number>();
  private readonly ids: ConnectionIds;
  private readonly sweep: NodeJS.Timeout;
  /** Σ toShard over live connections. */
  private buffered = 0;
  private readonly maxBuffered: number;
  private slowChildCloses = 0;
  private overloadCloses = 0;
  /** Called when the last connection has closed. */
  onEmpty: (() => void) | undefined;

  constructor(private readonly o: FrontOptions) {
    const sup = o.sup;
    this.ids = new ConnectionIds(o.firstConnectionId);
    this.maxBuffered = o.limits.maxBufferedBytes ?? Number.POSITIVE_INFINITY;
    this.acks = Array.from({ length: sup.shardCount }, () => new AckTally());
    this.returns = Array.from({ length: sup.shardCount }, () => []);
    this.toShard = Array.from({ length: sup.shardCount }, (_, i) => this.bind(i));
    sup.on('shard-died', (i: number) => this.shardLost(i));
    sup.on('shard-restarted', (i: number) => this.shardBack(i));
    this.sweep = setInterval(() => this.closeStalled(), 1000);
    this.sweep.unref();
  }

  private bind(i: number): FrameBatcher {
    const port = this.o.sup.dataPort(i);
    const returns: ArrayBuffer[] = [];
    this.returns[i] = returns;
    // The shard hands the front's pooled buffers back with its batches (once their frames are written to the child).
    const give = (b: ArrayBuffer): void => this.toShard[i]?.give(b);
    port.on('message', (m: DataMessage) => this.fromShard(i, batchOf(m, give)));
    return new FrameBatcher((batch) => postBatch(port, batch, returns), undefined, true);
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

  isDown(shard: number): boolean {
    return this.downShards.has(shard);
  }

  get size(): number {
    return this.conns.size;
  }

  newClient(workspaceId: string, shard: number, address = ''): ClientData {
    // The id joins `conns` in opened(), which uWS calls from within upgrade(),
    // so no other id is taken in between.
    return { id: this.ids.take((id) => this.conns.has(id)), workspaceId, shard, closed: false, behind: false, behindSince: 0, pendingAck: 0, toShard: 0, pendingAuth: undefined, address, link: undefined, forwardedIn: false };
  }

  // ---- client → shard ----------------------------------------------------------

  /** A socket opened; false while its token is still being verified (attach() follows). */
  opened(ws: Client): boolean {
    const d = ws.getUserData();
    this.conns.set(d.id, ws);
    this.o.observer?.connectionOpened?.();
    if (d.forwardedIn) this.o.forwarding?.forwardedOpened();
    if (d.pendingAuth !== undefined) return false;
    (this.toShard[d.shard] as FrameBatcher).push(RecordKind.Open, 0, 0, d.id, d.workspaceId);
    return true;
  }

  /** A connection whose token was verified after its upgrade joins its shard, with the frames it sent meanwhile. */
  attach(d: ClientData, workspaceId: string, shard: number): void {
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
  }

  /** A frame of an attached client (the caller handled size limits and pending auth). */
  clientFrame(ws: Client, d: ClientData, msg: ArrayBuffer, isBinary: boolean): void {
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

  clientClosed(ws: Client, code: number): void {
    const d = ws.getUserData();
    d.closed = true;
    this.conns.delete(d.id);
    this.behind.delete(ws);
    this.unbuffer(d, d.toShard);
    this.o.observer?.connectionClosed?.();
    // A connection still without a workspace never reached a shard.
    if (d.shard >= 0) (this.toShard[d.shard] as FrameBatcher).push(RecordKind.Close, 0, code, d.id);
    d.link?.clientClosed(code);
    if (d.forwardedIn) this.o.forwarding?.forwardedClosed();
    d.pendingAuth = undefined;
    if (this.conns.size === 0) this.onEmpty?.();
  }

  drained(ws: Client): void {
    const d = ws.getUserData();
    d.link?.clientDrained();
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
    // Every payload has been sent (uWS copies) or decoded: the buffer can go back.
    const returns = this.returns[shard] as ArrayBuffer[];
    if (isPooledBatch(batch) && returns.length < MAX_POOLED) returns.push(batch);
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

  /** Ends every open client with `code` (a close frame), and sends what is batched. */
  endAll(code: number, reason: string): void {
    for (const ws of [...this.conns.values()]) {
      const d = ws.getUserData();
      if (d.closed) continue;
      d.closed = true;
      ws.cork(() => ws.end(code, reason));
    }
    this.flush();
  }

  /** Cuts every client at once (no close frame), and stops the sweep. */
  closeAll(): void {
    clearInterval(this.sweep);
    for (const ws of [...this.conns.values()]) ws.close();
    this.flush();
  }

  private flush(): void {
    for (const b of this.toShard) b.flush();
  }
}
