/**
 * Scenario 1: the object store (S3, s3rver on loopback) is down while a
 * workspace of the real codex stops, then comes back. Invariant 4: the home
 * stays on disk while the upload fails, is retried from the spool (or found
 * again by the next gateway's start-up recovery), and is deleted only once
 * the object exists; the marker file and the thread come back on the next
 * start.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3ObjectStore, Supervisor } from 'codex-app-gateway';
import type { ChildHandle } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { realCodexBin } from '../fixtures/codex-home.js';
import { startResponsesMock } from '../fixtures/responses-mock.js';
import type { ResponsesMock } from '../fixtures/responses-mock.js';
import { startS3rver } from '../fixtures/s3rver.js';
import type { S3rverHandle } from '../fixtures/s3rver.js';
import { quietLogger, spawnConfig, tempDir, waitFor } from '../helpers.js';
import { countLosses, exists, isRunning, killGroups, killLeftovers, processesPerWorkspace } from './markers.js';

const RETRY = { spoolRetryBaseMs: 200, spoolRetryMaxMs: 800 };

describe('fault: object store down during shutdown (real codex, S3)', () => {
  let mock: ResponsesMock;
  let s3: S3rverHandle;
  let root: string;
  const sups: Supervisor[] = [];
  const pids = new Set<number>();

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Kept', ' through', ' an', ' outage.'] });
    s3 = await startS3rver();
    root = await tempDir('cxg-faults-store-down-');
  });
  afterAll(async () => {
    await s3?.restart();
    for (const sup of sups) await sup.close().catch(() => {});
    killGroups(pids);
    if (root !== undefined) await killLeftovers(root);
    await s3?.dispose();
    await mock?.close();
    if (root !== undefined) await rm(root, { recursive: true, force: true });
  });

  function s3Store(): S3ObjectStore {
    return new S3ObjectStore({ bucket: s3.bucket, prefix: `down-${randomBytes(4).toString('hex')}`, endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
  }

  async function startSup(homeRoot: string, store: S3ObjectStore): Promise<Supervisor> {
    // No warm cache: a stored home is removed, so every start downloads and an outage cannot hide behind a warm copy.
    const sup = await Supervisor.start({ codexBin: realCodexBin(), homeRoot, store, shards: 2, logger: quietLogger, stopGraceMs: 3000, readyTimeoutMs: 15_000, homeCache: { enabled: false }, ...RETRY });
    sups.push(sup);
    return sup;
  }

  /** A real thread with a finished turn, and a marker file, in the workspace's home. */
  async function writeState(h: ChildHandle): Promise<{ threadId: string; marker: string }> {
    pids.add(h.pid);
    const c = await AppServerClient.connect(h.wsUrl, { token: h.wsToken });
    await c.initialize();
    const threadId = await c.startThread();
    const turn = await c.runTurn(threadId, 'keep this through the outage');
    expect(turn.status).toBe('completed');
    await c.close();
    const marker = `${h.workspaceId} ${h.generation}`;
    await writeFile(path.join(h.codexHome, 'fault-marker.txt'), marker);
    return { threadId, marker };
  }

  /** How many of the marker file, the listed thread, a new turn on it and `more` files a start of the workspace (or its running child) does not give. */
  async function lostOnNextStart(sup: Supervisor, id: string, state: { threadId: string; marker: string }, more: ReadonlyMap<string, string> = new Map()): Promise<number> {
    const h = await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl));
    pids.add(h.pid);
    const marker = await readFile(path.join(h.codexHome, 'fault-marker.txt'), 'utf8').catch(() => undefined);
    let lostMore = 0;
    for (const [rel, content] of more) if ((await readFile(path.join(h.codexHome, rel), 'utf8').catch(() => undefined)) !== content) lostMore++;
    const c = await AppServerClient.connect(h.wsUrl, { token: h.wsToken });
    await c.initialize();
    const threads = await c.listThreads();
    // Listed is not enough: the thread resumes and takes a new turn.
    const resumed = await c.request('thread/resume', { threadId: state.threadId }).then(
      () => true,
      () => false,
    );
    const turn = resumed ? await c.runTurn(state.threadId, 'and on after the outage').catch(() => undefined) : undefined;
    await c.close();
    return (marker === state.marker ? 0 : 1) + (threads.some((th) => th.id === state.threadId) ? 0 : 1) + (turn?.status === 'completed' ? 0 : 1) + lostMore;
  }

  /**
   * Waits for `dir` to disappear, checking on every look that the object
   * exists whenever the directory is already gone (objects only ever appear,
   * so a directory seen gone before its object is a deletion before upload).
   */
  async function deletedOnlyAfterUpload(dir: string, store: S3ObjectStore, id: string): Promise<void> {
    const until = Date.now() + 20_000;
    for (;;) {
      const dirThere = await exists(dir);
      const object = await store.head(id);
      if (!dirThere) {
        expect(object, `${dir} was deleted while ${store.describe(id)} did not exist`).toBeDefined();
        return;
      }
      if (Date.now() > until) throw new Error(`${dir} was not removed after the store came back`);
      await sleep(10);
    }
  }

  it('scenario 1: store down during a workspace shutdown → kept in the spool, retried, uploaded once it is back, deleted only after; marker and thread back', async (ctx) => {
    const losses = countLosses(ctx);
    const store = s3Store();
    const homeRoot = path.join(root, 'a', 'homes');
    const sup = await startSup(homeRoot, store);
    const id = 'store-down-shutdown';
    const h = await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl));
    const state = await writeState(h);
    losses.countWith(() => lostOnNextStart(sup, id, state));

    await s3.stop();
    try {
      const r = await sup.shutdown({ workspaceId: id });
      expect(r).toMatchObject({ stopped: true, saved: false, spooledDir: h.codexHome });
      expect(r.error).toMatch(/GW_STORE/);
      expect(await isRunning(h.pid)).toBe(false);
      expect((await processesPerWorkspace(homeRoot)).get(id)).toBeUndefined();
      // While the store is down the home stays, through several failed retries: watched for at
      // least 1.5 s and until a retry has failed (each packs a real codex home, slow on a loaded machine).
      const t0 = Date.now();
      let spool = (await sup.stats()).flatMap((s) => s.spool);
      while (Date.now() - t0 < 1500 || (spool[0]?.attempts ?? 0) < 2) {
        if (Date.now() - t0 > 30_000) throw new Error(`no retry failed within 30 s: ${JSON.stringify(spool)}`);
        expect(await exists(h.codexHome)).toBe(true);
        await sleep(50);
        spool = (await sup.stats()).flatMap((s) => s.spool);
      }
      expect(spool).toHaveLength(1);
      expect(spool[0]).toMatchObject({ workspaceId: id, dir: h.codexHome });
      expect(spool[0]?.attempts).toBeGreaterThanOrEqual(2);
      expect(await readFile(path.join(h.codexHome, 'fault-marker.txt'), 'utf8')).toBe(state.marker);
    } finally {
      await s3.restart();
    }
    await deletedOnlyAfterUpload(h.codexHome, store, id);
    await waitFor(async () => (await sup.stats()).every((s) => s.spool.length === 0), 10_000, 'the spool to drain');
  }, 90_000);

  it('scenario 1: store down when the workspace starts again → GW_STORE_UNAVAILABLE, never an empty start in its place; once it is back the state is there', async (ctx) => {
    const losses = countLosses(ctx);
    const store = s3Store();
    const homeRoot = path.join(root, 'c', 'homes');
    const sup = await startSup(homeRoot, store);
    const id = 'store-down-start';
    const h = await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl));
    const state = await writeState(h);
    losses.countWith(() => lostOnNextStart(sup, id, state));
    expect(await sup.shutdown({ workspaceId: id })).toMatchObject({ stopped: true, saved: true });
    const stored = await store.head(id);
    expect(stored).toBeDefined();

    await s3.stop();
    try {
      const err = await sup.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl)).then(
        () => undefined,
        (e: unknown) => e as Error & { code?: string },
      );
      expect(err?.code).toBe('GW_STORE_UNAVAILABLE');
      expect(err?.message).toContain(store.describe(id));
      expect(await exists(path.join(homeRoot, id))).toBe(false);
      expect((await processesPerWorkspace(homeRoot)).get(id)).toBeUndefined();
    } finally {
      await s3.restart();
    }
    expect(await store.head(id)).toEqual(stored);
  }, 90_000);

  it('scenario 1: store down during the gateway drain (close) → the home stays on disk; the next gateway uploads it, deletes it only after; marker and thread back', async (ctx) => {
    const losses = countLosses(ctx);
    const store = s3Store();
    const homeRoot = path.join(root, 'b', 'homes');
    const first = await startSup(homeRoot, store);
    const id = 'store-down-drain';
    const h = await first.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl));
    const state = await writeState(h);
    let current = first;
    losses.countWith(() => lostOnNextStart(current, id, state));

    await s3.stop();
    try {
      const results = await first.close();
      expect(results).toEqual([expect.objectContaining({ workspaceId: id, stopped: true, saved: false })]);
      expect(await isRunning(h.pid)).toBe(false);
      expect(await readFile(path.join(h.codexHome, 'fault-marker.txt'), 'utf8')).toBe(state.marker);
    } finally {
      await s3.restart();
    }

    // The next gateway on the same homes.root finds the home, uploads it, then removes it.
    const second = await startSup(homeRoot, store);
    current = second;
    await deletedOnlyAfterUpload(h.codexHome, store, id);
    await waitFor(async () => (await second.stats()).every((s) => s.spool.length === 0), 10_000, 'the spool to drain');
  }, 90_000);

  it('scenario 1: store still down when the next gateway starts → the workspace starts from its kept home (newest state), stops into the spool again, and is uploaded once the store is back', async (ctx) => {
    const losses = countLosses(ctx);
    const store = s3Store();
    const homeRoot = path.join(root, 'd', 'homes');
    const first = await startSup(homeRoot, store);
    const id = 'store-down-restart';
    const h = await first.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl));
    const state = await writeState(h);
    let current = first;
    const more = new Map<string, string>();
    losses.countWith(async () => {
      // A start after the body's checks, not the child they left running: the state has to come back from the store.
      await current.shutdown({ workspaceId: id });
      return lostOnNextStart(current, id, state, more);
    });

    await s3.stop();
    let second: Supervisor;
    let h2: ChildHandle;
    try {
      expect(await first.close()).toEqual([expect.objectContaining({ workspaceId: id, stopped: true, saved: false })]);
      // A new gateway while the store is still down: the start takes the kept home, not an empty one.
      second = await startSup(homeRoot, store);
      current = second;
      h2 = await second.ensureSubprocess({ workspaceId: id }, () => spawnConfig({}, mock.baseUrl));
      pids.add(h2.pid);
      expect(h2.codexHome).toBe(h.codexHome);
      expect(await readFile(path.join(h2.codexHome, 'fault-marker.txt'), 'utf8')).toBe(state.marker);
      await writeFile(path.join(h2.codexHome, 'second-marker.txt'), 'written while the store was down');
      more.set('second-marker.txt', 'written while the store was down');
      const r = await second.shutdown({ workspaceId: id });
      expect(r).toMatchObject({ stopped: true, saved: false, spooledDir: h2.codexHome });
    } finally {
      await s3.restart();
    }
    await deletedOnlyAfterUpload(h2.codexHome, store, id);
    await waitFor(async () => (await second.stats()).every((s) => s.spool.length === 0), 10_000, 'the spool to drain');
  }, 90_000);
});
