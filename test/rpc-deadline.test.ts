/**
 * Cross-thread calls have deadlines: a call to a peer thread that never
 * answers (stuck, or busy forever) fails with GW_SHARD_FAILED at its
 * deadline instead of hanging its caller (a metrics scrape, a drain).
 */
import { MessageChannel } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { RpcPeer } from '../src/shared/rpc.js';

type Methods = { slow: { params: Record<string, never>; result: string } };

describe('RpcPeer deadlines', () => {
  it('a call the peer never answers fails at its deadline with GW_SHARD_FAILED; a late answer is dropped', async () => {
    const { port1, port2 } = new MessageChannel();
    let answer: ((v: string) => void) | undefined;
    const callee = new RpcPeer<Methods, Methods, Record<string, never>, Record<string, never>>(port2, { slow: () => new Promise<string>((r) => (answer = r)) }, {}, () => {});
    const caller = new RpcPeer<Methods, Methods, Record<string, never>, Record<string, never>>(port1, { slow: () => 'x' }, {}, () => {});
    try {
      const err = await caller.call('slow', {}, { timeoutMs: 100 }).then(
        () => undefined,
        (e: unknown) => e as { code?: string; message?: string },
      );
      expect(err?.code).toBe('GW_SHARD_FAILED');
      expect(err?.message).toContain('slow');
      expect(caller.inFlight).toBe(0);
      answer?.('late');
      // A later call still works: the late answer did not settle it.
      const second = caller.call('slow', {}, { timeoutMs: 5000 });
      await new Promise((r) => setTimeout(r, 50));
      answer?.('second');
      expect(await second).toBe('second');
    } finally {
      caller.close();
      callee.close();
    }
  });

  it('without a deadline a call waits for its answer', async () => {
    const { port1, port2 } = new MessageChannel();
    const callee = new RpcPeer<Methods, Methods, Record<string, never>, Record<string, never>>(port2, { slow: () => new Promise<string>((r) => setTimeout(() => r('done'), 200)) }, {}, () => {});
    const caller = new RpcPeer<Methods, Methods, Record<string, never>, Record<string, never>>(port1, { slow: () => 'x' }, {}, () => {});
    try {
      expect(await caller.call('slow', {})).toBe('done');
    } finally {
      caller.close();
      callee.close();
    }
  });
});
