/**
 * Scenario 13: a shard worker thread dies under a live session while an
 * upload it started hangs (its S3 store is a blackhole at that moment). Its
 * client is closed at once with 1011 GW_SHARD_FAILED and its codex child is
 * stopped, without waiting for that upload; the new worker takes the shard
 * over only once the upload has ended (so it cannot overwrite newer state),
 * and its recovery stores the home; the client reconnects and its marker
 * and thread are back. The other shard's client is not disturbed. Real
 * codex, S3 (s3rver behind a switchable blackhole), an in-process gateway.
 */
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3ObjectStore } from 'codex-app-gateway';
import type { Supervisor } from 'codex-app-gateway';
import { startBlackhole } from '../fixtures/blackhole.js';
import type { Blackhole } from '../fixtures/blackhole.js';
import { startS3rver } from '../fixtures/s3rver.js';
import type { S3rverHandle } from '../fixtures/s3rver.js';
import { shardOf } from '../../src/shared/workspace-id.js';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { realCodexBin } from '../fixtures/codex-home.js';
import { startResponsesMock } from '../fixtures/responses-mock.js';
import type { ResponsesMock } from '../fixtures/responses-mock.js';
import { startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import { readObject, spawnConfig, waitFor } from '../helpers.js';
import { isRunning, killGroups, killLeftovers, recordLost, recordedChildPid, withDeadline } from './markers.js';

/** Ends a shard's worker thread the way a crash would (test-only reach into the supervisor). */
async function killShard(sup: Supervisor, index: number): Promise<void> {
  const refs = (sup as unknown as { shards: { refs: Array<{ worker: Worker }> } }).shards.refs;
  await refs[index]?.worker.terminate();
}

describe('fault: a shard worker dies under a live session (real codex)', () => {
  let mock: ResponsesMock;
  let s3: S3rverHandle;
  let hole: Blackhole;
  let g: TestGateway | undefined;
  const pids = new Set<number>();

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Back', ' after', ' the', ' shard.'] });
    s3 = await startS3rver();
    hole = await startBlackhole({ host: '127.0.0.1', port: Number(new URL(s3.endpoint).port) });
  });
  afterAll(async () => {
    hole?.open();
    const root = g === undefined ? undefined : path.dirname(g.homeRoot);
    // The gateway stops (and stores) what it still runs, the bystander's child
    // among them; only then is anything left a leftover.
    await g?.close();
    killGroups(pids);
    if (root !== undefined) await killLeftovers(root);
    await hole?.close();
    await s3?.dispose();
    await mock?.close();
  });

  it('scenario 13: shard worker dies → its client closed at once (1011), its child stopped, the home stored by the new worker; marker and thread back; the other shard untouched', async ({ task }) => {
    const store = new S3ObjectStore({ bucket: s3.bucket, prefix: 'shard-death', endpoint: hole.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
    g = await startTestGateway({}, { shards: 2, codexBin: realCodexBin(), store, stopGraceMs: 3000, configBuilder: () => spawnConfig({}, mock.baseUrl) });
    const gw = g;
    const victim = 'shard-death-a';
    const shard = shardOf(victim, 2);
    let bystander = 'shard-death-b';
    for (let i = 0; shardOf(bystander, 2) === shard; i++) bystander = `shard-death-b${i}`;
    let uploading = 'shard-death-c';
    for (let i = 0; shardOf(uploading, 2) !== shard; i++) uploading = `shard-death-c${i}`;

    const c = await AppServerClient.connect(gw.url, { token: await gw.token(victim) });
    const init = await c.initialize();
    const threadId = await c.startThread();
    expect((await c.runTurn(threadId, 'survive the shard')).status).toBe('completed');
    const marker = `${victim} ${Date.now()}`;
    await writeFile(path.join(init.codexHome, 'fault-marker.txt'), marker);
    const pid = (await recordedChildPid(init.codexHome)) as number;
    pids.add(pid);
    const other = await AppServerClient.connect(gw.url, { token: await gw.token(bystander) });
    const otherInit = await other.initialize();
    const otherPid = (await recordedChildPid(otherInit.codexHome)) as number;
    pids.add(otherPid);

    // A workspace of the same shard stops while the store swallows its upload.
    const third = await AppServerClient.connect(gw.url, { token: await gw.token(uploading) });
    pids.add((await recordedChildPid((await third.initialize()).codexHome)) as number);
    await third.close();
    hole.hold();
    const stopping = gw.gw.sup.shutdown({ workspaceId: uploading }).catch(() => undefined);
    await waitFor(() => hole.held > 0, 20_000, 'the upload to enter the blackhole');

    let lost = 2;
    try {
      const closed = c.whenClosed();
      const restarted = once(gw.gw.sup, 'shard-restarted');
      await killShard(gw.gw.sup, shard);
      const close = await withDeadline(closed, 15_000, () => 'the client of the dead shard is still open while its upload hangs');
      await withDeadline(
        waitFor(async () => !(await isRunning(pid)), 15_000, 'the dead worker\'s child to be stopped'),
        20_000,
        () => `child ${pid} still running while the dead worker's upload hangs`,
      );
      hole.open();
      await restarted;
      await stopping;
      await waitFor(async () => (await readObject(store, victim)) !== undefined, 30_000, 'the new worker\'s recovery to store the home');

      const c2 = await AppServerClient.connect(gw.url, { token: await gw.token(victim) });
      const init2 = await c2.initialize();
      pids.add((await recordedChildPid(init2.codexHome)) as number);
      const markerBack = await readFile(path.join(init2.codexHome, 'fault-marker.txt'), 'utf8').catch(() => undefined);
      const threads = await c2.listThreads();
      await c2.close();
      lost = (markerBack === marker ? 0 : 1) + (threads.some((th) => th.id === threadId) ? 0 : 1);

      expect(close.code).toBe(1011);
      expect(close.reason).toContain('GW_SHARD_FAILED');
      expect(other.isOpen, 'the other shard\'s client is untouched').toBe(true);
      expect(await other.listThreads()).toEqual([]);
      expect(await isRunning(otherPid)).toBe(true);
      expect(lost).toBe(0);
      await other.close();
    } finally {
      recordLost(task, lost);
    }
  }, 150_000);
});
