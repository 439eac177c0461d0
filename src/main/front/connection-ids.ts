/**
 * Connection ids for the data plane. Records carry the id as a u32
 * (frames.ts), so ids live in 1..2^32-1: the counter wraps there instead of
 * growing past it (2^32 would be written as 0, 2^32+1 as 1, and a new
 * client's frames would reach an older client's child).
 *
 * Invariant: an id is never handed out while a live connection holds it.
 * After a wrap the counter skips ids still in use. A freed id comes back
 * only after the counter has gone round all 2^32-1 others, long after any
 * record for the old connection still in flight between threads has landed.
 */

export const MAX_CONNECTION_ID = 0xffff_ffff;

export class ConnectionIds {
  private next: number;

  /** `first` exists for tests that start just below the wrap. */
  constructor(first = 1) {
    if (!Number.isInteger(first) || first < 1 || first > MAX_CONNECTION_ID) throw new RangeError(`first connection id must be an integer in 1..${MAX_CONNECTION_ID}, got ${first}`);
    this.next = first;
  }

  /**
   * A fresh id that `inUse` does not hold. The caller keeps at most a few
   * million connections, far fewer than 2^32-1 ids, so the loop ends.
   */
  take(inUse: (id: number) => boolean): number {
    for (;;) {
      const id = this.next;
      this.next = id === MAX_CONNECTION_ID ? 1 : id + 1;
      if (!inUse(id)) return id;
    }
  }
}
