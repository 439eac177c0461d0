/**
 * Shared set-up for supervisor and gateway tests: temp directories, a
 * Supervisor on the fake or real codex, and process checks.
 */
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { FileObjectStore, Supervisor } from 'codex-app-gateway';
import type { ConfigBuilder, ObjectStore, SpawnConfig, StoreSpec, SupervisorOptions } from 'codex-app-gateway';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { testTempRoot } from './temp-root.js';

export const quietLogger = pino({ level: process.env.CXG_TEST_LOG_LEVEL ?? 'silent' });

export async function tempDir(prefix = 'cxg-test-'): Promise<string> {
  // The run's own directory (test/temp-root.ts): the leak check at the end finds whatever is left in it.
  const base = testTempRoot();
  await mkdir(base, { recursive: true });
  return mkdtemp(path.join(base, prefix));
}

export function spawnConfig(overrides: Partial<SpawnConfig> = {}, baseUrl = 'http://127.0.0.1:9/v1'): SpawnConfig {
  return {
    config: {
      modelProvider: 'mock',
      model: 'gpt-test',
      modelProviders: { mock: { baseUrl, envKey: 'CXG_TEST_API_KEY', wireApi: 'responses' } },
      extra: { analytics: { enabled: false }, features: { plugins: false, apps: false, shell_snapshot: false } },
    },
    env: ['CXG_TEST_API_KEY=cxg-test-key', 'CODEX_INTERNAL_APP_SERVER_REMOTE_CONTROL_DISABLED=1'],
    ...overrides,
  };
}

/** A builder that counts its calls. */
export function countingBuilder(cfg: SpawnConfig = spawnConfig()): ConfigBuilder & { calls: string[] } {
  const calls: string[] = [];
  const fn: ConfigBuilder = async (token: string) => {
    calls.push(token);
    await sleep(5);
    return cfg;
  };
  return Object.assign(fn, { calls });
}

export interface TestSupervisor {
  sup: Supervisor;
  root: string;
  homeRoot: string;
  storeDir: string;
  store: ObjectStore | StoreSpec;
  close(): Promise<void>;
}

export async function startTestSupervisor(opts: Partial<SupervisorOptions> = {}): Promise<TestSupervisor> {
  const root = await tempDir();
  const homeRoot = path.join(root, 'homes');
  const storeDir = path.join(root, 'store');
  const store = opts.store ?? new FileObjectStore(storeDir);
  const sup = await Supervisor.start({
    codexBin: fakeCodexBin(),
    homeRoot,
    store,
    shards: 2,
    logger: quietLogger,
    stopGraceMs: 2000,
    // Generous: a loaded two-core CI machine starts node slowly.
    readyTimeoutMs: 15_000,
    ...opts,
  });
  return {
    sup,
    root,
    homeRoot,
    storeDir,
    store,
    async close() {
      await sup.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** What a workspace's home says of itself (`codex-home/.cxg-home.json`), or undefined when it has no home. */
export async function homeState(homeRoot: string, workspaceId: string): Promise<{ generation: string | null; stored: boolean; pid: number | null } | undefined> {
  try {
    return JSON.parse(await readFile(path.join(homeRoot, workspaceId, 'codex-home', '.cxg-home.json'), 'utf8')) as { generation: string | null; stored: boolean; pid: number | null };
  } catch {
    return undefined;
  }
}

/** Entries of a workspace's directory under the home root (`codex-home` when it has a home). */
export async function homeDirs(homeRoot: string, workspaceId: string): Promise<string[]> {
  try {
    return await readdir(path.join(homeRoot, workspaceId));
  } catch {
    return [];
  }
}

/** Resolves with the error a promise rejects with (fails the test when it resolves). */
export async function rejection(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection');
}

/** An object's whole body, or undefined when the store has none. */
export async function readObject(store: ObjectStore, id: string): Promise<Buffer | undefined> {
  const body = await store.get(id);
  if (body === undefined) return undefined;
  const chunks: Buffer[] = [];
  for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

/** A loopback port free now (for servers that need one before they start: nginx, etcd, a fixed internal port). */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
