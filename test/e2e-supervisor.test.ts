/**
 * End to end with the real codex binary (from @openai/codex, pinned): a turn
 * runs against the loopback Responses mock, the workspace is stopped and its
 * CODEX_HOME stored, and a new process started from the store lists the
 * thread. Once with the file store, once with S3 (s3rver on loopback).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileObjectStore, S3ObjectStore, defaultCodexBin } from 'codex-app-gateway';
import type { ObjectStore } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { realCodexBin } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { startS3rver } from './fixtures/s3rver.js';
import type { S3rverHandle } from './fixtures/s3rver.js';
import { homeDirs, homeState, rejection, spawnConfig, startTestSupervisor, tempDir, waitFor } from './helpers.js';
import { rm } from 'node:fs/promises';
import path from 'node:path';

describe('Supervisor end to end with the real codex binary', () => {
  let mock: ResponsesMock;
  let s3: S3rverHandle;
  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Hello', ' from', ' the', ' mock.'] });
    s3 = await startS3rver();
  });
  const dirs: string[] = [];
  const keep = async (dir: Promise<string>): Promise<string> => {
    dirs.push(await dir);
    return dirs[dirs.length - 1] as string;
  };
  afterAll(async () => {
    await mock?.close();
    await s3?.dispose();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('the default codex binary is the real one from the installed package', () => {
    expect(defaultCodexBin()).toBe(realCodexBin());
  });

  it('a config.toml codex refuses fails the start with GW_BAD_CONFIG naming its reason, and leaves nothing behind', async () => {
    const t = await startTestSupervisor({ codexBin: defaultCodexBin(), shards: 1 });
    try {
      const cfg = spawnConfig({}, mock.baseUrl);
      cfg.config.extra = { ...cfg.config.extra, not_a_codex_setting: true };
      const err = await rejection(t.sup.ensureSubprocess({ workspaceId: 'e2e-strict' }, () => cfg));
      expect(err.code).toBe('GW_BAD_CONFIG');
      expect(err.message).toContain('not_a_codex_setting');
      // codex ran and refused: its home is stored like any other, never left unsaved.
      await waitFor(async () => (await homeState(t.homeRoot, 'e2e-strict'))?.stored ?? true, 10_000, 'the home to be stored');
      expect(t.sup.childProcessCount).toBe(0);
    } finally {
      await t.close();
    }
  });

  const stores: Array<[string, () => Promise<ObjectStore>]> = [
    ['FileObjectStore', async () => new FileObjectStore(path.join(await keep(tempDir('cxg-e2e-store-')), 'store'))],
    [
      'S3ObjectStore (s3rver)',
      () => Promise.resolve(new S3ObjectStore({ bucket: s3.bucket, prefix: 'e2e/homes', endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials })),
    ],
  ];

  it.each(stores)('%s › a turn streams deltas; after shutdown, with the home removed, a new start downloads it and the thread resumes and takes a turn', async (_name, makeStore) => {
    const store = await makeStore();
    // No warm cache: the new start restores the home from the store, as another replica would.
    const t = await startTestSupervisor({ codexBin: defaultCodexBin(), store, shards: 2, homeCache: { enabled: false } });
    const id = `e2e-${store.spec.kind}`;
    const build = () => spawnConfig({}, mock.baseUrl);
    try {
      const h = await t.sup.ensureSubprocess({ workspaceId: id }, build);
      const c = await AppServerClient.connect(h.wsUrl, { token: h.wsToken });
      const init = await c.initialize();
      expect(init.codexHome).toBe(h.codexHome);
      const threadId = await c.startThread({ cwd: h.codexHome });
      const turn = await c.runTurn(threadId, 'say hello');
      expect(turn.status).toBe('completed');
      expect(turn.deltas).toEqual(['Hello', ' from', ' the', ' mock.']);
      expect(turn.text).toBe('Hello from the mock.');
      await c.close();

      const stopped = await t.sup.shutdown({ workspaceId: id });
      expect(stopped).toMatchObject({ stopped: true, saved: true });
      expect(await store.head(id)).toBeDefined();
      expect(await homeDirs(t.homeRoot, id)).toEqual([]);

      const h2 = await t.sup.ensureSubprocess({ workspaceId: id }, build);
      expect(h2.pid).not.toBe(h.pid);
      expect(h2.codexHome).toBe(h.codexHome);
      const c2 = await AppServerClient.connect(h2.wsUrl, { token: h2.wsToken });
      await c2.initialize();
      const threads = await c2.listThreads();
      expect(threads.map((th) => th.id)).toContain(threadId);
      await c2.request('thread/resume', { threadId });
      const again = await c2.runTurn(threadId, 'and again');
      expect(again.status).toBe('completed');
      expect(again.text).toBe('Hello from the mock.');
      await c2.close();
    } finally {
      await t.close();
    }
  }, 60_000);
});
