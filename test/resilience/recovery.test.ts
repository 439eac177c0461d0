/**
 * Start-up recovery: homes a dead gateway left under homeRoot are found,
 * their processes stopped (never a process that merely reused a pid), their
 * work uploaded, and starts of those workspaces see the recovered state.
 * Homes of the earlier layout (one directory per start) are taken over.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileObjectStore, Supervisor } from 'codex-app-gateway';
import { fakeCodexBin } from '../fixtures/codex-home.js';
import { countingBuilder, homeDirs, homeState, processAlive, quietLogger, tempDir, waitFor } from '../helpers.js';
import { QUARANTINE_DIR, findLeftovers } from '../../src/workers/recovery.js';
import { groupLeader, readInHome, startTicks, writeInHome } from './helpers.js';

const STATE = '.cxg-home.json';
const LEGACY_MARKER = '.cxg-child.json';

/** A generation name like the gateway's, `msAgo` in the past (they sort by time). */
function gen(msAgo: number, suffix = 'abcdef'): string {
  return `g${(Date.now() - msAgo).toString(36).padStart(9, '0')}-${suffix}`;
}

interface Rec {
  pid: number | null;
  startTicks: number | null;
}

function homeOf(homeRoot: string, workspaceId: string): string {
  return path.join(homeRoot, workspaceId, 'codex-home');
}

/**
 * A workspace's home as a gateway killed mid-run leaves it: `state.txt`,
 * a config.toml with a secret, and a state file saying it holds unsaved
 * work of `generation` (with the process `rec` when given).
 */
async function leftover(homeRoot: string, workspaceId: string, generation: string | null, state: string, rec: Rec = { pid: null, startTicks: null }, stored = false): Promise<string> {
  const dir = homeOf(homeRoot, workspaceId);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(path.join(dir, 'state.txt'), state);
  await writeFile(path.join(dir, 'config.toml'), 'secret = "never stored"\n');
  await writeFile(path.join(dir, STATE), JSON.stringify({ generation, stored, ...rec, gatewayPid: 1 }));
  return dir;
}

/** A generation directory of the earlier layout, with a marker when `rec` is given. */
async function legacyLeftover(homeRoot: string, workspaceId: string, generation: string, state: string, rec?: Rec): Promise<string> {
  const dir = path.join(homeRoot, workspaceId, generation);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(path.join(dir, 'state.txt'), state);
  if (rec !== undefined) await writeFile(path.join(dir, LEGACY_MARKER), JSON.stringify({ ...rec, workspaceId, generation, gatewayPid: 1 }));
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

async function startSup(e: Env, stopGraceMs = 2000, homeCache?: { enabled?: boolean; maxBytes?: number }): Promise<Supervisor> {
  const sup = await Supervisor.start({
    codexBin: fakeCodexBin(),
    homeRoot: e.homeRoot,
    store: new FileObjectStore(e.storeDir),
    shards: 2,
    logger: quietLogger,
    stopGraceMs,
    readyTimeoutMs: 15_000,
    ...(homeCache === undefined ? {} : { homeCache }),
  });
  e.sups.push(sup);
  return sup;
}

/** Resolves once every shard has handled what the scan at start-up found. */
async function recovered(sup: Supervisor): Promise<void> {
  await waitFor(async () => (await sup.stats()).every((s) => !s.recovering), 20_000, 'recovery to finish');
}

async function storedGeneration(e: Env, id: string): Promise<string | undefined> {
  return (await new FileObjectStore(e.storeDir).head(id))?.generation;
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

/**
 * The environment a dead gateway's child had: recovery signals a recorded pid
 * only when the process carries it (a home's state file is writable by the
 * child, so a bare pid there proves nothing).
 */
function deadChildEnv(e: Env, workspaceId: string): NodeJS.ProcessEnv {
  return { ...process.env, CODEX_HOME: homeOf(e.homeRoot, workspaceId), CXG_LOOPBACK_TOKEN: 'from-the-dead-gateway' };
}

describe('start-up recovery', () => {
  it('a home whose state records a live process › the process group is stopped, the home uploaded and kept; the next ensure sees its state', async () => {
    const e = await setup();
    // A leader and a second process in its group, like codex and a tool it started.
    const pidFile = path.join(e.root, 'bg.pid');
    const leader = spawn('sh', ['-c', `sleep 1000 & echo $! > ${pidFile}; exec sleep 1000`], { detached: true, stdio: 'ignore', env: deadChildEnv(e, 'rec-live') });
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
    const g = gen(5000);
    await leftover(e.homeRoot, 'rec-live', g, 'from-the-dead-gateway', { pid, startTicks: await startTicks(pid) });

    const sup = await startSup(e);
    await waitFor(() => !processAlive(pid) && !processAlive(bg), 10_000, 'the leftover process group to stop');
    await waitFor(async () => (await homeState(e.homeRoot, 'rec-live'))?.stored === true, 10_000, 'the leftover home to be uploaded');
    expect(await storedGeneration(e, 'rec-live')).toBe(g);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-live' }, countingBuilder());
    expect(h.codexHome).toBe(homeOf(e.homeRoot, 'rec-live'));
    expect(await readInHome(h, 'state.txt')).toBe('from-the-dead-gateway');
    // Secrets of the dead run were not kept: the new config.toml is the builder's.
    expect(await readFile(path.join(h.codexHome, 'config.toml'), 'utf8')).not.toContain('never stored');
  });

  it('a recorded live process that is not a process-group leader › it is stopped too before its home is uploaded', async () => {
    const e = await setup();
    // In this test process's group, not its own: only a signal to the pid reaches it.
    const child = spawn('sleep', ['1000'], { stdio: 'ignore', env: deadChildEnv(e, 'rec-nonleader') });
    const pid = child.pid as number;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    e.cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    });
    await leftover(e.homeRoot, 'rec-nonleader', gen(5000), 'work', { pid, startTicks: await startTicks(pid) });
    await startSup(e, 600);
    await waitFor(async () => (await homeState(e.homeRoot, 'rec-nonleader'))?.stored === true, 10_000, 'the home to be uploaded');
    await exited;
    expect(child.signalCode).not.toBeNull();
  });

  it('a state whose pid is alive but started at another time (pid reuse) › that process is not signalled; the home is still uploaded', async () => {
    const e = await setup();
    const stranger = await groupLeader();
    e.cleanups.push(() => stranger.stop());
    await leftover(e.homeRoot, 'rec-reused', gen(5000), 'still-mine', { pid: stranger.pid, startTicks: stranger.ticks + 4242 });
    const sup = await startSup(e, 300);
    await waitFor(async () => (await homeState(e.homeRoot, 'rec-reused'))?.stored === true, 10_000, 'the home to be uploaded');
    expect(processAlive(stranger.pid)).toBe(true);
    expect(stranger.child.signalCode).toBeNull();
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-reused' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('still-mine');
    expect(processAlive(stranger.pid)).toBe(true);
  });

  it('a state without a start time (pid only) › the pid cannot be told apart from a reuse: not signalled, home uploaded', async () => {
    const e = await setup();
    const stranger = await groupLeader();
    e.cleanups.push(() => stranger.stop());
    await leftover(e.homeRoot, 'rec-noticks', gen(5000), 'kept', { pid: stranger.pid, startTicks: null });
    await startSup(e, 300);
    await waitFor(async () => (await homeState(e.homeRoot, 'rec-noticks'))?.stored === true, 10_000, 'the home to be uploaded');
    expect(processAlive(stranger.pid)).toBe(true);
  });

  it('a download cut short › removed without upload: the stored object stays as it was', async () => {
    const e = await setup();
    await stored(e, { 'rec-incoming': 'stored-v1' });
    const object = path.join(e.storeDir, 'rec-incoming.tar.gz');
    const before = await stat(object);
    const objectBytes = await readFile(object);
    // The stored run's home was evicted; a later download died halfway.
    await rm(path.join(e.homeRoot, 'rec-incoming'), { recursive: true });
    const partial = path.join(e.homeRoot, 'rec-incoming', '.incoming-0badf00d');
    await mkdir(partial, { recursive: true });
    await writeFile(path.join(partial, 'state.txt'), 'partial-download');
    const sup = await startSup(e);
    await recovered(sup);
    expect(existsSync(partial)).toBe(false);
    expect((await stat(object)).mtimeMs).toBe(before.mtimeMs);
    expect(await readFile(object)).toEqual(objectBytes);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-incoming' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v1');
  });

  it('a home whose upload succeeded before the gateway died (same generation as the stored object) › marked stored, not uploaded again', async () => {
    const e = await setup();
    await stored(e, { 'rec-same': 'stored-v1' });
    const object = path.join(e.storeDir, 'rec-same.tar.gz');
    const generation = (await storedGeneration(e, 'rec-same')) as string;
    const before = await stat(object);
    await leftover(e.homeRoot, 'rec-same', generation, 'stored-v1');
    const sup = await startSup(e);
    await waitFor(async () => (await homeState(e.homeRoot, 'rec-same'))?.stored === true, 10_000, 'the home to be marked stored');
    expect((await stat(object)).mtimeMs).toBe(before.mtimeMs);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-same' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v1');
  });

  it('a home left unsaved with the store down at start-up › started from as it is (nothing newer can be stored), then stored once the store is back', async () => {
    const e = await setup();
    await stored(e, { 'rec-down': 'stored-v1' });
    await leftover(e.homeRoot, 'rec-down', gen(0), 'unsaved-v2');
    await rename(e.storeDir, `${e.storeDir}.away`);
    await writeFile(e.storeDir, 'the store is down');
    const sup = await startSup(e);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-down' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('unsaved-v2');
    await rm(e.storeDir, { force: true });
    await rename(`${e.storeDir}.away`, e.storeDir);
    expect((await sup.shutdown({ workspaceId: 'rec-down' })).saved).toBe(true);
    expect(await homeState(e.homeRoot, 'rec-down')).toMatchObject({ stored: true });
  });

  it('a warm home with the store down › never started from unchecked (the store may hold newer); started once the store answers', async () => {
    const e = await setup();
    await stored(e, { 'rec-warm-down': 'stored-v1' });
    expect(await homeState(e.homeRoot, 'rec-warm-down')).toMatchObject({ stored: true });
    await rename(e.storeDir, `${e.storeDir}.away`);
    await writeFile(e.storeDir, 'the store is down');
    const sup = await startSup(e);
    const err = await sup.ensureSubprocess({ workspaceId: 'rec-warm-down' }, countingBuilder()).then(
      () => undefined,
      (x: unknown) => x as { code?: string },
    );
    expect(err?.code).toMatch(/^GW_STORE_/);
    expect(await readFile(path.join(homeOf(e.homeRoot, 'rec-warm-down'), 'state.txt'), 'utf8')).toBe('stored-v1');
    await rm(e.storeDir, { force: true });
    await rename(`${e.storeDir}.away`, e.storeDir);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-warm-down' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v1');
  });

  it('a home left unsaved that is older than the stored object › set aside in #quarantine, never uploaded over the newer state', async () => {
    const e = await setup();
    await stored(e, { 'rec-stale': 'newer-stored' });
    await rm(path.join(e.homeRoot, 'rec-stale'), { recursive: true });
    const g = gen(60_000);
    await leftover(e.homeRoot, 'rec-stale', g, 'stale');
    const object = path.join(e.storeDir, 'rec-stale.tar.gz');
    const bytes = await readFile(object);
    const sup = await startSup(e);
    const q = path.join(e.homeRoot, QUARANTINE_DIR, 'rec-stale', g);
    await waitFor(() => existsSync(q), 10_000, 'the stale home to be set aside');
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('stale');
    expect(await readFile(object)).toEqual(bytes);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-stale' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('newer-stored');
  });

  it('a home whose state cannot be read › taken for unsaved work: uploaded when the store has nothing', async () => {
    const e = await setup();
    const dir = await leftover(e.homeRoot, 'rec-garbled', gen(1000), 'only-copy');
    await writeFile(path.join(dir, STATE), '{not json');
    const sup = await startSup(e);
    await waitFor(async () => (await homeState(e.homeRoot, 'rec-garbled'))?.stored === true, 10_000, 'the home to be uploaded');
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-garbled' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('only-copy');
  });

  it('an ensure for a workspace still being recovered waits and sees the recovered state, never the older stored one', async () => {
    const e = await setup();
    await stored(e, { 'rec-wait': 'stored-old' });
    // A leftover process that ignores SIGTERM keeps recovery busy for the whole grace.
    const leader = spawn('sh', ['-c', "trap '' TERM; exec sleep 1000"], { detached: true, stdio: 'ignore', env: deadChildEnv(e, 'rec-wait') });
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
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-wait' }, countingBuilder());
    // The start waited for the leftover process, which only SIGKILL at the end of the grace ends.
    expect(processAlive(pid)).toBe(false);
    expect(await readInHome(h, 'state.txt')).toBe('recovered-new');
  });

  it('an ensure right after start, while the scan of many leftovers is still running, sees the recovered state', async () => {
    const e = await setup();
    await stored(e, { 'rec-race': 'stored-old' });
    // Many cut-short downloads make the scan take a while.
    for (let i = 0; i < 400; i++) await mkdir(path.join(e.homeRoot, `rec-filler-${i}`, `.incoming-${i}`), { recursive: true });
    await leftover(e.homeRoot, 'rec-race', gen(0), 'recovered-new');
    const sup = await startSup(e);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-race' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('recovered-new');
    expect(h.isAlive()).toBe(true);
    await recovered(sup);
    // The live child's own home is never taken for a leftover.
    expect(h.isAlive()).toBe(true);
    expect(await homeState(e.homeRoot, 'rec-race')).toMatchObject({ stored: false, pid: h.pid });
    const left = await Promise.all((await readdir(e.homeRoot)).filter((n) => n.startsWith('rec-filler')).map((n) => homeDirs(e.homeRoot, n)));
    expect(left.flat()).toEqual([]);
  });
});

describe('start-up recovery of the earlier layout (a directory per start)', () => {
  it('the newest generation that ran becomes the stable home and is stored; the older one with work is set aside; one that never ran is removed', async () => {
    const e = await setup();
    const older = await legacyLeftover(e.homeRoot, 'rec-two', gen(60_000, '000001'), 'older', { pid: null, startTicks: null });
    await writeFile(path.join(older, 'only-in-older.txt'), 'x');
    const newerGen = gen(1000, '000002');
    await legacyLeftover(e.homeRoot, 'rec-two', newerGen, 'newer', { pid: null, startTicks: null });
    const never = await legacyLeftover(e.homeRoot, 'rec-two', gen(500, '000003'), 'never-ran');
    const sup = await startSup(e);
    const q = path.join(e.homeRoot, QUARANTINE_DIR, 'rec-two', path.basename(older));
    await waitFor(async () => existsSync(q) && (await homeState(e.homeRoot, 'rec-two'))?.stored === true, 10_000, 'quarantine and upload');
    expect(existsSync(never)).toBe(false);
    expect(await storedGeneration(e, 'rec-two')).toBe(newerGen);
    expect(await homeDirs(e.homeRoot, 'rec-two')).toEqual(['codex-home']);
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('older');
    expect(await readFile(path.join(q, 'only-in-older.txt'), 'utf8')).toBe('x');
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-two' }, countingBuilder());
    expect(h.codexHome).toBe(homeOf(e.homeRoot, 'rec-two'));
    expect(await readInHome(h, 'state.txt')).toBe('newer');
    // The quarantine directory is never taken for a workspace by a later recovery.
    await sup.close();
    await recovered(await startSup(e));
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('older');
  });

  it('a generation noted as stored but not removed › kept warm; replaced by the stored state when that is newer', async () => {
    const e = await setup();
    await stored(e, { 'rec-noted': 'stored-v2' });
    await rm(path.join(e.homeRoot, 'rec-noted'), { recursive: true });
    const g = gen(60_000);
    await legacyLeftover(e.homeRoot, 'rec-noted', g, 'stored-v1-long-ago', { pid: null, startTicks: null });
    await writeFile(path.join(e.homeRoot, 'rec-noted', `.cxg-stored-${g}`), '');
    const sup = await startSup(e);
    await recovered(sup);
    expect(await homeState(e.homeRoot, 'rec-noted')).toMatchObject({ generation: g, stored: true });
    expect(existsSync(path.join(e.homeRoot, 'rec-noted', `.cxg-stored-${g}`))).toBe(false);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-noted' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stored-v2');
  });

  it('a generation with work beside a stable home › set aside, the stable home kept', async () => {
    const e = await setup();
    await stored(e, { 'rec-both': 'stable-stored' });
    const g = gen(1000);
    await legacyLeftover(e.homeRoot, 'rec-both', g, 'legacy-work', { pid: null, startTicks: null });
    const sup = await startSup(e);
    const q = path.join(e.homeRoot, QUARANTINE_DIR, 'rec-both', g);
    await waitFor(() => existsSync(q), 10_000, 'the legacy home to be set aside');
    await recovered(sup);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-both' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('stable-stored');
    expect(await readFile(path.join(q, 'state.txt'), 'utf8')).toBe('legacy-work');
  });

  it('an object stored by the earlier layout (a bare generation file, no home path) restores', async () => {
    const e = await setup();
    await stored(e, { 'rec-old-object': 'from-an-old-object' });
    const g = (await storedGeneration(e, 'rec-old-object')) as string;
    await rm(path.join(e.storeDir, 'rec-old-object.meta.json'));
    await writeFile(path.join(e.storeDir, 'rec-old-object.generation'), g);
    await rm(path.join(e.homeRoot, 'rec-old-object'), { recursive: true });
    expect(await storedGeneration(e, 'rec-old-object')).toBe(g);
    const sup = await startSup(e);
    const h = await sup.ensureSubprocess({ workspaceId: 'rec-old-object' }, countingBuilder());
    expect(await readInHome(h, 'state.txt')).toBe('from-an-old-object');
    expect(await homeState(e.homeRoot, 'rec-old-object')).toMatchObject({ stored: false });
  });
});

describe('findLeftovers', () => {
  it('lists owned workspaces with their home, earlier-layout generations (oldest first) and debris, and ignores everything else', async () => {
    const e = await setup();
    const r = e.homeRoot;
    const g1 = gen(9000, '111111');
    const g2 = gen(1000, '222222');
    await leftover(r, 'ws-a', g2, 'x', { pid: 12, startTicks: 34 });
    await legacyLeftover(r, 'ws-a', g2, 'x', { pid: 56, startTicks: 78 });
    await legacyLeftover(r, 'ws-a', g1, 'x');
    await mkdir(path.join(r, 'ws-a', '.incoming-1234abcd'), { recursive: true });
    await leftover(r, 'not-mine', gen(1000), 'x');
    // Not workspaces, not generations, not homes:
    await mkdir(path.join(r, QUARANTINE_DIR, 'ws-a', gen(5000)), { recursive: true });
    await mkdir(path.join(r, 'bad name', gen(5000)), { recursive: true });
    await writeFile(path.join(r, 'README'), 'a file where a workspace would be');
    await mkdir(path.join(r, 'ws-a', 'tmp'), { recursive: true });
    await mkdir(path.join(r, 'ws-a', 'G0000000000-abcdef'), { recursive: true });
    await writeFile(path.join(r, 'ws-a', gen(4000, 'ffffff')), 'a file with a generation name');
    // A symlinked generation, a symlinked home, and a symlinked workspace directory lead outside homeRoot.
    const outside = path.join(e.root, 'outside');
    await mkdir(path.join(outside, gen(3000, 'eeeeee')), { recursive: true });
    await symlink(path.join(outside, gen(3000, 'eeeeee')), path.join(r, 'ws-a', gen(3000, 'dddddd')));
    await mkdir(path.join(r, 'ws-b'), { recursive: true });
    await symlink(outside, path.join(r, 'ws-b', 'codex-home'));
    await symlink(outside, path.join(r, 'ws-link'));

    const found = await findLeftovers(r, (id) => id !== 'not-mine');
    expect(found.map((w) => w.workspaceId)).toEqual(['ws-a', 'ws-b']);
    const a = found[0];
    expect(a?.home?.state).toMatchObject({ generation: g2, stored: false, pid: 12, startTicks: 34 });
    expect(a?.legacy.map((h) => h.generation)).toEqual([g1, g2]);
    expect(a?.legacy[0]?.record).toBeUndefined();
    expect(a?.legacy[1]?.record).toMatchObject({ pid: 56, startTicks: 78 });
    expect(a?.debris.map((d) => path.basename(d))).toEqual(['.incoming-1234abcd']);
    expect(found[1]?.home).toBeUndefined();
    expect(await findLeftovers(path.join(e.root, 'missing'), () => true)).toEqual([]);
  });

  it('a legacy marker that exists but cannot be parsed still counts as a run (the home is kept, not removed)', async () => {
    const e = await setup();
    const dir = await legacyLeftover(e.homeRoot, 'ws-garbled', gen(1000), 'x');
    await writeFile(path.join(dir, LEGACY_MARKER), '{not json');
    const found = await findLeftovers(e.homeRoot, () => true);
    expect(found).toHaveLength(1);
    expect(found[0]?.legacy[0]?.record).toBeDefined();
  });

  it('a symlinked workspace directory is never recovered: what it points to is not deleted', async () => {
    const e = await setup();
    const outside = path.join(e.root, 'outside');
    const g = gen(1000);
    await mkdir(path.join(outside, g), { recursive: true });
    await writeFile(path.join(outside, g, 'precious.txt'), 'do not delete');
    await mkdir(path.join(outside, 'codex-home'), { recursive: true });
    await writeFile(path.join(outside, 'codex-home', STATE), JSON.stringify({ generation: g, stored: true }));
    await mkdir(e.homeRoot, { recursive: true });
    await symlink(outside, path.join(e.homeRoot, 'ws-link'));
    await recovered(await startSup(e));
    expect(await readFile(path.join(outside, g, 'precious.txt'), 'utf8')).toBe('do not delete');
    expect((await homeDirs(e.homeRoot, 'ws-link')).sort()).toEqual(['codex-home', g]);
  });
});
