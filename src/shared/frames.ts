/**
 * The data plane between the front thread and a shard: records packed into
 * transferred ArrayBuffers, flushed once per tick or at ~64 KiB. One
 * postMessage per frame costs ~3 µs; a batch costs a tenth of that per frame
 * (LIBRARY-NOTES.md).
 *
 * Record layout (little endian), 12-byte header then payload:
 *   u8 kind | u8 flags | u16 code | u32 connId | u32 length | payload
 * A zero kind byte (or the end of the buffer) ends a batch.
 */

export const RecordKind = {
  /** front → shard: a client connected; payload = workspace id. */
  Open: 1,
  /** both ways: one WebSocket message; flags bit 0 = binary. */
  Frame: 2,
  /** both ways: the connection is closed; code = close code, payload = reason. */
  Close: 3,
  /**
   * both ways: credit. The receiver of Frame bytes returns them as an Ack
   * (payload = u32 byte count) once they have left its hands: the front when
   * the client socket took them without backing up, the shard when the child
   * connection did. Each side bounds what is sent but not yet acked.
   */
  Ack: 4,
} as const;
export type RecordKind = (typeof RecordKind)[keyof typeof RecordKind];

export const FLAG_BINARY = 1;
export const HEADER_BYTES = 12;
const DEFAULT_BATCH_BYTES = 64 * 1024;
/**
 * Credit that waits for a ride: an Ack queued with `ack()` goes out with the
 * next batch that carries anything else, so an echo-like exchange costs one
 * message (one wake-up of the other thread) each way instead of two. Credit
 * never waits longer than ACK_DELAY_MS, and goes out at once (in its own
 * batch) when ACK_EAGER_BYTES are owed, far below the windows it refills.
 */
const ACK_DELAY_MS = 5;
const ACK_EAGER_BYTES = 32 * 1024;
/**
 * A pooled batcher writes into buffers of this size, posts them whole and
 * gets them back from the reader (give) to write again: no fresh memory per
 * batch, and no copy into an exact-size buffer. Twice the batch threshold,
 * so a 64 KiB frame rides in one too. Only buffers of exactly this size are
 * handed back; a frame too large for one travels alone as before.
 */
export const POOLED_BATCH_BYTES = 128 * 1024;
/**
 * Pooled buffers kept at one place at a time: free in a batcher, or read and
 * waiting to go back with the next batch the other way. More are left to the GC.
 */
export const MAX_POOLED = 32;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export type RecordHandler = (kind: RecordKind, flags: number, code: number, connId: number, payload: Uint8Array) => void;

export class FrameBatcher {
  /**
   * Records are written into this buffer. Unpooled, it is a staging buffer
   * that never leaves the thread, and a flush posts a copy of exactly the
   * bytes used: a fresh 64 KiB buffer per batch would cost a 64 KiB
   * zero-fill (and 64 KiB of external memory for the GC to account) for
   * every batch, most of which carry one small frame. Pooled, the buffer
   * itself is posted and comes back through give().
   */
  private buffer: ArrayBuffer | undefined;
  private view: DataView | undefined;
  private bytes: Uint8Array | undefined;
  private used = 0;
  private readonly capacity: number;
  private readonly free: ArrayBuffer[] = [];
  private scheduled = false;
  /** Credit owed per connection, written into the next batch posted. */
  private readonly owed = new Map<number, number>();
  private owedBytes = 0;
  private ackTimer: NodeJS.Timeout | undefined;
  /** Batches posted so far (for stats). */
  posted = 0;

  constructor(
    private readonly post: (batch: ArrayBuffer) => void,
    private readonly batchBytes = DEFAULT_BATCH_BYTES,
    private readonly pooled = false,
  ) {
    this.capacity = pooled ? Math.max(POOLED_BATCH_BYTES, batchBytes) : batchBytes;
  }

  /** A pooled buffer back from the reader, done with: written into again. */
  give(buffer: ArrayBuffer): void {
    if (this.pooled && buffer.byteLength === this.capacity && this.free.length < MAX_POOLED) this.free.push(buffer);
  }

  private take(): void {
    const b = this.pooled ? (this.free.pop() ?? new ArrayBuffer(this.capacity)) : (this.buffer ?? new ArrayBuffer(this.capacity));
    this.buffer = b;
    this.view = new DataView(b);
    this.bytes = new Uint8Array(b);
  }

  /** Queues one record; `payload` is copied, so the caller may reuse its memory at once. */
  push(kind: RecordKind, flags: number, code: number, connId: number, payload?: Uint8Array | string): void {
    if (this.append(kind, flags, code, connId, payload)) this.schedule();
  }

  /** Writes one record into the current batch; false when it was posted alone. */
  private append(kind: RecordKind, flags: number, code: number, connId: number, payload?: Uint8Array | string): boolean {
    const body = typeof payload === 'string' ? encoder.encode(payload) : payload;
    const len = body?.byteLength ?? 0;
    const need = HEADER_BYTES + len;
    if (need > this.capacity) {
      // A large frame travels alone, in a buffer of exactly its size.
      this.flush();
      const ab = new ArrayBuffer(need);
      writeRecord(new DataView(ab), new Uint8Array(ab), 0, kind, flags, code, connId, body);
      this.posted++;
      this.post(ab);
      return false;
    }
    if (this.used > 0 && this.used + need > this.batchBytes) this.postCurrent();
    if (this.view === undefined || this.bytes === undefined) this.take();
    writeRecord(this.view as DataView, this.bytes as Uint8Array, this.used, kind, flags, code, connId, body);
    this.used += need;
    return true;
  }

  /**
   * Owes `bytes` of credit to `connId`: an Ack record that rides with the next
   * batch, or goes alone after ACK_DELAY_MS or once ACK_EAGER_BYTES are owed.
   */
  ack(connId: number, bytes: number): void {
    if (bytes <= 0) return;
    this.owed.set(connId, (this.owed.get(connId) ?? 0) + bytes);
    this.owedBytes += bytes;
    if (this.owedBytes >= ACK_EAGER_BYTES) {
      this.schedule();
    } else if (this.ackTimer === undefined) {
      this.ackTimer = setTimeout(this.ackDue, ACK_DELAY_MS);
      this.ackTimer.unref();
    }
  }

  private readonly ackDue = (): void => {
    this.ackTimer = undefined;
    this.flush();
  };

  private schedule(): void {
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushSoon);
    }
  }

  private readonly flushSoon = (): void => {
    this.scheduled = false;
    this.flush();
  };

  /** Posts what is queued now, with any credit owed. */
  flush(): void {
    if (this.owedBytes > 0) {
      for (const [id, n] of this.owed) this.append(RecordKind.Ack, 0, 0, id, ackPayload(n));
      this.owed.clear();
      this.owedBytes = 0;
    }
    this.postCurrent();
  }

  private postCurrent(): void {
    if (this.used === 0 || this.buffer === undefined || this.bytes === undefined) return;
    let ab: ArrayBuffer;
    if (this.pooled) {
      // The buffer goes as it is: a zero kind byte ends what this batch wrote
      // (what follows is an earlier batch's).
      if (this.used < this.capacity) this.bytes[this.used] = 0;
      ab = this.buffer;
      this.buffer = undefined;
      this.view = undefined;
      this.bytes = undefined;
    } else {
      // new + set measured faster than ArrayBuffer.prototype.slice here (Node 20).
      ab = new ArrayBuffer(this.used);
      new Uint8Array(ab).set(this.bytes.subarray(0, this.used));
    }
    this.used = 0;
    this.posted++;
    this.post(ab);
  }
}

function writeRecord(view: DataView, bytes: Uint8Array, at: number, kind: number, flags: number, code: number, connId: number, body: Uint8Array | undefined): void {
  view.setUint8(at, kind);
  view.setUint8(at + 1, flags);
  view.setUint16(at + 2, code, true);
  view.setUint32(at + 4, connId, true);
  view.setUint32(at + 8, body?.byteLength ?? 0, true);
  if (body !== undefined && body.byteLength > 0) bytes.set(body, at + HEADER_BYTES);
}

/**
 * Calls `onRecord` for each record of a batch. Payloads are views into the
 * batch (no copy); the batch was transferred, so nothing else writes to it.
 */
export function readBatch(batch: ArrayBuffer, onRecord: RecordHandler): void {
  const view = new DataView(batch);
  let at = 0;
  while (at + HEADER_BYTES <= batch.byteLength) {
    const kind = view.getUint8(at);
    if (kind === 0) return;
    const len = view.getUint32(at + 8, true);
    if (at + HEADER_BYTES + len > batch.byteLength) throw new RangeError(`frame batch record overruns its buffer at ${at}`);
    onRecord(kind as RecordKind, view.getUint8(at + 1), view.getUint16(at + 2, true), view.getUint32(at + 4, true), new Uint8Array(batch, at + HEADER_BYTES, len));
    at += HEADER_BYTES + len;
  }
}

/**
 * A data-port message: a batch, or a batch with pooled buffers the sender
 * gave back (`[batch, ...returned]`), all transferred.
 */
export type DataMessage = ArrayBuffer | ArrayBuffer[];

/** Posts `batch` with the pooled buffers waiting in `returns` (emptied). */
export function postBatch(port: { postMessage(m: unknown, transfer: ArrayBuffer[]): void }, batch: ArrayBuffer, returns: ArrayBuffer[]): void {
  if (returns.length === 0) {
    port.postMessage(batch, [batch]);
    return;
  }
  const m = [batch, ...returns];
  returns.length = 0;
  port.postMessage(m, m);
}

/** The batch of a data-port message; returned buffers go to `give`. */
export function batchOf(m: DataMessage, give: (buffer: ArrayBuffer) => void): ArrayBuffer {
  if (!Array.isArray(m)) return m;
  for (let k = 1; k < m.length; k++) give(m[k] as ArrayBuffer);
  return m[0] as ArrayBuffer;
}

/** Whether a batch came in a pooled buffer, to hand back once read. */
export function isPooledBatch(batch: ArrayBuffer): boolean {
  return batch.byteLength === POOLED_BATCH_BYTES;
}

/** Payload of an Ack record. */
export function ackPayload(bytes: number): Uint8Array {
  const p = new Uint8Array(4);
  new DataView(p.buffer).setUint32(0, Math.min(bytes, 0xffffffff), true);
  return p;
}

export function readAck(payload: Uint8Array): number {
  return payload.byteLength >= 4 ? new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true) : 0;
}

/**
 * Per-connection byte counts gathered while one batch is read, owed back as
 * credit (one Ack record per connection) afterwards.
 */
export class AckTally {
  private readonly counts = new Map<number, number>();

  add(connId: number, bytes: number): void {
    this.counts.set(connId, (this.counts.get(connId) ?? 0) + bytes);
  }

  flushTo(out: FrameBatcher): void {
    for (const [id, n] of this.counts) out.ack(id, n);
    this.counts.clear();
  }
}

export function decodeText(payload: Uint8Array): string {
  return decoder.decode(payload);
}
