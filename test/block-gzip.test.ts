/**
 * The archive compressor: 1 MiB blocks as gzip members, level 1 where it
 * pays and stored where it does not, read back by any gunzip as one stream.
 */
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { BlockGzip, worthCompressing } from '../src/workers/block-gzip.js';

async function compress(chunks: Buffer[], blockBytes?: number): Promise<{ out: Buffer; gz: BlockGzip }> {
  const gz = new BlockGzip(blockBytes);
  const parts: Buffer[] = [];
  await pipeline(
    Readable.from(chunks),
    gz,
    new Writable({
      write(c: Buffer, _e, cb) {
        parts.push(c);
        cb();
      },
    }),
  );
  return { out: Buffer.concat(parts), gz };
}

function text(bytes: number): Buffer {
  const lines: string[] = [];
  let n = 0;
  while (n < bytes) {
    const line = `{"seq":${lines.length},"role":"assistant","text":"line ${lines.length % 97} of a session"}\n`;
    lines.push(line);
    n += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

describe('BlockGzip', () => {
  it('round trips mixed content over many blocks, in order, through a plain gunzip', async () => {
    const input = Buffer.concat([text(3_000_000), randomBytes(2_500_000), text(700_000), randomBytes(10)]);
    // Odd chunk sizes so blocks never line up with writes.
    const chunks: Buffer[] = [];
    for (let at = 0; at < input.length; at += 77_777) chunks.push(input.subarray(at, at + 77_777));
    const { out, gz } = await compress(chunks, 256 * 1024);
    expect(gunzipSync(out).equals(input)).toBe(true);
    expect(gz.bytesIn).toBe(input.length);
    expect(gz.bytesOut).toBe(out.length);
  });

  it('compresses text and stores random bytes instead of deflating them', async () => {
    const t = await compress([text(4 * 1024 * 1024)]);
    expect(t.out.length).toBeLessThan(0.4 * 4 * 1024 * 1024);
    const r = await compress([randomBytes(4 * 1024 * 1024)]);
    // Stored blocks: the payload plus a few bytes of framing per block.
    expect(r.out.length).toBeLessThan(4 * 1024 * 1024 * 1.01);
    expect(worthCompressing(randomBytes(1024 * 1024))).toBe(false);
    expect(worthCompressing(text(1024 * 1024))).toBe(true);
  });

  it('an empty input is still a valid gzip stream', async () => {
    const { out } = await compress([]);
    expect(gunzipSync(out).length).toBe(0);
  });
});
