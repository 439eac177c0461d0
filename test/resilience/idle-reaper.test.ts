/**
 * The idle reaper as users see it: a child with a gateway client attached
 * outlives idleAfter and is stopped at hardIdleAfter; maxAge stops even a
 * busy child; a child touched while a reap is under way is not stopped.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { IdleReaper } from 'codex-app-gateway';
import { closeOf, openWs, rpc, startTestGateway } from '../gateway-helpers.js';
import { countingBuilder, processAlive, startTestSupervisor, waitFor } from '../helpers.js';
import { builderWith, sleep } from './helpers.js';

describe('IdleReaper with gateway clients', () => {
  it('a child with a client attached is not reaped at idleAfter, but is at hardIdleAfter (1001); one without a client goes at idleAfter', async () => {
    const hardIdleAfterMs = 3000;
    // The reaper (the gateway's own, as `reaper` starts it) runs once both children are up: how long
    // a start takes on a loaded machine must not count against either idle time.
    const t = await startTestGateway();
    const reaping = new AbortController();
    try {
      const ws = await openWs(t.url, await t.token('ir-client'));
      const info = await rpc<{ pid: number }>(ws, 'fake/info');
      const lonely = await t.gw.sup.ensureSubprocess({ workspaceId: 'ir-lonely' }, builderWith());
      await rpc(ws, 'fake/writeFile', { path: 'state.txt', content: 'reaped-with-client' });
      const closed = closeOf(ws);
      const t0 = Date.now();
      // The lonely child's last activity comes after the client's last frame.
      t.gw.sup.touch({ workspaceId: 'ir-lonely' });
      await waitFor(async () => ((await t.gw.sup.workspaceStatus({ workspaceId: 'ir-lonely' }))?.lastActivity ?? 0) >= t0, 5000, 'the touch to land');
      void new IdleReaper(t.gw.sup, { intervalMs: 50, idleAfterMs: 300, hardIdleAfterMs }).run(reaping.signal);

      // The lonely child goes at idleAfter, long before hardIdleAfter.
      await lonely.done();
      expect(Date.now() - t0).toBeLessThan(hardIdleAfterMs - 100);
      // The one with a client has been idle at least as long (its last frame came first): still there.
      expect(processAlive(info.pid)).toBe(true);
      expect(ws.readyState).toBe(ws.OPEN);

      const c = await closed;
      const idleFor = Date.now() - t0;
      expect(idleFor).toBeGreaterThanOrEqual(hardIdleAfterMs - 100);
      // Generous for a loaded machine; a reaper that never stops it fails here or at the test timeout.
      expect(idleFor).toBeLessThan(hardIdleAfterMs + 8000);
      expect(c.code).toBe(1001);
      expect(c.reason).toContain('idle');
      await waitFor(() => !processAlive(info.pid), 5000, 'the reaped child to exit');
      await waitFor(() => existsSync(path.join(t.storeDir, 'ir-client.tar.gz')), 5000, 'the reaped home to be uploaded');
    } finally {
      reaping.abort();
      await t.close();
    }
  });

  it('maxAge › a child older than maxAge is stopped even while its client keeps talking', async () => {
    // maxAge counts from the start of the spawn: above what a start takes on a loaded machine,
    // or the child is gone before the client's first request is answered.
    const maxAgeMs = 4000;
    const t = await startTestGateway({ reaper: { intervalMs: 50, idleAfterMs: 60_000, maxAgeMs } });
    try {
      const ws = await openWs(t.url, await t.token('ir-old'));
      const info = await rpc<{ pid: number }>(ws, 'fake/info');
      const closed = closeOf(ws);
      const t0 = Date.now();
      let talking = true;
      const talk = (async () => {
        while (talking && ws.readyState === ws.OPEN) {
          ws.send('still here');
          await sleep(50);
        }
      })();
      const c = await closed;
      talking = false;
      await talk;
      expect(Date.now() - t0).toBeLessThan(maxAgeMs + 8000);
      expect(c.code).toBe(1001);
      await waitFor(() => !processAlive(info.pid), 5000, 'the old child to exit');
    } finally {
      await t.close();
    }
  });
});

describe('IdleReaper decisions are made when each stop begins', () => {
  it('a child touched while earlier reaps of the same tick are still stopping is not stopped', async () => {
    // One shard, nine idle children: the reap stops eight at a time, so the
    // ninth waits for a slot; these eight take ~1 s each (they ignore SIGTERM).
    const t = await startTestSupervisor({ shards: 1, stopGraceMs: 1200 });
    try {
      const stubborn = builderWith(['FAKE_CODEX_MODE=ignore-sigterm']);
      for (let i = 0; i < 8; i++) await t.sup.ensureSubprocess({ workspaceId: `ir-slow-${i}` }, stubborn);
      const last = await t.sup.ensureSubprocess({ workspaceId: 'ir-ninth' }, countingBuilder());
      // idleAfter is far longer than one stop takes, even with its upload on a loaded
      // machine, so a touch during the tick keeps the ninth.
      const idleAfterMs = 6000;
      await sleep(idleAfterMs + 100);
      const reaper = new IdleReaper(t.sup, { intervalMs: 60_000, idleAfterMs });
      const tick = reaper.tick();
      // A client speaks to the ninth once the first eight are being stopped (a stopping workspace has no status).
      await waitFor(async () => (await t.sup.workspaceStatus({ workspaceId: 'ir-slow-0' })) === undefined, 10_000, 'the first stops of the tick to begin');
      expect((await t.sup.workspaceStatus({ workspaceId: 'ir-ninth' }))?.state).toBe('running');
      t.sup.touch({ workspaceId: 'ir-ninth' });
      const stopped = await tick;
      expect(stopped.map((r) => r.workspaceId)).not.toContain('ir-ninth');
      expect(stopped).toHaveLength(8);
      expect(last.isAlive()).toBe(true);
      expect(processAlive(last.pid)).toBe(true);
    } finally {
      await t.close();
    }
  }, 60_000);
});

describe('IdleReaper options', () => {
  const sup = { reapIdle: () => Promise.resolve([]) };
  it.each([
    ['intervalMs 0', { intervalMs: 0, idleAfterMs: 1 }],
    ['idleAfterMs negative', { intervalMs: 1, idleAfterMs: -5 }],
    ['idleAfterMs NaN', { intervalMs: 1, idleAfterMs: Number.NaN }],
    ['hardIdleAfterMs NaN', { intervalMs: 1, idleAfterMs: 1, hardIdleAfterMs: Number.NaN }],
    ['hardIdleAfterMs 0', { intervalMs: 1, idleAfterMs: 1, hardIdleAfterMs: 0 }],
    ['maxAgeMs negative', { intervalMs: 1, idleAfterMs: 1, maxAgeMs: -1 }],
    ['maxAgeMs a string', { intervalMs: 1, idleAfterMs: 1, maxAgeMs: '5' as unknown as number }],
  ])('%s › GW_BAD_OPTIONS', (_name, o) => {
    expect(() => new IdleReaper(sup, o)).toThrow(expect.objectContaining({ code: 'GW_BAD_OPTIONS' }) as Error);
  });

  it('hardIdleAfter defaults to 4 × idleAfter; maxAge is passed on only when set', async () => {
    const seen: unknown[] = [];
    const recorder = { reapIdle: (o: unknown) => (seen.push(o), Promise.resolve([])) };
    await new IdleReaper(recorder, { intervalMs: 1, idleAfterMs: 250 }).tick();
    await new IdleReaper(recorder, { intervalMs: 1, idleAfterMs: 250, hardIdleAfterMs: 300, maxAgeMs: 1000 }).tick();
    expect(seen).toEqual([
      { idleAfterMs: 250, hardIdleAfterMs: 1000 },
      { idleAfterMs: 250, hardIdleAfterMs: 300, maxAgeMs: 1000 },
    ]);
  });
});
