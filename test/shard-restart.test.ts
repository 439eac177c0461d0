/**
 * A shard worker that dies (a bug) does not take the gateway down or lose
 * work: a new worker takes the shard over, its recovery stops the orphaned
 * children and uploads their homes, and the workspaces start again.
 */
import { existsSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { Worker } from 'node:worker_threads';
import { S3ObjectStore } from 'codex-app-gateway';
import type { Supervisor } from 'codex-app-gateway';
import { closeOf, openWs, refusedUpgrade, rpc, startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SpawnConfig } from 'codex-app-gateway';
import { countingBuilder, spawnConfig, startTestSupervisor, waitFor } from './helpers.js';
import type { TestSupervisor } from './helpers.js';
import { isRunning, processesUnder } from './faults/markers.js';

/**
 * An S3 endpoint where reads find nothing (404) and uploads hang until
 * `release()`; after it, every upload is answered at once. Holds a dead
 * shard worker's upload in flight for as long as a test needs.
 */
async function heldS3(): Promise<{ store: S3ObjectStore; puts: () => number; release(): void; close(): Promise<void> }> {
  let puts = 0;
  let released = false;
  const held = new Set<http.ServerResponse>();
  const answer = (res: http.ServerResponse): void => void res.writeHead(200, { etag: '"0"' }).end();
  const server = http.createServer((req, res) => {
    req.resume();
    if (req.method === 'GET' || req.method === 'HEAD') {
      res.writeHead(404, { 'content-type': 'application/xml' }).end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message>none</Message></Error>');
      return;
    }
    puts++;
    if (released) answer(res);
    else held.add(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    store: new S3ObjectStore({ bucket: 'shard-death', endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'x', secretAccessKey: 'y' } }),
    puts: () => puts,
    release() {
      released = true;
      for (const res of held) answer(res);
      held.clear();
    },
    async close() {
      for (const res of held) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Ends a shard's worker thread the way a crash would (test-only reach into the supervisor). */
async function killShard(sup: Supervisor, index: number): Promise<void> {
  const refs = (sup as unknown as { shards: { refs: Array<{ worker: Worker }> } }).shards.refs;
  await refs[index]?.worker.terminate();
}

describe('shard worker death', () => {
  let t: TestSupervisor | undefined;
  let g: TestGateway | undefined;
  afterEach(async () => {
    await t?.close();
    await g?.close();
    t = undefined;
    g = undefined;
  });

  it('a new worker takes over: the orphaned child is stopped, its home uploaded, the workspace starts again with its state', async () => {
    t = await startTestSupervisor({ shards: 1 });
    const h = await t.sup.ensureSubprocess({ workspaceId: 'ws-orphan' }, countingBuilder());
    await writeFile(path.join(h.codexHome, 'marker.txt'), 'survives the shard');
    const restarted = once(t.sup, 'shard-restarted');
    await killShard(t.sup, 0);
    await restarted;
    // The dead worker's ChildProcess can no longer reap it: stopped means gone or a zombie.
    await waitFor(async () => !(await isRunning(h.pid)), 15_000, 'the orphaned child to be stopped');
    await waitFor(() => existsSync(path.join(t?.storeDir ?? '', 'ws-orphan.tar.gz')), 15_000, 'the home to be uploaded');
    const h2 = await t.sup.ensureSubprocess({ workspaceId: 'ws-orphan' }, countingBuilder());
    expect(h2.pid).not.toBe(h.pid);
    expect(await readFile(path.join(h2.codexHome, 'marker.txt'), 'utf8')).toBe('survives the shard');
    expect(t.sup.healthy).toBe(true);
  });

  it('a start the dead worker had in progress gives its spawn permit back: the next start does not wait for it forever', async () => {
    t = await startTestSupervisor({ shards: 1, limits: { maxConcurrentSpawns: 1 } });
    const slow = (): SpawnConfig => spawnConfig({ env: ['FAKE_CODEX_MODE=slow-ready', 'FAKE_CODEX_READY_AFTER_MS=60000'] });
    const pending = t.sup.ensureSubprocess({ workspaceId: 'ws-slow' }, slow).then(
      () => 'started',
      (err: unknown) => (err as { code?: string }).code,
    );
    // The start holds the only permit while its child waits to be ready.
    await waitFor(async () => (await processesUnder(t?.homeRoot ?? '')).length > 0, 15_000, 'the slow child to run');
    const restarted = once(t.sup, 'shard-restarted');
    await killShard(t.sup, 0);
    expect(await pending).toBe('GW_SHARD_FAILED');
    await restarted;
    const next = t.sup.ensureSubprocess({ workspaceId: 'ws-next' }, countingBuilder());
    const h = await Promise.race([next, sleep(15_000).then(() => undefined)]);
    expect(h, 'a start after the worker died got its permit').toBeDefined();
    expect(h?.isAlive()).toBe(true);
  });

  it('while the dead worker\'s upload still runs › its clients are closed with 1011 at once, its children (whole groups) are stopped, and its workspaces get 503 until the new worker answers', async () => {
    const s3 = await heldS3();
    try {
      g = await startTestGateway({}, { shards: 1, store: s3.store, stopGraceMs: 2000 });
      g.childEnv.set('ws-held', ['FAKE_CODEX_MODE=grandchild']);
      const ws = await openWs(g.url, await g.token('ws-held'));
      const info = await rpc<{ pid: number; codexHome: string }>(ws, 'fake/info');
      const grandchild = Number((await readFile(path.join(info.codexHome, 'grandchild.pid'), 'utf8')).trim());
      // Another workspace's stop: its upload hangs in the archive pool, so the new worker must wait.
      await openWs(g.url, await g.token('ws-uploading')).then((w) => rpc(w, 'fake/info').then(() => w.close()));
      const stopping = g.gw.sup.shutdown({ workspaceId: 'ws-uploading' }).catch(() => undefined);
      await waitFor(() => s3.puts() > 0, 15_000, 'the upload to reach the store');

      const closed = closeOf(ws);
      const restarted = once(g.gw.sup, 'shard-restarted');
      let isBack = false;
      void restarted.then(() => (isBack = true));
      await killShard(g.gw.sup, 0);
      const c = await closed;
      expect(c.code).toBe(1011);
      expect(c.reason).toContain('GW_SHARD_FAILED');
      await waitFor(async () => !(await isRunning(info.pid)) && !(await isRunning(grandchild)), 15_000, 'the dead worker\'s child and what it started to be stopped');
      const refused = await refusedUpgrade(g.url, { authorization: `Bearer ${await g.token('ws-held')}` });
      expect(refused.status).toBe(503);
      expect(refused.body).toContain('GW_SHARD_FAILED');
      expect(isBack, 'the new worker waited for the dead one\'s upload').toBe(false);

      s3.release();
      await restarted;
      await stopping;
      const again = await openWs(g.url, await g.token('ws-held'));
      expect((await rpc<{ pid: number }>(again, 'fake/info')).pid).not.toBe(info.pid);
      again.close();
      expect((await fetch(`${g.httpUrl}/readyz`)).status).toBe(200);
    } finally {
      await g?.close();
      g = undefined;
      await s3.close();
    }
  });

  it('clients of the dead shard are closed with 1011 and can reconnect to their workspace', async () => {
    g = await startTestGateway({}, { shards: 1 });
    const ws = await openWs(g.url, await g.token('ws-client'));
    await rpc(ws, 'fake/writeFile', { path: 'client.txt', content: 'kept' });
    const closed = closeOf(ws);
    const restarted = once(g.gw.sup, 'shard-restarted');
    await killShard(g.gw.sup, 0);
    const c = await closed;
    expect(c.code).toBe(1011);
    expect(c.reason).toContain('GW_SHARD_FAILED');
    await restarted;
    const again = await openWs(g.url, await g.token('ws-client'));
    const info = await rpc<{ codexHome: string }>(again, 'fake/info');
    expect(await readFile(path.join(info.codexHome, 'client.txt'), 'utf8')).toBe('kept');
    expect((await fetch(`${g.httpUrl}/readyz`)).status).toBe(200);
    again.close();
  });
});
