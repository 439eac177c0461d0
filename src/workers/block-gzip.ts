/**
 * gzip for archives, fast enough that an upload is rarely waiting for it.
 *
 * The stream is cut into 1 MiB blocks and each block becomes its own gzip
 * member (RFC 1952 allows members back to back; every gunzip, Node's
 * included, reads them as one stream). That lets the level change per block:
 *
 * - level 1 for blocks that compress: on CODEX_HOME content (JSON lines,
 *   sqlite) it comes within a few per cent of the default level's size at
 *   over three times its speed;
 * - level 0 (stored) for blocks that do not (random bytes, already
 *   compressed files), judged from a small sample: deflate would spend
 *   ~20 ms per MiB on them to gain nothing.
 *
 * Compression runs synchronously on the calling thread: an archive-pool
 * thread, which runs at a lower priority than the threads serving frames.
 */
import { Transform } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { deflateRawSync, gzipSync } from 'node:zlib';

export const BLOCK_BYTES = 1024 * 1024;
const SLICES = 4;
const SLICE_BYTES = 4 * 1024;
/** A sample that shrinks to no less than this share of its size is not worth deflating. */
const INCOMPRESSIBLE = 0.9;

export class BlockGzip extends Transform {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private wroteAny = false;
  /** Bytes in and out, for the caller's report. */
  bytesIn = 0;
  bytesOut = 0;

  constructor(
    private readonly blockBytes = BLOCK_BYTES,
    private readonly level = 1,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      this.bytesIn += chunk.length;
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.pendingBytes >= this.blockBytes) {
        let all = Buffer.concat(this.pending, this.pendingBytes);
        while (all.length >= this.blockBytes) {
          this.member(all.subarray(0, this.blockBytes));
          all = all.subarray(this.blockBytes);
        }
        this.pending = all.length > 0 ? [all] : [];
        this.pendingBytes = all.length;
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      // An empty input still makes one (empty) member: a valid gzip stream.
      if (this.pendingBytes > 0 || !this.wroteAny) this.member(Buffer.concat(this.pending, this.pendingBytes));
      this.pending = [];
      this.pendingBytes = 0;
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  private member(block: Buffer): void {
    const out = gzipSync(block, { level: worthCompressing(block) ? this.level : 0 });
    this.wroteAny = true;
    this.bytesOut += out.length;
    this.push(out);
  }
}

/**
 * Whether a block shrinks under deflate, judged from a few slices spread
 * over it (a block may hold the end of one file and the start of another):
 * ~0.2 ms per block.
 */
export function worthCompressing(block: Buffer): boolean {
  if (block.length < SLICES * SLICE_BYTES) return true;
  const step = Math.floor((block.length - SLICE_BYTES) / (SLICES - 1));
  const sample = Buffer.concat(Array.from({ length: SLICES }, (_, i) => block.subarray(i * step, i * step + SLICE_BYTES)));
  return deflateRawSync(sample, { level: 1 }).length < sample.length * INCOMPRESSIBLE;
}
