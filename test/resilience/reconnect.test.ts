/**
 * A client that reconnects the moment its child dies: the dying child's
 * sockets close before its exit is reported, and the reconnect must get a
 * new child, not the dead one (which answered 1011 GW_CHILD_CONNECT).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeOf, openWs, rpc, startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';

describe('reconnect right after a crash', () => {
  let t: TestGateway;
  beforeAll(async () => {
    // No crash-loop backoff here: every child dies on purpose.
    t = await startTestGateway({}, { crashLoop: { threshold: 1000 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('each reconnect reaches a new, live child', async () => {
    const id = 'rc-dies';
    const pids: number[] = [];
    const reasons: string[] = [];
    for (let i = 0; i < 8; i++) {
      const ws = await openWs(t.url, await t.token(id));
      const closed = closeOf(ws);
      const info = await rpc<{ pid: number }>(ws, 'fake/info');
      pids.push(info.pid);
      // The child dies once it has answered (not on a timer a loaded machine's start could
      // outlast): the next reconnect goes out at once, racing the shard's processing of the exit.
      void rpc(ws, 'fake/exit', { code: 5 }).catch(() => undefined);
      const c = await closed;
      reasons.push(`${c.code} ${c.reason}`);
    }
    expect(reasons.filter((r) => r.includes('GW_CHILD_CONNECT'))).toEqual([]);
    expect(pids).toHaveLength(8);
    expect(new Set(pids).size).toBe(8);
  });
});
