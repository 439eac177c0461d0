/**
 * WorkspaceTable.close and the drain budget, in process, with a host whose
 * archive operations can be made to hang: close() answers within the budget
 * whatever it is waiting for (a stop's upload, an upload already under way
 * after a crash, a start still downloading), and no home is deleted unstored.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_ARCHIVE_EXCLUDES, DEFAULT_UNPACK_LIMITS } from '../../src/shared/archive-protocol.js';
import type { ArchiveOutcome, ArchiveTask, PackResult, UnpackResult } from '../../src/shared/archive-protocol.js';
import { DEFAULT_ENV_ALLOWLIST } from '../../src/shared/child-env.js';
import { DEFAULT_CRASH_LOOP } from '../../src/shared/crash-loop.js';
import type { ShardInit } from '../../src/shared/protocol.js';
import { WorkspaceTable } from '../../src/workers/workspaces.js';
import type { TableHost } from '../../src/workers/workspaces.js';
import { fakeCodexBin } from '../fixtures/codex-home.js';
import { processAlive, spawnConfig, tempDir, waitFor } from '../helpers.js';

type Outcome = ArchiveOutcome<PackResult | UnpackResult>;

const NOT_FOUND: Outcome = { ok: true, value: { key: 'x', found: false, bytes: 0, files: 0, durationMs: 0, generation: undefined, homePath: undefined } };
const never = (): Promise<Outcome> => new Promise<Outcome>(() => {});

interface Harness {
  table: WorkspaceTable;
  homeRoot: string;
  /** Decides each archive operation; default: nothing stored, uploads never finish. */
  archive: (task: ArchiveTask) => Promise<Outcome>;
  pids: Set<number>;
}

const harnesses: Harness[] = [];
const roots: string[] = [];

afterEach(async () => {
  for (const h of harnesses.splice(0)) {
    for (const pid of h.pids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  const { rm } = await import('node:fs/promises');
  for (const r of roots.splice(0)) await rm(r, { recursive: true, force: true });
});

async function harness(drainBudgetMs: number): Promise<Harness> {
  const root = await tempDir('cxg-table-');
  roots.push(root);
  const homeRoot = path.join(root, 'homes');
  const init: ShardInit = {
    shard: 0,
    shards: 1,
    codexBin: fakeCodexBin(),
    homeRoot,
    store: { kind: 'file', dir: path.join(root, 'store') },
    extraEnv: [],
    envAllowlist: [...DEFAULT_ENV_ALLOWLIST],
    readyTimeoutMs: 15_000,
    childNice: 0,
    stopGraceMs: 1000,
    shutdownConcurrency: 4,
    builderTimeoutMs: 5000,
    archiveExclude: [...DEFAULT_ARCHIVE_EXCLUDES],
    unpackLimits: { ...DEFAULT_UNPACK_LIMITS },
    spoolRetryBaseMs: 60_000,
    spoolRetryMaxMs: 60_000,
    crashLoop: { ...DEFAULT_CRASH_LOOP },
    gatedSpawns: false,
    drainBudgetMs,
    homeCacheBytes: 1024 ** 3,
    approvals: { headless: 'decline', websocket: 'client' },
    logLevel: 'silent',
    logPretty: false,
    dataPlane: { maxFrameBytes: 1 << 20, maxPendingToChildBytes: 1 << 20, windowBytes: 1 << 20 },
  };
  const h: Harness = {
    table: undefined as unknown as WorkspaceTable,
    homeRoot,
    archive: (task) => (task.op === 'unpack' ? Promise.resolve(NOT_FOUND) : never()),
    pids: new Set(),
  };
  const host: TableHost = {
    buildConfig: () => Promise.resolve(spawnConfig()),
    archive: (task) => h.archive(task),
    childStarted: (_id, _gen, pid) => h.pids.add(pid),
    childExited: () => {},
    enterSpawn: () => Promise.resolve({ queuedMs: 0, priority: 'client' }),
    spawnSettled: () => {},
    promoteSpawn: () => {},
    workspaceStopped: () => {},
    startFinished: () => {},
    registerToken: () => Promise.resolve(),
    forgetToken: () => {},
  };
  h.table = new WorkspaceTable(init, host, { childGone: () => {} }, pino({ level: 'silent' }));
  harnesses.push(h);
  return h;
}

/** Past the budget by this much, a close that waits on a never-ending task is taken for a hang. */
const HANG_SLACK_MS = 5000;

async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t0 = Date.now();
  const value = await p;
  return { value, ms: Date.now() - t0 };
}

describe('WorkspaceTable.close (drain budget)', () => {
  it('uploads that never finish › close answers within one budget, not one per wait; homes stay on disk', async () => {
    // Three waits: one budget per wait would take 3 budgets; the bound leaves most of a
    // second budget for the child stops on a loaded machine and still tells them apart.
    const budget = 3000;
    const h = await harness(budget);
    const infos = [await h.table.ensure('td-a', 0), await h.table.ensure('td-b', 0), await h.table.ensure('td-c', 0)];
    const { value, ms } = await timed(h.table.close(4));
    expect(ms).toBeGreaterThanOrEqual(budget - 50);
    expect(ms).toBeLessThan(budget * 2);
    expect(value.map((r) => r.workspaceId).sort()).toEqual(['td-a', 'td-b', 'td-c']);
    for (const r of value) expect(r).toMatchObject({ stopped: true, saved: false });
    for (const info of infos) {
      expect(processAlive(info.pid)).toBe(false);
      expect(existsSync(info.codexHome)).toBe(true);
    }
  });

  it('an upload already under way after a crash › close does not wait for it past the budget', async () => {
    const budget = 800;
    const h = await harness(budget);
    const a = await h.table.ensure('td-crash', 0);
    process.kill(a.pid, 'SIGKILL');
    await waitFor(() => h.table.status('td-crash') === null, 5000, 'the crash to be processed');
    const { value, ms } = await timed(h.table.close(4));
    // The upload never ends: any wait for it is a hang; the slack covers a loaded machine.
    expect(ms).toBeLessThan(budget + HANG_SLACK_MS);
    expect(value).toEqual([expect.objectContaining({ workspaceId: 'td-crash', saved: false })]);
    expect(existsSync(a.codexHome)).toBe(true);
  });

  it('a start still downloading its state › close does not wait for it past the budget', async () => {
    const budget = 800;
    const h = await harness(budget);
    h.archive = (task) => (task.op === 'unpack' ? never() : Promise.resolve(NOT_FOUND));
    const starting = h.table.ensure('td-download', 0);
    starting.catch(() => {});
    await waitFor(() => h.table.status('td-download') !== null, 5000, 'the start to begin');
    const { value, ms } = await timed(h.table.close(4));
    expect(ms).toBeLessThan(budget + HANG_SLACK_MS);
    expect(value).toEqual([expect.objectContaining({ workspaceId: 'td-download', saved: false })]);
  });

  it('ensure after close began › GW_CLOSED', async () => {
    const h = await harness(500);
    const closing = h.table.close(4);
    await expect(h.table.ensure('td-late', 0)).rejects.toMatchObject({ code: 'GW_CLOSED' });
    await closing;
  });
});
