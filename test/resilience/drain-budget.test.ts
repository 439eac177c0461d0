/**
 * drainBudgetMs: close() does not wait past the budget for an upload that
 * cannot finish; the home stays on disk (with its marker) and the next
 * Supervisor on the same homeRoot uploads it once the store works.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileObjectStore, S3ObjectStore, Supervisor } from 'codex-app-gateway';
import type { ObjectStore, StopResult, SupervisorOptions } from 'codex-app-gateway';
import { fakeCodexBin } from '../fixtures/codex-home.js';
import { countingBuilder, homeState, processAlive, quietLogger, tempDir, waitFor } from '../helpers.js';
import { breakableStore, readInHome, sleep, writeInHome } from './helpers.js';

const MARKER = '.cxg-home.json';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  // Every cleanup runs, even when an earlier one fails (a temp dir is never left behind).
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});

async function start(homeRoot: string, store: ObjectStore, o: Partial<SupervisorOptions> = {}): Promise<Supervisor> {
  const sup = await Supervisor.start({ codexBin: fakeCodexBin(), homeRoot, store, shards: 2, logger: quietLogger, stopGraceMs: 1000, readyTimeoutMs: 15_000, ...o });
  cleanups.push(() => sup.close().then(() => {}));
  return sup;
}

/**
 * An S3 endpoint where reads find nothing (404 NoSuchKey) and writes are
 * slow: answered after `putDelayMs`, or never when it is undefined.
 */
async function slowS3(putDelayMs?: number): Promise<{ endpoint: string; puts: () => number; close(): Promise<void> }> {
  let puts = 0;
  const hanging = new Set<http.ServerResponse>();
  const timers = new Set<NodeJS.Timeout>();
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' || req.method === 'HEAD') {
      req.resume();
      res.writeHead(404, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>none</Message></Error>');
      return;
    }
    puts++;
    req.resume();
    hanging.add(res);
    if (putDelayMs !== undefined) {
      const timer = setTimeout(() => {
        timers.delete(timer);
        hanging.delete(res);
        res.writeHead(200, { etag: '"0"' }).end();
      }, putDelayMs);
      timers.add(timer);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    puts: () => puts,
    async close() {
      for (const t of timers) clearTimeout(t);
      for (const res of hanging) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function s3Store(endpoint: string): S3ObjectStore {
  return new S3ObjectStore({ bucket: 'drain-test', endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'x', secretAccessKey: 'y' } });
}

describe('drain budget', () => {
  it('a store that is down › close() returns at once with saved:false; the home stays with its marker; a new Supervisor uploads it once the store is back', async () => {
    const root = await tempDir('cxg-drain-');
    cleanups.push(() => import('node:fs/promises').then((fs) => fs.rm(root, { recursive: true, force: true })));
    const homeRoot = path.join(root, 'homes');
    const storeDir = path.join(root, 'store');
    const store = breakableStore(storeDir);
    cleanups.push(() => store.up());
    const sup = await start(homeRoot, new FileObjectStore(storeDir), { drainBudgetMs: 2000, spoolRetryBaseMs: 60_000 });
    const h = await sup.ensureSubprocess({ workspaceId: 'drain-down' }, countingBuilder());
    await writeInHome(h, 'state.txt', 'unsaved-work');
    await store.down();

    const t0 = Date.now();
    const results = await sup.close();
    // Never a spool retry (60 s) or more: generous for a loaded machine.
    expect(Date.now() - t0).toBeLessThan(2000 + 8000);
    expect(results).toEqual([expect.objectContaining({ workspaceId: 'drain-down', stopped: true, saved: false }) as StopResult]);
    expect(processAlive(h.pid)).toBe(false);
    expect(existsSync(h.codexHome)).toBe(true);
    expect(await readFile(path.join(h.codexHome, 'state.txt'), 'utf8')).toBe('unsaved-work');
    expect(JSON.parse(await readFile(path.join(h.codexHome, MARKER), 'utf8'))).toMatchObject({ stored: false, pid: h.pid });

    await store.up();
    const sup2 = await start(homeRoot, new FileObjectStore(storeDir));
    await waitFor(async () => (await homeState(homeRoot, 'drain-down'))?.stored === true, 10_000, 'the left home to be uploaded');
    expect(existsSync(path.join(storeDir, 'drain-down.tar.gz'))).toBe(true);
    const h2 = await sup2.ensureSubprocess({ workspaceId: 'drain-down' }, countingBuilder());
    expect(await readInHome(h2, 'state.txt')).toBe('unsaved-work');
  });

  it('a store slower than the budget › each stop answers at the budget with saved:false; no home is deleted, even when the late uploads succeed; a new Supervisor starts from each and stores it', async () => {
    const root = await tempDir('cxg-drain-');
    cleanups.push(() => import('node:fs/promises').then((fs) => fs.rm(root, { recursive: true, force: true })));
    const homeRoot = path.join(root, 'homes');
    const putDelayMs = 4000;
    const s3 = await slowS3(putDelayMs);
    cleanups.push(() => s3.close());
    const budget = 1000;
    const sup = await start(homeRoot, s3Store(s3.endpoint), { drainBudgetMs: budget });
    const ids = ['drain-slow-1', 'drain-slow-2', 'drain-slow-3'];
    const handles = await Promise.all(ids.map((id) => sup.ensureSubprocess({ workspaceId: id }, countingBuilder())));
    for (const h of handles) await writeInHome(h, 'state.txt', `work-of-${h.workspaceId}`);

    const t0 = Date.now();
    const results = await sup.close();
    const took = Date.now() - t0;
    // At least one upload reached the store and was still hanging when the budget ran out.
    expect(s3.puts()).toBeGreaterThanOrEqual(1);
    // ArchivePool.close still waits for the uploads in flight (see the next test); never much longer.
    expect(took).toBeLessThan(putDelayMs + 8000);
    expect(results.map((r) => r.workspaceId).sort()).toEqual(ids);
    for (const r of results) {
      expect(r).toMatchObject({ stopped: true, saved: false });
      expect(r.error).toContain(`${budget} ms budget`);
    }
    for (const h of handles) {
      expect(processAlive(h.pid)).toBe(false);
      expect(await readFile(path.join(h.codexHome, 'state.txt'), 'utf8')).toBe(`work-of-${h.workspaceId}`);
      expect(existsSync(path.join(h.codexHome, MARKER))).toBe(true);
    }

    const storeDir = path.join(root, 'store');
    const sup2 = await start(homeRoot, new FileObjectStore(storeDir));
    for (const h of handles) {
      // Stored late to the slow store, or not at all: either way the work is there and reaches the new store.
      const again = await sup2.ensureSubprocess({ workspaceId: h.workspaceId }, countingBuilder());
      expect(await readInHome(again, 'state.txt')).toBe(`work-of-${h.workspaceId}`);
      expect(await sup2.shutdown({ workspaceId: h.workspaceId })).toMatchObject({ saved: true });
      expect(existsSync(path.join(storeDir, `${h.workspaceId}.tar.gz`))).toBe(true);
    }
  }, 90_000);

  // Regression: Supervisor.close() used to wait for the archive task still
  // running (piscina close, then its 30 s closeTimeout, then a rejection).
  it('a store that never answers an upload › Supervisor.close() returns within the budget', async () => {
    const root = await tempDir('cxg-drain-');
    cleanups.push(() => import('node:fs/promises').then((fs) => fs.rm(root, { recursive: true, force: true })));
    const s3 = await slowS3(undefined);
    const budget = 1000;
    const sup = await Supervisor.start({ codexBin: fakeCodexBin(), homeRoot: path.join(root, 'homes'), store: s3Store(s3.endpoint), shards: 1, logger: quietLogger, stopGraceMs: 1000, drainBudgetMs: budget });
    // Cleanup: ending the hung request lets the pool (and so close) finish.
    cleanups.push(async () => {
      await s3.close();
      await sup.close().catch(() => {});
    });
    const h = await sup.ensureSubprocess({ workspaceId: 'drain-hung' }, countingBuilder());
    const closing = sup.close();
    closing.catch(() => {});
    // Far below piscina's 30 s closeTimeout, generous for a loaded machine.
    const outcome = await Promise.race([closing.then(() => 'closed'), sleep(budget + 10_000).then(() => 'still closing')]);
    expect(processAlive(h.pid)).toBe(false);
    expect(existsSync(h.codexHome)).toBe(true);
    expect(outcome).toBe('closed');
  });
});
