/**
 * Start-up recovery: homes a dead gateway left under homeRoot are found,
 * their processes stopped (never a process that merely reused a pid), their
 * work uploaded, and starts of those workspaces see the recovered state.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileObjectStore, Supervisor } from 'codex-app-gateway';
import { fakeCodexBin } from '../fixtures/codex-home.js';
import { countingBuilder, homeDirs, processAlive, quietLogger, tempDir, waitFor } from '../helpers.js';
import { QUARANTINE_DIR, findLeftoverHomes } from '../../src/workers/recovery.js';
import { groupLeader, readInHome, startTicks, writeInHome } from './helpers.js';

const MARKER = '.cxg-child.json';

/** A generation name like the gateway's, `msAgo` in the past (they sort by time). */
function gen(msAgo: number, suffix = 'abcdef'): string {
  return `g${(Date.now() - msAgo).toString(36).padStart(9, '0')}-${suffix}`;
}

interface Rec {
  pid: number | null;
  startTicks: number | null;
}

/** A leftover home with `state.txt`, and a marker when `rec` is given. */
async function leftover(homeRoot: string, workspaceId: string, generation: string, state: string, rec?: Rec): Promise<string> {
  const dir = path.join(homeRoot, workspaceId, generation);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(path.join(dir, 'state.txt'), state);
  await writeFile(path.join(dir, 'config.toml'), 'secret = "never stored"\n');
  if (rec !== undefined) {
    await writeFile(path.join(dir, MARKER), JSON.stringify({ ...rec, workspaceId, generation, gatewayPid: 1 }));
  }
  return dir;
}

interface Env {
  root: string;
  homeRoot: string;
  storeDir: string;
  sups: Supervisor[];
  cleanups: Array<() => Promise<void>>;
}

let env: Env | undefined;

async function setup(): Promise<Env> {
  const root = await tempDir('cxg-recovery-');
  env = { root, homeRoot: path.join(root, 'homes'), storeDir: path.join(root, 'store'), sups: [], cleanups: [] };
  return env;
}

async function startSup(e: Env, stopGraceMs = 2000): Promise<Supervisor> {
  const sup = await Supervisor.start({
    codexBin: fakeCodexBin(),
    homeRoot: e.homeRoot,
    store: new FileObjectStore(e.storeDir),
    shards: 2,
    logger: quietLogger,
    stopGraceMs,
    readyTimeoutMs: 15_000,
  });
  e.sups.push(sup);
  return sup;
}

/** Stores `state.txt = state` for each workspace the way a normal run does. */
async function stored(e: Env, states: Record<string, string>): Promise<void> {
  const sup = await startSup(e);
  for (const [id, state] of Object.entries(states)) {
    const h = await sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    await writeInHome(h, 'state.txt', state);
    expect((await sup.shutdown({ workspaceId: id })).saved).toBe(true);
  }
  await sup.close();
}

afterEach(async () => {
  const e = env;
  env = undefined;
  if (e === undefined) return;
  for (const s of e.sups) await s.close().catch(() => {});
  for (const c of e.cleanups) await c().catch(() => {});
  await rm(e.root, { recursive: true, force: true });
});

describe('start-up recovery', () => {
  it('a home whose marker records a live process › the process group is stopped, the home uploaded and deleted; the next ensure sees its state', async () => {
    const e = await setup();
    // A leader and a second process in its group, like codex and a tool it started.
    const pidFile = path.join(e.root, 'bg.pid');
    const leader = spawn('sh', ['-c', `sleep 1000 & echo $! > ${pidFile}; exec sleep 1000`], { detached: true, stdio: 'ignore' });
    e.cleanups.push(() => {
      try {
        process.kill(-(leader.pid as number), 'SIGKILL');
      } catch {
        // gone
      }
      return Promise.resolve();
    });
    await waitFor(() => existsSync(pidFile), 5000, 'the background pid');
    const bg = Number((await readFile(pidFile, 'utf8')).trim());
    const pid = leader.pid as number;
    const dir = await leftover(e.homeRoot, 'rec-live', gen(5000), 'from-the-dead-gateway', { pid, startTicks: await startTicks(pid) });

    const sup = await startSup(e);
    await waitFor(() => !processAlive(pid) && !processAlive(bg), 10_000, 'the leftover process group to stop');
    await waitFor(() => !existsSync(dir), 10_000, 'the leftover home to be uploaded and removed');
    expect(existsSync(path.join(e.storeDir, 'rec-live.tar.gz'))).toBe(true);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-live' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('from-the-dead-gateway');
    // Secrets of the dead run were not stored: the new config.toml is the builder's.
    expect(await readFile(path.join(h.codexHome, 'config.toml'), 'utf8')).not.toContain('never stored');
  });

  it('a recorded live process that is not a process-group leader › it is stopped too before its home is uploaded and deleted', async () => {
    const e = await setup();
    // In this test process's group, not its own: only a signal to the pid reaches it.
    const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
    const pid = child.pid as number;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    e.cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    });
    const dir = await leftover(e.homeRoot, 'rec-nonleader', gen(5000), 'work', { pid, startTicks: await startTicks(pid) });
    await startSup(e, 600);
    await waitFor(() => !existsSync(dir), 10_000, 'the home to be uploaded and removed');
    await exited;
    expect(child.signalCode).not.toBeNull();
  });

  it('a marker whose pid is alive but started at another time (pid reuse) › that process is not signalled; the home is still uploaded', async () => {
    const e = await setup();
    const stranger = await groupLeader();
    e.cleanups.push(() => stranger.stop());
    const dir = await leftover(e.homeRoot, 'rec-reused', gen(5000), 'still-mine', { pid: stranger.pid, startTicks: stranger.ticks + 4242 });
    const sup = await startSup(e, 300);
    await waitFor(() => !existsSync(dir), 10_000, 'the home to be uploaded and removed');
    expect(processAlive(stranger.pid)).toBe(true);
    expect(stranger.child.signalCode).toBeNull();
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-reused' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('still-mine');
    expect(processAlive(stranger.pid)).toBe(true);
  });

  it('a marker without a start time (pid only) › the pid cannot be told apart from a reuse: not signalled, home uploaded', async () => {
    const e = await setup();
    const stranger = await groupLeader();
    e.cleanups.push(() => stranger.stop());
    const dir = await leftover(e.homeRoot, 'rec-noticks', gen(5000), 'kept', { pid: stranger.pid, startTicks: null });
    await startSup(e, 300);
    await waitFor(() => !existsSync(dir), 10_000, 'the home to be uploaded and removed');
    expect(processAlive(stranger.pid)).toBe(true);
  });

  it('a home without a marker (never ran) › removed without upload: the stored object stays as it was', async () => {
    const e = await setup();
    await stored(e, { 'rec-nomarker': 'stored-v1' });
    const object = path.join(e.storeDir, 'rec-nomarker.tar.gz');
    const before = await stat(object);
    const objectBytes = await readFile(object);
    const dir = await leftover(e.homeRoot, 'rec-nomarker', gen(1000), 'partial-download');
    const sup = await startSup(e);
    await waitFor(() => !existsSync(dir), 10_000, 'the home to be removed');
    expect((await stat(object)).mtimeMs).toBe(before.mtimeMs);
    expect(await readFile(object)).toEqual(objectBytes);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-nomarker' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v1');
  });

  it('a home with a marker whose upload succeeded before the gateway died (same generation as the stored object) › removed, not uploaded again', async () => {
    const e = await setup();
    await stored(e, { 'rec-same': 'stored-v1' });
    const object = path.join(e.storeDir, 'rec-same.tar.gz');
    const generation = (await readFile(path.join(e.storeDir, 'rec-same.generation'), 'utf8')).trim();
    const before = await stat(object);
    const dir = await leftover(e.homeRoot, 'rec-same', generation, 'stored-v1', { pid: null, startTicks: null });
    const sup = await startSup(e);
    await waitFor(() => !existsSync(dir), 10_000, 'the home to be removed');
    expect((await stat(object)).mtimeMs).toBe(before.mtimeMs);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-same' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v1');
  });

  it('a home noted as stored but not removed, with the store down at start-up › never started from; removed once the store answers', async () => {
    const e = await setup();
    await stored(e, { 'rec-noted': 'stored-v1' });
    const generation = (await readFile(path.join(e.storeDir, 'rec-noted.generation'), 'utf8')).trim();
    const dir = await leftover(e.homeRoot, 'rec-noted', generation, 'stored-v1', { pid: null, startTicks: null });
    await writeFile(path.join(e.homeRoot, 'rec-noted', `.cxg-stored-${generation}`), '');
    await rename(e.storeDir, `${e.storeDir}.away`);
    await writeFile(e.storeDir, 'the store is down');
    const sup = await startSup(e);
    const err = await sup.ensureSubprocess({ workspaceId: 'rec-noted' }, countingBuilder()).then(
      () => undefined,
      (x: unknown) => x as { code?: string },
    );
    expect(err?.code).toMatch(/^GW_STORE_/);
    expect(existsSync(path.join(dir, 'state.txt'))).toBe(true);
    await rm(e.storeDir, { force: true });
    await rename(`${e.storeDir}.away`, e.storeDir);
    const note = path.join(e.homeRoot, 'rec-noted', `.cxg-stored-${generation}`);
    await waitFor(() => !existsSync(dir) && !existsSync(note), 15_000, 'the stored home and its note to be removed');
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-noted' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v1');
  });

  it('a home with a marker older than the stored object › set aside in #quarantine, never uploaded over the newer state', async () => {
    const e = await setup();
    const dir = await leftover(e.homeRoot, 'rec-stale', gen(60_000), 'stale', { pid: null, startTicks: null });
    // A later run, stored after that home (whose removal had failed).
    const moved = path.join(e.root, 'aside');
    await rename(dir, moved);
    await stored(e, { 'rec-stale': 'newer-stored' });
    await mkdir(path.dirname(dir), { recursive: true });
    await rename(moved, dir);
    const object = path.join(e.storeDir, 'rec-stale.tar.gz');
    const bytes = await readFile(object);
    const sup = await startSup(e);
    const q = path.join(e.homeRoot, QUARANTINE_DIR, 'rec-stale', path.basename(dir));
    await waitFor(() => existsSync(q), 10_000, 'the stale home to be set aside');
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('stale');
    expect(await readFile(object)).toEqual(bytes);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-stale' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('newer-stored');
  });

  it('two homes with markers for one workspace › the newest is uploaded; the older is moved to #quarantine with its contents intact', async () => {
    const e = await setup();
    const older = await leftover(e.homeRoot, 'rec-two', gen(60_000, '000001'), 'older', { pid: null, startTicks: null });
    await writeFile(path.join(older, 'only-in-older.txt'), 'x');
    const newer = await leftover(e.homeRoot, 'rec-two', gen(1000, '000002'), 'newer', { pid: null, startTicks: null });
    const sup = await startSup(e);
    const q = path.join(e.homeRoot, QUARANTINE_DIR, 'rec-two', path.basename(older));
    await waitFor(() => existsSync(q) && !existsSync(newer), 10_000, 'quarantine and upload');
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('older');
    expect(await readFile(path.join(q, 'only-in-older.txt'), 'utf8')).toBe('x');
    expect(existsSync(path.join(q, MARKER))).toBe(true);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-two' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('newer');
    // The quarantine directory is never taken for a workspace by a later recovery.
    await sup.close();
    await startSup(e);
    await new Promise((r) => setTimeout(r, 300));
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('older');
  });

  it('two homes with markers, and the older one was quarantined before (its name is taken) › both kept, the newest uploaded', async () => {
    const e = await setup();
    const g = gen(60_000, '000001');
    const earlier = path.join(e.homeRoot, QUARANTINE_DIR, 'rec-requar', g);
    await mkdir(earlier, { recursive: true });
    await writeFile(path.join(earlier, 'state.txt'), 'quarantined-last-time');
    await leftover(e.homeRoot, 'rec-requar', g, 'older-copy', { pid: null, startTicks: null });
    const newer = await leftover(e.homeRoot, 'rec-requar', gen(1000, '000002'), 'newer', { pid: null, startTicks: null });
    const sup = await startSup(e);
    await waitFor(() => !existsSync(newer), 10_000, 'the newest home to be uploaded');
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-requar' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('newer');
    expect(await readFile(path.join(earlier, 'state.txt'), 'utf8')).toBe('quarantined-last-time');
    const kept = await readdir(path.dirname(earlier));
    expect(kept).toHaveLength(2);
    const states = await Promise.all(kept.map((k) => readFile(path.join(path.dirname(earlier), k, 'state.txt'), 'utf8')));
    expect(states.sort()).toEqual(['older-copy', 'quarantined-last-time']);
    // Nothing of this workspace is left where a later recovery would take it for the newest.
    expect(await homeDirs(e.homeRoot, 'rec-requar')).toEqual([path.basename(h.codexHome)]);
  });

  it('an ensure for a workspace still being recovered waits and sees the recovered state, never the older stored one', async () => {
    const e = await setup();
    await stored(e, { 'rec-wait': 'stored-old' });
    // A leftover process that ignores SIGTERM keeps recovery busy for the whole grace.
    const leader = spawn('sh', ['-c', "trap '' TERM; exec sleep 1000"], { detached: true, stdio: 'ignore' });
    const pid = leader.pid as number;
    e.cleanups.push(() => {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
      return Promise.resolve();
    });
    await waitFor(async () => (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).startsWith('sleep'), 5000, 'sleep to run');
    // Newer than the stored object: a leftover is the run after what was stored.
    await leftover(e.homeRoot, 'rec-wait', gen(0), 'recovered-new', { pid, startTicks: await startTicks(pid) });
    const sup = await startSup(e, 1500);
    const t0 = Date.now();
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-wait' }, countingBuilder());
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(processAlive(pid)).toBe(false);
    expect(await readInHome(h, 'state.txt')).toBe('recovered-new');
  });

  it('an ensure right after start, while the scan of many leftover homes is still running, sees the recovered state', async () => {
    const e = await setup();
    await stored(e, { 'rec-race': 'stored-old' });
    // Many other leftovers make the scan take a while.
    for (let i = 0; i < 400; i++) await leftover(e.homeRoot, `rec-filler-${i}`, gen(3000), 'filler');
    const dir = await leftover(e.homeRoot, 'rec-race', gen(0), 'recovered-new', { pid: null, startTicks: null });
    const sup = await startSup(e);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-race' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('recovered-new');
    expect(h.isAlive()).toBe(true);
    expect(existsSync(dir)).toBe(false);
    // The live child's own home is never taken for a leftover.
    await new Promise((r) => setTimeout(r, 500));
    expect(h.isAlive()).toBe(true);
    expect(existsSync(h.codexHome)).toBe(true);
    await waitFor(async () => (await readdir(e.homeRoot)).filter((n) => n.startsWith('rec-filler')).length === 0, 20_000, 'fillers removed');
  });
});

describe('findLeftoverHomes', () => {
  it('lists generation directories of owned workspaces, oldest first, and ignores everything else', async () => {
    const e = await setup();
    const r = e.homeRoot;
    const g1 = gen(9000, '111111');
    const g2 = gen(1000, '222222');
    await leftover(r, 'ws-a', g2, 'x', { pid: 12, startTicks: 34 });
    await leftover(r, 'ws-a', g1, 'x');
    await leftover(r, 'not-mine', gen(1000), 'x');
    // Not workspaces or not generations:
    await mkdir(path.join(r, QUARANTINE_DIR, 'ws-a', gen(5000)), { recursive: true });
    await mkdir(path.join(r, 'bad name', gen(5000)), { recursive: true });
    await writeFile(path.join(r, 'README'), 'a file where a workspace would be');
    await mkdir(path.join(r, 'ws-a', 'tmp'), { recursive: true });
    await mkdir(path.join(r, 'ws-a', 'G0000000000-abcdef'), { recursive: true });
    await writeFile(path.join(r, 'ws-a', gen(4000, 'ffffff')), 'a file with a generation name');
    // A symlinked generation, and a symlinked workspace directory, lead outside homeRoot.
    const outside = path.join(e.root, 'outside');
    await mkdir(path.join(outside, gen(3000, 'eeeeee')), { recursive: true });
    await symlink(path.join(outside, gen(3000, 'eeeeee')), path.join(r, 'ws-a', gen(3000, 'dddddd')));
    await symlink(outside, path.join(r, 'ws-link'));

    const found = await findLeftoverHomes(r, (id) => id !== 'not-mine');
    expect(found.map((h) => `${h.workspaceId}/${h.generation}`)).toEqual([`ws-a/${g1}`, `ws-a/${g2}`]);
    expect(found[0]?.record).toBeUndefined();
    expect(found[1]?.record).toMatchObject({ pid: 12, startTicks: 34 });
    expect(await findLeftoverHomes(path.join(e.root, 'missing'), () => true)).toEqual([]);
  });

  it('a marker that exists but cannot be parsed still counts as a run (the home is kept, not removed)', async () => {
    const e = await setup();
    const dir = await leftover(e.homeRoot, 'ws-garbled', gen(1000), 'x');
    await writeFile(path.join(dir, MARKER), '{not json');
    const found = await findLeftoverHomes(e.homeRoot, () => true);
    expect(found).toHaveLength(1);
    expect(found[0]?.record).toBeDefined();
  });

  it('a symlinked workspace directory is never recovered: what it points to is not deleted', async () => {
    const e = await setup();
    const outside = path.join(e.root, 'outside');
    const g = gen(1000);
    await mkdir(path.join(outside, g), { recursive: true });
    await writeFile(path.join(outside, g, 'precious.txt'), 'do not delete');
    await mkdir(e.homeRoot, { recursive: true });
    await symlink(outside, path.join(e.homeRoot, 'ws-link'));
    await startSup(e);
    await new Promise((r) => setTimeout(r, 500));
    expect(await readFile(path.join(outside, g, 'precious.txt'), 'utf8')).toBe('do not delete');
    expect(await homeDirs(e.homeRoot, 'ws-link')).toEqual([g]);
  });
});
