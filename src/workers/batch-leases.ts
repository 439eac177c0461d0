/**
 * Pooled batches from the front, lent out while their frames are written.
 * The shard sends a client frame to the child straight out of the batch that
 * carried it (a view, no copy), and the child socket may still hold that view
 * after the batch has been read. So a pooled batch goes back to the front
 * (with the shard's next batch, frames.ts postBatch) only once it has been
 * read and every send made from it has been written out. ws calls each
 * send's callback once, in the order of the sends, when the socket has taken
 * the frame (or with an error when it is gone): a connection keeps its
 * leases in that order and returns one per callback. A lease whose callback
 * never comes is never returned, and the buffer is left to the GC: a buffer
 * is handed back late or not at all, never early.
 */
import { MAX_POOLED, isPooledBatch } from '../shared/frames.js';

export class Lease {
  /** The read of the batch counts as one holder. */
  holders = 1;
  constructor(readonly buffer: ArrayBuffer) {}
}

export class BatchLeases {
  /** Buffers free to go back to the front with the next batch to it. */
  readonly returns: ArrayBuffer[] = [];
  private current: Lease | undefined;

  /** A batch is about to be read: sends made while reading it hold it. */
  begin(batch: ArrayBuffer): void {
    this.current = isPooledBatch(batch) ? new Lease(batch) : undefined;
  }

  /** The batch has been read: it goes back once the sends made from it are written. */
  end(): void {
    const l = this.current;
    this.current = undefined;
    this.release(l);
  }

  /** The batch being read, held once more (a send of one of its frames); undefined when it is not pooled. */
  hold(): Lease | undefined {
    const l = this.current;
    if (l !== undefined) l.holders += 1;
    return l;
  }

  release(l: Lease | undefined): void {
    if (l === undefined || --l.holders > 0) return;
    if (this.returns.length < MAX_POOLED) this.returns.push(l.buffer);
  }
}
