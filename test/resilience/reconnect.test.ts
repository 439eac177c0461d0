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
    t.childEnv.set(id, ['FAKE_CODEX_MODE=exit-after-ready', 'FAKE_CODEX_EXIT_AFTER_MS=400']);
    const pids: number[] = [];
    const reasons: string[] = [];
    for (let i = 0; i < 8; i++) {
      const ws = await openWs(t.url, await t.token(id));
      const closed = closeOf(ws);
      const info = await Promise.race([rpc<{ pid: number }>(ws, 'fake/info'), closed.then((c) => c)]);
      const c = await closed;
      reasons.push(`${c.code} ${c.reason}`);
      if ('pid' in info) pids.push(info.pid);
    }
    expect(reasons.filter((r) => r.includes('GW_CHILD_CONNECT'))).toEqual([]);
    expect(pids).toHaveLength(8);
    expect(new Set(pids).size).toBe(8);
  });
});
