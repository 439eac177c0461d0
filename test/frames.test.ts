/**
 * The data-plane batch format between the front and a shard: what a reader
 * gets out of the batches a writer posts, with the writer's buffers reused.
 */
import { MessageChannel } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { FrameBatcher, POOLED_BATCH_BYTES, RecordKind, batchOf, decodeText, isPooledBatch, postBatch, readBatch } from '../src/shared/frames.js';
import type { DataMessage } from '../src/shared/frames.js';

interface Rec {
  kind: number;
  id: number;
  text: string;
  bytes: number;
}

function read(batch: ArrayBuffer): Rec[] {
  const out: Rec[] = [];
  readBatch(batch, (kind, _flags, _code, id, payload) => out.push({ kind, id, text: payload.byteLength < 100 ? decodeText(payload) : '', bytes: payload.byteLength }));
  return out;
}

describe('frame batches', () => {
  it('a pooled batcher posts its buffer as it is, and a buffer given back carries the next batch without the last one\'s records', () => {
    const posted: ArrayBuffer[] = [];
    const b = new FrameBatcher((ab) => posted.push(ab), undefined, true);
    for (let i = 0; i < 5; i++) b.push(RecordKind.Frame, 0, 0, i, `frame number ${i}`);
    b.flush();
    expect(posted).toHaveLength(1);
    const first = posted[0] as ArrayBuffer;
    expect(first.byteLength).toBe(POOLED_BATCH_BYTES);
    expect(isPooledBatch(first)).toBe(true);
    expect(read(first).map((r) => r.text)).toEqual([0, 1, 2, 3, 4].map((i) => `frame number ${i}`));

    b.give(first);
    b.push(RecordKind.Frame, 0, 0, 9, 'only this one');
    b.flush();
    expect(posted[1]).toBe(first);
    expect(read(posted[1] as ArrayBuffer)).toEqual([{ kind: RecordKind.Frame, id: 9, text: 'only this one', bytes: 13 }]);
  });

  it('a 64 KiB frame rides in a pooled buffer; one larger than a buffer travels alone in one of its size', () => {
    const posted: ArrayBuffer[] = [];
    const b = new FrameBatcher((ab) => posted.push(ab), undefined, true);
    b.push(RecordKind.Frame, 1, 0, 1, new Uint8Array(64 * 1024).fill(7));
    b.flush();
    b.push(RecordKind.Frame, 1, 0, 2, new Uint8Array(POOLED_BATCH_BYTES).fill(8));
    expect(posted.map((ab) => ab.byteLength)).toEqual([POOLED_BATCH_BYTES, POOLED_BATCH_BYTES + 12]);
    expect(read(posted[0] as ArrayBuffer)).toEqual([{ kind: RecordKind.Frame, id: 1, text: '', bytes: 64 * 1024 }]);
    expect(read(posted[1] as ArrayBuffer)).toEqual([{ kind: RecordKind.Frame, id: 2, text: '', bytes: POOLED_BATCH_BYTES }]);
    expect(isPooledBatch(posted[1] as ArrayBuffer)).toBe(false);
  });

  it('records past the batch threshold go in the next buffer, in order', () => {
    const posted: ArrayBuffer[] = [];
    const b = new FrameBatcher((ab) => posted.push(ab), undefined, true);
    const chunk = new Uint8Array(20 * 1024);
    for (let i = 0; i < 7; i++) b.push(RecordKind.Frame, 0, 0, i, chunk);
    b.flush();
    expect(posted.length).toBeGreaterThan(1);
    expect(posted.flatMap((ab) => read(ab).map((r) => r.id))).toEqual([0, 1, 2, 3, 4, 5, 6]);
  });

  it('an unpooled batcher posts exact-size copies and keeps its staging buffer', () => {
    const posted: ArrayBuffer[] = [];
    const b = new FrameBatcher((ab) => posted.push(ab));
    b.push(RecordKind.Open, 0, 0, 3, 'ws-1');
    b.flush();
    b.push(RecordKind.Close, 0, 1000, 3, 'bye');
    b.flush();
    expect(posted.map((ab) => ab.byteLength)).toEqual([16, 15]);
    expect(posted.flatMap(read).map((r) => [r.kind, r.text])).toEqual([
      [RecordKind.Open, 'ws-1'],
      [RecordKind.Close, 'bye'],
    ]);
  });

  it('buffers handed back across a MessagePort arrive with the next batch and are written into again', async () => {
    const { port1, port2 } = new MessageChannel();
    const writer = new FrameBatcher((ab) => port1.postMessage(ab, [ab]), undefined, true);
    const returns: ArrayBuffer[] = [];
    const reader = new FrameBatcher((ab) => postBatch(port2, ab, returns));
    const seen: string[] = [];
    const back: ArrayBuffer[] = [];
    try {
      const fromWriter = new Promise<void>((resolve) => {
        port2.on('message', (batch: ArrayBuffer) => {
          for (const r of read(batch)) seen.push(r.text);
          if (isPooledBatch(batch)) returns.push(batch);
          resolve();
        });
      });
      const fromReader = new Promise<void>((resolve) => {
        port1.on('message', (m: DataMessage) => {
          for (const r of read(batchOf(m, (ab) => back.push(ab)))) seen.push(r.text);
          resolve();
        });
      });
      writer.push(RecordKind.Frame, 0, 0, 1, 'to the front');
      writer.flush();
      await fromWriter;
      reader.push(RecordKind.Frame, 0, 0, 1, 'to the shard');
      reader.flush();
      await fromReader;
      expect(seen).toEqual(['to the front', 'to the shard']);
      expect(back.map((ab) => ab.byteLength)).toEqual([POOLED_BATCH_BYTES]);
      expect(returns).toHaveLength(0);
      // The returned buffer carries the writer's next batch, with only its record.
      const posted: ArrayBuffer[] = [];
      const again = new FrameBatcher((ab) => posted.push(ab), undefined, true);
      again.give(back[0] as ArrayBuffer);
      again.push(RecordKind.Frame, 0, 0, 2, 'x');
      again.flush();
      expect(posted[0]).toBe(back[0]);
      expect(read(posted[0] as ArrayBuffer).map((r) => r.text)).toEqual(['x']);
    } finally {
      port1.close();
      port2.close();
    }
  });
});
