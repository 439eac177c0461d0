/**
 * Scenario 12: shutdown.budget is a promise. The S3 store turns into a
 * blackhole (it accepts connections and never answers) while an idle-reaper
 * pass is uploading one workspace's home and another workspace has a
 * client; then SIGTERM. The gateway exits within its budget anyway, leaves
 * no codex process behind, and its last report counts both homes as
 * unsaved (they stay on disk). Once the store answers again, the next start
 * stores them and the threads come back. Real codex, S3 (s3rver behind a
 * blackhole), the gateway as a real process.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3ObjectStore, signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { startBlackhole } from '../fixtures/blackhole.js';
import type { Blackhole } from '../fixtures/blackhole.js';
import { TEST_API_KEY } from '../fixtures/codex-home.js';
import { startResponsesMock } from '../fixtures/responses-mock.js';
import type { ResponsesMock } from '../fixtures/responses-mock.js';
import { startS3rver } from '../fixtures/s3rver.js';
import type { S3rverHandle } from '../fixtures/s3rver.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from '../gateway-process.js';
import type { GatewayProcess } from '../gateway-process.js';
import { readObject, tempDir, waitFor } from '../helpers.js';
import { killGroups, killLeftovers, processesUnder, recordLost, recordedChildPid, withDeadline } from './markers.js';
import { MARKER_FILE, whatComesBack } from './what-comes-back.js';

const SECRET = 'faults-secret-faults-secret-faults-secret-00';
const BUDGET_MS = 8000;

describe('fault: the store is a blackhole during a drain (real codex, S3)', () => {
  let mock: ResponsesMock;
  let s3: S3rverHandle;
  let hole: Blackhole;
  let dir: string;
  let config: string;
  const prefix = `blackhole-${randomBytes(4).toString('hex')}`;
  const gateways: GatewayProcess[] = [];
  const pids = new Set<number>();
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Kept', ' on', ' disk.'] });
    s3 = await startS3rver();
    hole = await startBlackhole({ host: '127.0.0.1', port: Number(new URL(s3.endpoint).port) });
    dir = await tempDir('cxg-faults-blackhole-');
    env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info', AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey };
    config = await writeConfig(
      path.join(dir, 'gateway.toml'),
      realCodexToml({
        dir,
        secret: SECRET,
        mockBaseUrl: mock.baseUrl,
        extra: [
          '[store]',
          `url = "s3://${s3.bucket}/${prefix}"`,
          '[store.s3]',
          `endpoint = "${hole.endpoint}"`,
          'force_path_style = true',
          '[spawn]',
          'stop_grace = "3s"',
          'ready_timeout = "15s"',
          '[reaper]',
          'interval = "1s"',
          'idle_after = "2s"',
          '[shutdown]',
          `budget = "${BUDGET_MS / 1000}s"`,
        ],
      }),
    );
  });
  afterAll(async () => {
    hole?.open();
    for (const gw of gateways) await gw.stop('SIGKILL');
    killGroups(pids);
    if (dir !== undefined) await killLeftovers(dir);
    await hole?.close();
    await s3?.dispose();
    await mock?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  async function session(url: string, id: string): Promise<{ client: AppServerClient; home: string; threadId: string; marker: string }> {
    const client = await AppServerClient.connect(url, { token: await signWorkspaceToken({ secret: SECRET, workspaceId: id, expiresIn: '10m' }) });
    const init = await client.initialize();
    const threadId = await client.startThread();
    expect((await client.runTurn(threadId, 'keep this through a blackhole')).status).toBe('completed');
    const marker = `${id} ${Date.now()}`;
    await writeFile(path.join(init.codexHome, MARKER_FILE), marker);
    pids.add((await recordedChildPid(init.codexHome)) as number);
    return { client, home: init.codexHome, threadId, marker };
  }

  it('scenario 12: store blackholed while a reaper pass uploads, then SIGTERM → exit within shutdown.budget, no child left, both homes reported unsaved and kept; stored by the next start', async ({ task }) => {
    const homeRoot = path.join(dir, 'homes');
    const first = await startGatewayProcess(config, env);
    gateways.push(first);
    // Held by its client: not idle. The other goes idle and its reaper pass uploads into the hole.
    const held = await session(first.url, 'blackhole-held');
    const idle = await session(first.url, 'blackhole-idle');
    await idle.client.close();
    hole.hold();
    await first.waitForLog((l) => l.msg === 'reaping idle child' && l.workspaceId === 'blackhole-idle', 30_000);
    await waitFor(() => hole.held > 0, 20_000, 'the reaper\'s upload to enter the blackhole');

    let lost = 4;
    try {
      const t0 = Date.now();
      first.proc.kill('SIGTERM');
      const exit = await withDeadline(first.exited, BUDGET_MS + 20_000, () => `still running ${Date.now() - t0} ms after SIGTERM (budget ${BUDGET_MS} ms)`);
      const tookMs = Date.now() - t0;
      const stopped = first.logs.find((l) => l.msg === 'gateway stopped');
      // Children got SIGTERM and SIGKILL as the gateway ended; give the kernel a moment to finish them.
      let left = await processesUnder(homeRoot);
      for (const until = Date.now() + 2000; left.length > 0 && Date.now() < until; left = await processesUnder(homeRoot)) await new Promise((r) => setTimeout(r, 25));
      const kept = [held.home, idle.home].filter((h) => existsSync(h));

      // The store answers again: the next start stores both homes.
      hole.open();
      const second = await startGatewayProcess(config, env);
      gateways.push(second);
      const direct = new S3ObjectStore({ bucket: s3.bucket, prefix, endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
      await waitFor(async () => (await readObject(direct, 'blackhole-held')) !== undefined && (await readObject(direct, 'blackhole-idle')) !== undefined, 40_000, 'both homes to be stored by the next start');
      lost = 0;
      for (const [id, s] of [['blackhole-held', held], ['blackhole-idle', idle]] as const) {
        const back = await whatComesBack(second.url, await signWorkspaceToken({ secret: SECRET, workspaceId: id, expiresIn: '10m' }));
        pids.add((await recordedChildPid(back.codexHome)) as number);
        if (back.marker !== s.marker) lost += 1;
        if (!back.threads.includes(s.threadId)) lost += 1;
      }

      expect(tookMs, `exit ${tookMs} ms after SIGTERM, budget ${BUDGET_MS} ms`).toBeLessThanOrEqual(BUDGET_MS + 1000);
      expect(exit.signal).toBeNull();
      expect(stopped, 'the final report').toMatchObject({ saved: 0, unsaved: 2, timedOut: true });
      expect(left, 'codex processes left by the gateway').toEqual([]);
      expect(kept, 'unsaved homes stay on disk').toHaveLength(2);
      expect(lost).toBe(0);
      expect((await second.stop('SIGTERM')).code).toBe(0);
    } finally {
      recordLost(task, lost);
    }
  }, 180_000);
});
