/**
 * Crash-loop protection as a user sees it: a workspace whose child keeps
 * dying early is refused fast with GW_CRASH_LOOP (clients get 1013), and
 * starts again by itself once the backoff has passed and the cause is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildHandle, SpawnConfig } from 'codex-app-gateway';
import { closeOf, openWs, rpc, startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import { processAlive, rejection, spawnConfig, startTestSupervisor } from '../helpers.js';
import type { TestSupervisor } from '../helpers.js';
import { sleep } from './helpers.js';

const CRASH_LOOP = { threshold: 3, windowMs: 3000, backoffBaseMs: 1500, backoffMaxMs: 3000 };

/** A builder whose child env can be changed between starts; counts its calls. */
function switchableBuilder(env: string[]): ((tok: string) => SpawnConfig) & { env: string[]; calls: number } {
  const b = Object.assign(
    (): SpawnConfig => {
      b.calls++;
      const cfg = spawnConfig();
      cfg.env = [...(cfg.env ?? []), ...b.env];
      return cfg;
    },
    { env, calls: 0 },
  );
  return b;
}

/** One start of a child that dies early: either the start fails, or the child dies right after. */
async function crashOnce(t: TestSupervisor, id: string, build: (tok: string) => SpawnConfig): Promise<string> {
  let h: ChildHandle;
  try {
    h = await t.sup.ensureSubprocess({ workspaceId: id }, build);
  } catch (err) {
    return (err as { code: string }).code;
  }
  await h.done();
  return 'died-after-ready';
}

describe('crash loop (Supervisor, fake codex)', () => {
  let t: TestSupervisor;
  beforeAll(async () => {
    t = await startTestSupervisor({ crashLoop: CRASH_LOOP, readyTimeoutMs: 5000, stopGraceMs: 500 });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a child that exits right after ready, 3 times in a row › ensure fails fast with GW_CRASH_LOOP; after the backoff, with the cause gone, it starts again', async () => {
    const id = 'cl-after-ready';
    const build = switchableBuilder(['FAKE_CODEX_MODE=exit-after-ready', 'FAKE_CODEX_EXIT_AFTER_MS=100']);
    const outcomes: string[] = [];
    for (let i = 0; i < CRASH_LOOP.threshold; i++) outcomes.push(await crashOnce(t, id, build));
    // Each one either failed its start or died within the window.
    for (const o of outcomes) expect(['GW_SPAWN_EXITED', 'GW_SPAWN_NOT_READY', 'died-after-ready']).toContain(o);
    expect(build.calls).toBe(CRASH_LOOP.threshold);

    const t0 = Date.now();
    const err = await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build));
    // Fast: no start is tried (the builder count below); well under the ready timeout a start could take.
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(err.code).toBe('GW_CRASH_LOOP');
    const retryAfterMs = (err as { details?: { retryAfterMs?: number } }).details?.retryAfterMs as number;
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(CRASH_LOOP.backoffBaseMs);
    // Refused before any work: the builder is not even asked.
    expect(build.calls).toBe(CRASH_LOOP.threshold);

    // The cause goes away; nothing else is done by hand.
    build.env = [];
    await sleep(retryAfterMs + 50);
    const h = await t.sup.ensureSubprocess({ workspaceId: id }, build);
    expect(h.isAlive()).toBe(true);
    await sleep(300);
    expect(processAlive(h.pid)).toBe(true);
    await t.sup.shutdown({ workspaceId: id });
  });

  it('a child that exits before its banner, 3 times in a row › GW_SPAWN_EXITED each time, then GW_CRASH_LOOP; the backoff grows on the next failure', async () => {
    const id = 'cl-before-banner';
    const build = switchableBuilder(['FAKE_CODEX_MODE=exit-before-banner']);
    for (let i = 0; i < CRASH_LOOP.threshold; i++) {
      expect((await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build))).code).toBe('GW_SPAWN_EXITED');
    }
    const first = await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build));
    expect(first.code).toBe('GW_CRASH_LOOP');
    const wait1 = (first as { details?: { retryAfterMs?: number } }).details?.retryAfterMs as number;
    await sleep(wait1 + 50);
    // Still broken: one more try is allowed, fails, and the next backoff is twice as long.
    expect((await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build))).code).toBe('GW_SPAWN_EXITED');
    const second = await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build));
    expect(second.code).toBe('GW_CRASH_LOOP');
    const wait2 = (second as { details?: { retryAfterMs?: number } }).details?.retryAfterMs as number;
    expect(wait2).toBeGreaterThan(CRASH_LOOP.backoffBaseMs);
    expect(wait2).toBeLessThanOrEqual(CRASH_LOOP.backoffMaxMs);
    expect(second.message).toContain('4 times in a row');
  });

  it('other workspaces are not held back by one in a crash loop', async () => {
    const bad = switchableBuilder(['FAKE_CODEX_MODE=exit-before-banner']);
    for (let i = 0; i < CRASH_LOOP.threshold; i++) await rejection(t.sup.ensureSubprocess({ workspaceId: 'cl-bad' }, bad));
    expect((await rejection(t.sup.ensureSubprocess({ workspaceId: 'cl-bad' }, bad))).code).toBe('GW_CRASH_LOOP');
    const h = await t.sup.ensureSubprocess({ workspaceId: 'cl-good' }, switchableBuilder([]));
    expect(h.isAlive()).toBe(true);
    await t.sup.shutdown({ workspaceId: 'cl-good' });
  });

  it('a child that lives past the window before it dies does not count: it is never held back', async () => {
    const t2 = await startTestSupervisor({ crashLoop: { ...CRASH_LOOP, windowMs: 300 }, stopGraceMs: 500 });
    try {
      // Its life counts from when the shard saw it ready (after /readyz answered), its timer from its
      // banner: far enough past the window that a loaded machine's late /readyz cannot bring it under.
      const build = switchableBuilder(['FAKE_CODEX_MODE=exit-after-ready', 'FAKE_CODEX_EXIT_AFTER_MS=1500']);
      for (let i = 0; i < CRASH_LOOP.threshold + 1; i++) {
        const h = await t2.sup.ensureSubprocess({ workspaceId: 'cl-long-lived' }, build);
        await h.done();
      }
      const h = await t2.sup.ensureSubprocess({ workspaceId: 'cl-long-lived' }, build);
      expect(h.isAlive()).toBe(true);
      await h.done();
    } finally {
      await t2.close();
    }
  });

  it('a builder failure is not a crash: it never leads to GW_CRASH_LOOP', async () => {
    const failing = (): SpawnConfig => {
      throw new Error('agentserver down');
    };
    for (let i = 0; i < CRASH_LOOP.threshold + 2; i++) {
      expect((await rejection(t.sup.ensureSubprocess({ workspaceId: 'cl-builder' }, failing))).code).toBe('GW_BUILDER_FAILED');
    }
  });
});

describe('crash loop (gateway clients)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({}, { crashLoop: CRASH_LOOP, readyTimeoutMs: 5000, stopGraceMs: 500 });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('clients see 1011 while the child keeps dying, then 1013 naming GW_CRASH_LOOP; after the backoff, with the cause gone, a client gets a working child', async () => {
    const id = 'cl-gw';
    // Each child dies well within the window, and after its client's connection to it is up:
    // a client whose child dies before that is given the next child (child-proxy.ts), which would
    // spend two children on one client.
    t.childEnv.set(id, ['FAKE_CODEX_MODE=exit-after-ready', 'FAKE_CODEX_EXIT_AFTER_MS=1500']);
    const closes: Array<{ code: number; reason: string }> = [];
    for (let i = 0; i <= CRASH_LOOP.threshold; i++) {
      const ws = await openWs(t.url, await t.token(id));
      closes.push(await closeOf(ws));
    }
    // Each of the first `threshold` clients reached a new child that then died.
    expect(closes.slice(0, -1), JSON.stringify(closes)).toEqual(Array.from({ length: CRASH_LOOP.threshold }, () => ({ code: 1011, reason: expect.stringMatching(/exited|GW_CHILD_CONNECT/) as string })));
    expect(closes.at(-1)?.code).toBe(1013);
    expect(closes.at(-1)?.reason).toContain('GW_CRASH_LOOP');

    // While backing off, every client is refused at once.
    const t0 = Date.now();
    const ws = await openWs(t.url, await t.token(id));
    const c = await closeOf(ws);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(c).toMatchObject({ code: 1013, reason: expect.stringContaining('GW_CRASH_LOOP') as string });

    t.childEnv.delete(id);
    await sleep(CRASH_LOOP.backoffBaseMs + 100);
    const ok = await openWs(t.url, await t.token(id));
    const info = await rpc<{ pid: number }>(ok, 'fake/info');
    expect(processAlive(info.pid)).toBe(true);
    ok.close();
  });
});
