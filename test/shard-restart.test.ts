/**
 * A shard worker that dies (a bug) does not take the gateway down or lose
 * work: a new worker takes the shard over, its recovery stops the orphaned
 * children and uploads their homes, and the workspaces start again.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { Worker } from 'node:worker_threads';
import type { Supervisor } from 'codex-app-gateway';
import { closeOf, openWs, rpc, startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SpawnConfig } from 'codex-app-gateway';
import { countingBuilder, spawnConfig, startTestSupervisor, waitFor } from './helpers.js';
import type { TestSupervisor } from './helpers.js';
import { isRunning, processesUnder } from './faults/markers.js';

/** Ends a shard's worker thread the way a crash would (test-only reach into the supervisor). */
async function killShard(sup: Supervisor, index: number): Promise<void> {
  const refs = (sup as unknown as { shardRefs: Array<{ worker: Worker }> }).shardRefs;
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
