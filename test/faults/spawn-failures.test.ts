/**
 * Scenario 8: a codex that cannot start. Each failure has its stable code and
 * leaves no process and no unsaved home behind (a home is kept only stored); through the gateway the client
 * sees close 1011 naming the code and the gateway stays up. The workspace's
 * stored state (a marker written by an earlier, healthy run) survives the
 * failed start. Every case uses its own workspace id, since failed starts
 * feed crash-loop protection.
 */
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileObjectStore } from 'codex-app-gateway';
import type { Supervisor } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { fakeCodexBin } from '../fixtures/codex-home.js';
import { closeOf, openWs, startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import { homeState, rejection, spawnConfig, startTestSupervisor, tempDir, waitFor } from '../helpers.js';
import type { TestSupervisor } from '../helpers.js';
import { countLosses, descendantsOf, killGroups, killLeftovers, processesUnder } from './markers.js';

/** Ready timeout of the supervisors whose starts fail; healthy starts get the generous default. */
const READY_TIMEOUT_MS = 5000;
const MARKER = 'marker.txt';

interface FailureCase {
  what: string;
  code: string;
  /** FAKE_CODEX_MODE of the fake codex, or `missing-binary`. */
  mode: string;
}

const CASES: FailureCase[] = [
  { what: 'the codex binary is missing', code: 'GW_CODEX_NOT_FOUND', mode: 'missing-binary' },
  { what: 'codex exits before its banner', code: 'GW_SPAWN_EXITED', mode: 'exit-before-banner' },
  { what: 'codex never prints a URL', code: 'GW_SPAWN_TIMEOUT', mode: 'no-url' },
  { what: 'codex /readyz never answers 200', code: 'GW_SPAWN_NOT_READY', mode: 'never-ready' },
];

/** Processes this test process started that are still there (children, their groups and sessions). */
async function leftovers(baseline: ReadonlySet<number>): Promise<number[]> {
  return (await descendantsOf(process.pid)).filter((p) => !baseline.has(p));
}

/** Records every process seen running in a home under `homeRoot` until stopped. */
function watchHomes(homeRoot: string, all: Set<number>): { pids: Set<number>; stop(): Promise<void> } {
  const pids = new Set<number>();
  let on = true;
  const loop = (async () => {
    while (on) {
      for (const p of await processesUnder(homeRoot)) {
        pids.add(p.pid);
        all.add(p.pid);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  return {
    pids,
    async stop() {
      on = false;
      await loop;
    },
  };
}

/** A healthy run of `id` that writes the marker and stores it. */
async function seed(sup: Supervisor, id: string): Promise<void> {
  const h = await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig());
  const c = await AppServerClient.connect(h.wsUrl, { token: h.wsToken });
  await c.request('fake/writeFile', { path: MARKER, content: `${id} before the failed start` });
  await c.close();
  expect(await sup.shutdown({ workspaceId: id })).toMatchObject({ stopped: true, saved: true });
}

/** Whether a healthy start after the failure still finds the marker (0 or 1 lost). */
async function lostAfter(sup: Supervisor, id: string): Promise<number> {
  const h = await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig());
  const got = await readFile(path.join(h.codexHome, MARKER), 'utf8').catch(() => undefined);
  await sup.shutdown({ workspaceId: id });
  return got === `${id} before the failed start` ? 0 : 1;
}

describe('fault: codex that cannot start', () => {
  let t: TestSupervisor;
  let missing: TestSupervisor;
  /** Seeds and checks stored state (same store), with a ready timeout a loaded machine cannot miss. */
  let healthy: TestSupervisor;
  let binDir: string;
  let baseline: Set<number>;
  const seen = new Set<number>();

  beforeAll(async () => {
    baseline = new Set(await descendantsOf(process.pid));
    binDir = await tempDir('cxg-faults-nobin-');
    t = await startTestSupervisor({ readyTimeoutMs: READY_TIMEOUT_MS, stopGraceMs: 500 });
    missing = await startTestSupervisor({ codexBin: path.join(binDir, 'no-such-codex'), store: new FileObjectStore(t.storeDir), readyTimeoutMs: READY_TIMEOUT_MS });
    healthy = await startTestSupervisor({ store: new FileObjectStore(t.storeDir) });
  });
  afterAll(async () => {
    await t?.close();
    await missing?.close();
    await healthy?.close();
    if (binDir !== undefined) await rm(binDir, { recursive: true, force: true });
    killGroups(seen);
    if (t !== undefined) await killLeftovers(t.homeRoot);
    if (missing !== undefined) await killLeftovers(missing.homeRoot);
  });

  for (const { what, code, mode } of CASES) {
    it(`scenario 8: ${what} → ${code}, no process and no unsaved home left, stored state intact (Supervisor API)`, async (ctx) => {
      const losses = countLosses(ctx);
      const failing = mode === 'missing-binary' ? missing : t;
      const id = `spawnfail-${mode}`;
      await seed(healthy.sup, id);
      losses.countWith(() => lostAfter(healthy.sup, id));
      const cfg = spawnConfig();
      cfg.env = [...(cfg.env ?? []), `FAKE_CODEX_MODE=${mode}`];
      const watching = watchHomes(failing.homeRoot, seen);

      const t0 = Date.now();
      const err = await rejection(failing.sup.ensureSubprocess({ workspaceId: id }, () => cfg));
      const ms = Date.now() - t0;
      await watching.stop();

      expect(err.code).toBe(code);
      if (code === 'GW_CODEX_NOT_FOUND') expect(err.message).toContain('no-such-codex');
      // A failure takes at most the ready timeout (plus the kill); it never hangs.
      expect(ms).toBeLessThan(READY_TIMEOUT_MS + 5000);
      if (mode === 'no-url' || mode === 'never-ready') expect(watching.pids.size, 'a child was started').toBeGreaterThan(0);
      await waitFor(async () => (await homeState(failing.homeRoot, id))?.stored ?? true, 10_000, `${id}'s home to be stored or gone`);
      await waitFor(async () => (await leftovers(baseline)).length === 0, 5000, 'no process of the test process left');
      expect(await processesUnder(failing.homeRoot)).toEqual([]);
    }, 30_000);
  }

  describe('through the gateway', () => {
    let g: TestGateway;
    let gwHealthy: TestSupervisor;
    beforeAll(async () => {
      g = await startTestGateway({}, { readyTimeoutMs: READY_TIMEOUT_MS, stopGraceMs: 500, codexBin: fakeCodexBin() });
      gwHealthy = await startTestSupervisor({ store: new FileObjectStore(g.storeDir) });
    });
    afterAll(async () => {
      await g?.close();
      await gwHealthy?.close();
    });

    for (const { what, code, mode } of CASES.filter((c) => c.mode !== 'missing-binary')) {
      it(`scenario 8: ${what} → the client is closed with 1011 naming ${code}; the gateway stays up`, async (ctx) => {
        const losses = countLosses(ctx);
        const id = `gw-spawnfail-${mode}`;
        await seed(gwHealthy.sup, id);
        losses.countWith(() => lostAfter(gwHealthy.sup, id));
        g.childEnv.set(id, [`FAKE_CODEX_MODE=${mode}`]);
        const watching = watchHomes(g.homeRoot, seen);
        const ws = await openWs(g.url, await g.token(id));
        const closed = await closeOf(ws);
        await watching.stop();

        expect(closed.code).toBe(1011);
        expect(closed.reason).toContain(code);
        expect((await fetch(`${g.httpUrl}/healthz`)).status).toBe(200);
        expect((await fetch(`${g.httpUrl}/readyz`)).status).toBe(200);
        await waitFor(async () => (await homeState(g.homeRoot, id))?.stored ?? true, 10_000, `${id}'s home to be stored or gone`);
        await waitFor(async () => (await leftovers(baseline)).length === 0, 5000, 'no process of the test process left');
        expect(await processesUnder(g.homeRoot)).toEqual([]);
      }, 30_000);
    }
  });
});
