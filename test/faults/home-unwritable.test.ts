/**
 * Scenario 9: the disk of homes.root stops taking new directories. A new
 * workspace fails with GW_HOME_UNWRITABLE (the client sees 1011 naming it),
 * the gateway stays up, a workspace already running keeps working and keeps
 * its state, and once the disk takes writes again a new start succeeds.
 *
 * As root, directory modes do not stop writes, so homes.root is made
 * immutable with `chattr +i` (mode 0500 when not root); the attribute is
 * always taken off again, even when the test fails.
 */
import { existsSync } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileObjectStore, Supervisor } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { fakeCodexBin } from '../fixtures/codex-home.js';
import { closeOf, openWs, startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import { homeState, quietLogger, rejection, spawnConfig, tempDir, waitFor } from '../helpers.js';
import { countLosses, MarkerLedger, killLeftovers, makeUnwritable, processesPerWorkspace } from './markers.js';

describe('fault: homes.root not writable', () => {
  let g: TestGateway;
  let undo: (() => void) | undefined;

  beforeAll(async () => {
    g = await startTestGateway();
  });
  afterAll(async () => {
    undo?.();
    await g?.close();
    if (g !== undefined) await killLeftovers(g.homeRoot);
  });

  it('scenario 9: homes.root not writable → GW_HOME_UNWRITABLE (close 1011), the gateway stays up, a running workspace keeps working; a start succeeds once it is writable again', async (ctx) => {
    const losses = countLosses(ctx);
    const ledger = new MarkerLedger();
    const running = 'unwritable-running';
    const fresh = 'unwritable-fresh';
    // Markers of the running workspace that a start after its stop (and upload) does not hold.
    losses.countWith(async () => {
      undo?.();
      undo = undefined;
      await g.gw.sup.shutdown({ workspaceId: running });
      const h = await g.gw.sup.ensureSubprocess({ workspaceId: running }, () => spawnConfig());
      return (await ledger.missing(running, h.codexHome)).length;
    });

    // A workspace that runs before the disk goes bad, with a marker written by its child.
    const a = await AppServerClient.connect(g.url, { token: await g.token(running) });
    await a.request('fake/writeFile', { path: 'before.txt', content: 'written before' });
    ledger.record(running, 'before.txt', 'written before');
    const statusA = await g.gw.sup.workspaceStatus({ workspaceId: running });
    expect(statusA?.state).toBe('running');

    undo = makeUnwritable(g.homeRoot);
    try {
      // A new workspace cannot get a home: the client learns why, with the stable code.
      const ws = await openWs(g.url, await g.token(fresh));
      const closed = await closeOf(ws);
      expect(closed.code).toBe(1011);
      expect(closed.reason).toContain('GW_HOME_UNWRITABLE');
      const err = await rejection(g.gw.sup.ensureSubprocess({ workspaceId: fresh }, () => spawnConfig()));
      expect(err.code).toBe('GW_HOME_UNWRITABLE');
      expect(existsSync(path.join(g.homeRoot, fresh))).toBe(false);

      // The gateway stays up and ready.
      expect((await fetch(`${g.httpUrl}/healthz`)).status).toBe(200);
      expect((await fetch(`${g.httpUrl}/readyz`)).status).toBe(200);
      expect(g.gw.sup.healthy).toBe(true);

      // The running workspace keeps working: its connection, its home, a second client.
      await a.request('fake/writeFile', { path: 'during.txt', content: 'written while homes.root was unwritable' });
      ledger.record(running, 'during.txt', 'written while homes.root was unwritable');
      const a2 = await AppServerClient.connect(g.url, { token: await g.token(running) });
      const info = await a2.request<{ pid: number; codexHome: string }>('fake/info', {});
      expect(info.pid).toBe(statusA?.pid);
      expect(await readFile(path.join(info.codexHome, 'during.txt'), 'utf8')).toBe('written while homes.root was unwritable');
      await a2.close();
    } finally {
      undo();
      undo = undefined;
    }

    // Writable again: a new start succeeds at once (a full disk is not a crash loop).
    const b = await AppServerClient.connect(g.url, { token: await g.token(fresh) });
    const infoB = await b.request<{ codexHome: string }>('fake/info', {});
    expect(infoB.codexHome.startsWith(path.join(g.homeRoot, fresh))).toBe(true);
    await b.close();
    await a.close();

    // The running workspace's markers reach the store and come back on its next start.
    expect(await g.gw.sup.shutdown({ workspaceId: running })).toMatchObject({ stopped: true, saved: true });
    await waitFor(async () => !(await processesPerWorkspace(g.homeRoot)).has(running), 5000, 'the stopped child to be gone');
  }, 60_000);

  it('scenario 9: a home that cannot be changed after its upload (its state not marked stored) → used as it is, never taken for older or newer; after a restart it is settled against the store without a second upload', async (ctx) => {
    const losses = countLosses(ctx);
    const root = await tempDir('cxg-faults-undeletable-');
    const homeRoot = path.join(root, 'homes');
    const storeDir = path.join(root, 'store');
    const store = new FileObjectStore(storeDir);
    const start = (): Promise<Supervisor> => Supervisor.start({ codexBin: fakeCodexBin(), homeRoot, store, shards: 2, logger: quietLogger, stopGraceMs: 2000, readyTimeoutMs: 15_000 });
    const ledger = new MarkerLedger();
    const id = 'undeletable';
    let undoHome: (() => void) | undefined;
    let first: Supervisor | undefined;
    let second: Supervisor | undefined;
    try {
      first = await start();
      const h1 = await first.ensureSubprocess({ workspaceId: id }, () => spawnConfig());
      await ledger.write(id, h1.codexHome, 'gen-1.txt');
      // Markers of every generation that a start by the running supervisor does not hold.
      losses.countWith(async () => {
        const sup = second ?? first;
        if (sup === undefined) throw new Error('no supervisor is running to ask');
        return (await ledger.missing(id, (await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig())).codexHome)).length;
      });

      // The upload succeeds; recording that in the home does not (the disk refuses it).
      undoHome = makeUnwritable(h1.codexHome);
      expect(await first.shutdown({ workspaceId: id })).toMatchObject({ stopped: true, saved: true });
      undoHome();
      undoHome = undefined;
      const unmarked = await homeState(homeRoot, id);
      expect(unmarked).toMatchObject({ stored: false });
      const object = path.join(storeDir, `${id}.tar.gz`);
      const uploadedAt = (await stat(object)).mtimeMs;
      await first.close();
      first = undefined;

      // A gateway restart finds it unsaved-looking; the store holds its very generation.
      second = await start();
      await waitFor(async () => (await homeState(homeRoot, id))?.stored === true, 15_000, 'recovery to settle the home');
      expect((await homeState(homeRoot, id))?.generation).toBe(unmarked?.generation);
      expect((await stat(object)).mtimeMs).toBe(uploadedAt);

      const h2 = await second.ensureSubprocess({ workspaceId: id }, () => spawnConfig());
      expect(await ledger.missing(id, h2.codexHome)).toEqual([]);
      await ledger.write(id, h2.codexHome, 'gen-2.txt');
      expect(await second.shutdown({ workspaceId: id })).toMatchObject({ stopped: true, saved: true });
      const h3 = await second.ensureSubprocess({ workspaceId: id }, () => spawnConfig());
      expect(await ledger.missing(id, h3.codexHome), 'markers of the newest generation after recovery (invariant 2: never older state than the last run wrote)').toEqual([]);
    } finally {
      undoHome?.();
      // Before the cleanup below removes what there is to count.
      await losses.settle();
      await first?.close();
      await second?.close();
      await killLeftovers(homeRoot);
      await rm(root, { recursive: true, force: true });
    }
  }, 60_000);
});
