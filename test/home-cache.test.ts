/**
 * One stable CODEX_HOME per workspace, and the warm cache of stored homes
 * (fake codex): a stopped workspace's home stays on disk and the next start
 * uses it without a download while it is the stored generation; a newer
 * generation stored from elsewhere replaces it; a disk budget removes the
 * least recently used; a home restored under another path is reported.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileObjectStore, Supervisor, signWorkspaceToken } from 'codex-app-gateway';
import type { SupervisorOptions } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { countingBuilder, homeDirs, homeState, quietLogger, rejection, tempDir, waitFor } from './helpers.js';
import { readInHome, writeInHome } from './resilience/helpers.js';

interface Env {
  root: string;
  storeDir: string;
  sups: Supervisor[];
  downloads: number;
}

let env: Env | undefined;
const gateways: GatewayProcess[] = [];

afterEach(async () => {
  for (const g of gateways.splice(0)) await g.stop('SIGTERM');
  const e = env;
  env = undefined;
  if (e === undefined) return;
  for (const s of e.sups) await s.close().catch(() => {});
  await rm(e.root, { recursive: true, force: true });
});

async function setup(): Promise<Env> {
  const root = await tempDir('cxg-cache-');
  env = { root, storeDir: path.join(root, 'store'), sups: [], downloads: 0 };
  return env;
}

/** A supervisor on `homes` (under the test's root) and the shared store, counting downloads. */
async function startSup(e: Env, homes = 'homes', opts: Partial<SupervisorOptions> = {}): Promise<{ sup: Supervisor; homeRoot: string }> {
  const homeRoot = path.join(e.root, homes);
  const sup = await Supervisor.start({
    codexBin: fakeCodexBin(),
    homeRoot,
    store: new FileObjectStore(e.storeDir),
    shards: 1,
    logger: quietLogger,
    stopGraceMs: 2000,
    readyTimeoutMs: 15_000,
    observer: {
      archiveFinished: (a) => {
        if (a.op === 'download' && a.found) e.downloads += 1;
      },
    },
    ...opts,
  });
  e.sups.push(sup);
  return { sup, homeRoot };
}

/** A run of `id` on `sup` that writes `state.txt` and is stored; what the run found in `state.txt` first. */
async function storedRun(sup: Supervisor, id: string, state: string): Promise<string | undefined> {
  const h = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
  const found = await readInHome(h, 'state.txt').catch(() => undefined);
  await writeInHome(h, 'state.txt', state);
  expect((await sup.shutdown({ workspaceId: id })).saved).toBe(true);
  return found;
}

describe('stable home and warm cache', () => {
  it('the same CODEX_HOME on every start; a stopped home is kept and the next start uses it without a download', async () => {
    const e = await setup();
    const { sup, homeRoot } = await startSup(e);
    const id = 'ws-warm';
    const h1 = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    expect(h1.codexHome).toBe(path.join(homeRoot, id, 'codex-home'));
    await writeInHome(h1, 'notes.txt', 'one');
    expect((await sup.shutdown({ workspaceId: id })).saved).toBe(true);
    const stored = await homeState(homeRoot, id);
    expect(stored).toMatchObject({ stored: true, pid: null });
    expect((await new FileObjectStore(e.storeDir).head(id))?.generation).toBe(stored?.generation);

    const h2 = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    expect(h2.codexHome).toBe(h1.codexHome);
    expect(await readInHome(h2, 'notes.txt')).toBe('one');
    expect(e.downloads).toBe(0);
    // A new run is a new generation, unsaved until its upload.
    expect(await homeState(homeRoot, id)).toMatchObject({ stored: false, pid: h2.pid });
    expect((await homeState(homeRoot, id))?.generation).not.toBe(stored?.generation);
    // Its working directory is inside the home, never the gateway's own.
    expect(await readlink(`/proc/${h2.pid}/cwd`)).toBe(path.join(h2.codexHome, 'workspace'));
  });

  it('a newer generation stored from another home root replaces the warm copy; the older copy is never uploaded over it', async () => {
    const e = await setup();
    const a = await startSup(e, 'homes-a');
    const b = await startSup(e, 'homes-b');
    const id = 'ws-two-roots';
    await storedRun(a.sup, id, 'v1 from a');
    expect(await storedRun(b.sup, id, 'v2 from b')).toBe('v1 from a');
    const downloads = e.downloads;

    const h = await a.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('v2 from b');
    expect(e.downloads).toBe(downloads + 1);
    expect(await homeDirs(a.homeRoot, id)).toEqual(['codex-home']);
  });

  it('past the disk budget the least recently used homes without a process are removed; stored state is kept', async () => {
    const e = await setup();
    const { sup, homeRoot } = await startSup(e, 'homes', { homeCache: { maxBytes: 2_500_000 } });
    const big = 'x'.repeat(1_000_000);
    for (const id of ['lru-1', 'lru-2', 'lru-3']) {
      const h = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      await writeInHome(h, 'big.txt', big);
      expect((await sup.shutdown({ workspaceId: id })).saved).toBe(true);
    }
    await waitFor(() => !existsSync(path.join(homeRoot, 'lru-1')), 10_000, 'the least recently used home to go');
    expect(await homeState(homeRoot, 'lru-2')).toMatchObject({ stored: true });
    expect(await homeState(homeRoot, 'lru-3')).toMatchObject({ stored: true });
    const cache = (await sup.stats())[0];
    expect(cache?.cachedHomes).toBe(2);
    expect(cache?.cachedBytes).toBeLessThanOrEqual(2_500_000);
    // Removed from disk, not from the store.
    const h = await sup.ensureSubprocess({ workspaceId: 'lru-1' }, countingBuilder());
    expect((await readInHome(h, 'big.txt')).length).toBe(big.length);
  });

  it('with the cache off a stored home is removed after its upload', async () => {
    const e = await setup();
    const { sup, homeRoot } = await startSup(e, 'homes', { homeCache: { enabled: false } });
    const h = await sup.ensureSubprocess({ workspaceId: 'ws-nocache' }, countingBuilder());
    await writeInHome(h, 'a.txt', 'kept in the store');
    expect((await sup.shutdown({ workspaceId: 'ws-nocache' })).saved).toBe(true);
    expect(await homeDirs(homeRoot, 'ws-nocache')).toEqual([]);
    const h2 = await sup.ensureSubprocess({ workspaceId: 'ws-nocache' }, countingBuilder());
    expect(await readInHome(h2, 'a.txt')).toBe('kept in the store');
    expect(h2.codexHome).toBe(h.codexHome);
  });

  it('a download that fails leaves the stale warm copy and no partial directory; the start fails with the store code', async () => {
    const e = await setup();
    const a = await startSup(e, 'homes-a');
    const b = await startSup(e, 'homes-b');
    const id = 'ws-bad-download';
    await storedRun(a.sup, id, 'v1');
    await storedRun(b.sup, id, 'v2');
    // The newer object is damaged: a's warm copy (v1) must be kept, not replaced by half an archive.
    await writeFile(path.join(e.storeDir, `${id}.tar.gz`), 'not a gzip');
    const err = await rejection(a.sup.ensureSubprocess({ workspaceId: id }, countingBuilder()));
    expect(err.code).toBe('GW_ARCHIVE_INVALID');
    expect(await homeDirs(a.homeRoot, id)).toEqual(['codex-home']);
    expect(await readFile(path.join(a.homeRoot, id, 'codex-home', 'state.txt'), 'utf8')).toBe('v1');
  });
});

describe('a home past the archive limits', () => {
  it('is never uploaded (its object could not be restored) nor removed: it stays in the spool with GW_HOME_TOO_LARGE, without retries, and the next start uses it', async () => {
    const e = await setup();
    const { sup, homeRoot } = await startSup(e, 'homes', { unpackLimits: { maxFileBytes: 4096 }, spoolRetryBaseMs: 100, spoolRetryMaxMs: 100 });
    const id = 'ws-too-large';
    let h = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    await writeInHome(h, 'small.txt', 'fits');
    expect((await sup.shutdown({ workspaceId: id })).saved).toBe(true);
    const object = path.join(e.storeDir, `${id}.tar.gz`);
    const storedBytes = await readFile(object);
    const storedGeneration = (await new FileObjectStore(e.storeDir).head(id))?.generation;

    h = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    await writeInHome(h, 'big.bin', 'x'.repeat(10_000));
    const r = await sup.shutdown({ workspaceId: id });
    expect(r).toMatchObject({ stopped: true, saved: false });
    expect(r.error).toContain('GW_HOME_TOO_LARGE');
    expect(await readFile(object)).toEqual(storedBytes);
    const [spooled] = (await sup.stats()).flatMap((s) => s.spool);
    expect(spooled).toMatchObject({ workspaceId: id, attempts: 1 });
    expect(spooled?.lastError).toContain('GW_HOME_TOO_LARGE');
    expect(spooled?.nextRetryAt).toBeUndefined();
    expect(await homeState(homeRoot, id)).toMatchObject({ stored: false });

    // The work is not lost: the next start runs on it; once it fits again it is stored.
    h = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    expect((await readInHome(h, 'big.bin')).length).toBe(10_000);
    await rm(path.join(h.codexHome, 'big.bin'));
    expect((await sup.shutdown({ workspaceId: id })).saved).toBe(true);
    expect((await new FileObjectStore(e.storeDir).head(id))?.generation).not.toBe(storedGeneration);
  });
});

describe('a home restored under another path', () => {
  it('is logged with GW_HOME_PATH_CHANGED and still restores', async () => {
    const e = await setup();
    const secret = 'cache-test-secret-cache-test-secret-0000';
    const gatewayOn = async (homes: string): Promise<GatewayProcess> => {
      const dir = path.join(e.root, `gw-${homes}`);
      await mkdir(dir, { recursive: true });
      const config = await writeConfig(
        path.join(dir, 'gw.toml'),
        [
          'shards = 1',
          '[data]',
          `dir = ${JSON.stringify(dir)}`,
          '[homes]',
          `root = ${JSON.stringify(path.join(e.root, homes))}`,
          '[store]',
          `url = ${JSON.stringify(`file://${e.storeDir}`)}`,
          '[listen]',
          'port = 0',
          '[auth.jwt]',
          `secret = ${JSON.stringify(secret)}`,
          '[codex]',
          `bin = ${JSON.stringify(fakeCodexBin())}`,
          '',
        ].join('\n'),
      );
      const gw = await startGatewayProcess(config);
      gateways.push(gw);
      return gw;
    };
    const token = await signWorkspaceToken({ secret, workspaceId: 'ws-moved', expiresIn: '10m' });
    const first = await gatewayOn('homes-old');
    const c = await AppServerClient.connect(first.url, { token });
    await c.request('fake/info');
    await c.close();
    expect((await first.stop('SIGTERM')).code).toBe(0);

    const second = await gatewayOn('homes-new');
    const c2 = await AppServerClient.connect(second.url, { token });
    const info = await c2.request<{ codexHome: string }>('fake/info');
    await c2.close();
    expect(info.codexHome).toBe(path.join(e.root, 'homes-new', 'ws-moved', 'codex-home'));
    const warned = await second.waitForLog((l) => l.code === 'GW_HOME_PATH_CHANGED');
    expect(warned).toMatchObject({ workspaceId: 'ws-moved', storedFrom: path.join(e.root, 'homes-old', 'ws-moved', 'codex-home') });
  });
});
