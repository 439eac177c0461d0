/**
 * Shared pieces of the fault-injection suite: markers written into a
 * CODEX_HOME and counted afterwards, the `lost` figure each scenario reports
 * to the summary reporter, and /proc scans that see every process a home
 * runs, whoever started it.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { TaskMeta } from 'vitest';

declare module 'vitest' {
  interface TaskMeta {
    /** Markers a fault scenario wrote that did not survive (the summary line adds them up). */
    lost?: number;
    /** Why a fault scenario has no `lost` figure (the summary names it instead of adding 0). */
    uncounted?: string;
  }
}

/** The file in each home naming its generation and the process that runs in it (src/workers/home.ts). */
export const CHILD_RECORD = '.cxg-home.json';

// ---- markers -----------------------------------------------------------------

/**
 * Markers written into homes, per workspace, so that a scenario can say how
 * many of them it wrote did not come back.
 */
export class MarkerLedger {
  private readonly byKey = new Map<string, Map<string, string>>();

  /** Writes `rel` (relative to the home) straight into `home` and remembers it for `key`. */
  async write(key: string, home: string, rel: string, content = `${key}:${rel}`): Promise<void> {
    const file = path.join(home, rel);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, content);
    this.record(key, rel, content);
  }

  /** Remembers a marker written some other way (through the child, or by codex itself). */
  record(key: string, rel: string, content: string): void {
    const m = this.byKey.get(key) ?? new Map<string, string>();
    this.byKey.set(key, m);
    m.set(rel, content);
  }

  keys(): string[] {
    return [...this.byKey.keys()];
  }

  markers(key: string): Array<[string, string]> {
    return [...(this.byKey.get(key)?.entries() ?? [])];
  }

  get count(): number {
    let n = 0;
    for (const m of this.byKey.values()) n += m.size;
    return n;
  }

  /** Markers of `key` that `home` does not hold with the content written. */
  async missing(key: string, home: string): Promise<string[]> {
    const out: string[] = [];
    for (const [rel, content] of this.markers(key)) {
      const got = await fs.readFile(path.join(home, rel), 'utf8').catch(() => undefined);
      if (got !== content) out.push(rel);
    }
    return out;
  }
}

/**
 * One marker line per generation, appended to one file in the home. A home
 * with a thousand marker files would make every pack and unpack slower as
 * the test goes on; a log keeps the cost per generation flat and still shows
 * every generation that did not make it.
 */
export class MarkerLog {
  private readonly lines = new Map<string, string[]>();

  constructor(readonly rel = 'markers.log') {}

  async append(key: string, home: string, line: string): Promise<void> {
    if (line.includes('\n')) throw new Error('a marker line holds no newline');
    await fs.appendFile(path.join(home, this.rel), `${line}\n`);
    this.lines.set(key, [...(this.lines.get(key) ?? []), line]);
  }

  written(key: string): readonly string[] {
    return this.lines.get(key) ?? [];
  }

  get count(): number {
    let n = 0;
    for (const l of this.lines.values()) n += l.length;
    return n;
  }

  /** Lines in `home`'s log, in order (empty when there is none). */
  async read(home: string): Promise<string[]> {
    const text = await fs.readFile(path.join(home, this.rel), 'utf8').catch(() => '');
    return text.split('\n').filter((l) => l !== '');
  }

  /** Lines written for `key` that `home`'s log does not hold. */
  async missing(key: string, home: string): Promise<string[]> {
    const have = new Set(await this.read(home));
    return this.written(key).filter((l) => !have.has(l));
  }
}

/** Puts the scenario's lost-marker count where the summary reporter reads it. */
export function recordLost(task: { meta: TaskMeta }, lost: number): void {
  task.meta.lost = lost;
  delete task.meta.uncounted;
}

/** A fault scenario's loss count, taken however the scenario ends (see `countLosses`). */
export interface Losses {
  /**
   * Names how to count what the scenario lost, as soon as it has written
   * something it could lose; a later call replaces an earlier one (the count
   * grows with the scenario). The counter runs once, after the test.
   */
  countWith(counter: () => Promise<number>): void;
  /**
   * Counts now, for a scenario whose own cleanup (in its `finally`) removes
   * what there is to count; never throws. The test's end then reports this
   * count instead of counting again.
   */
  settle(): Promise<void>;
}

function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.split('\n')[0] ?? text;
}

/** The parts of a vitest test context that `countLosses` uses. */
interface CountingContext {
  task: { meta: TaskMeta; result?: { state?: string; errors?: ReadonlyArray<{ message?: string }> } };
  onTestFinished(fn: () => Promise<void>, timeout?: number): void;
}

/**
 * Counts a fault scenario's losses however it ends. Call it first thing in
 * the test; the counter the scenario names with `countWith` runs when the
 * test has finished (`onTestFinished`), passed or failed, so a scenario that
 * breaks at its first check still reports what it lost. A scenario that
 * ends before naming a counter, or whose counter fails or hangs, is
 * recorded as uncounted with the reason, never as 0. Something lost fails
 * the test.
 */
export function countLosses(ctx: CountingContext, countWithinMs = 45_000): Losses {
  let counter: (() => Promise<number>) | undefined;
  let counted: { lost: number } | { err: unknown } | undefined;
  const count = async (fn: () => Promise<number>): Promise<void> => {
    try {
      counted = { lost: await withDeadline(fn(), countWithinMs, () => 'counting the losses') };
    } catch (err) {
      counted = { err };
    }
  };
  delete ctx.task.meta.lost;
  ctx.task.meta.uncounted = 'the scenario never finished';
  ctx.onTestFinished(async () => {
    const failed = ctx.task.result?.state === 'fail';
    if (counter === undefined) {
      const why = ctx.task.result?.errors?.[0]?.message;
      ctx.task.meta.uncounted = failed ? `failed before it had written anything to count: ${firstLine(why ?? 'unknown error')}` : 'the scenario named nothing to count';
      if (!failed) throw new Error('a fault scenario names its counter (losses.countWith)');
      return;
    }
    if (counted === undefined) await count(counter);
    if (counted === undefined || 'err' in counted) {
      const err = counted?.err;
      ctx.task.meta.uncounted = `its count failed: ${firstLine(err)}`;
      throw new Error(`could not count the losses: ${firstLine(err)}`, { cause: err });
    }
    recordLost(ctx.task, counted.lost);
    if (counted.lost > 0) throw new Error(`the scenario lost ${counted.lost} of what it wrote`);
  }, countWithinMs + 5_000);
  return {
    countWith: (fn) => void (counter = fn),
    settle: async () => {
      if (counter !== undefined && counted === undefined) await count(counter);
    },
  };
}

/**
 * Awaits `p`; when it fails because the connection closed, says with which
 * code and reason (a gateway close reason names the GW_… code).
 */
export async function explained<T>(what: string, client: { whenClosed(): Promise<{ code: number; reason: string }>; isOpen: boolean }, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (client.isOpen) throw err;
    const closed = await client.whenClosed();
    throw new Error(`${what}: the connection was closed with ${closed.code} ${JSON.stringify(closed.reason)}`, { cause: err });
  }
}

/**
 * Awaits `p`, or fails after `ms` with what `state()` says then, so a hang is
 * reported with where it stuck rather than as a bare test timeout.
 */
export async function withDeadline<T>(p: Promise<T>, ms: number, state: () => string | Promise<string>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      void Promise.resolve(state()).then(
        (s) => reject(new Error(`no progress within ${ms} ms: ${s}`)),
        (err: unknown) => reject(new Error(`no progress within ${ms} ms (state unknown: ${String(err)})`)),
      );
    }, ms);
  });
  try {
    return await Promise.race([p, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- processes -----------------------------------------------------------------

interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  pgid: number;
  sid: number;
}

async function procStat(pid: number): Promise<ProcStat | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may hold spaces and parentheses: parse after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { pid, state: rest[0] ?? '?', ppid: Number(rest[1]), pgid: Number(rest[2]), sid: Number(rest[3]) };
  } catch {
    return undefined;
  }
}

async function allPids(): Promise<number[]> {
  return (await fs.readdir('/proc')).filter((p) => /^\d+$/.test(p)).map(Number);
}

/** Running (not zombie, not gone) according to /proc. */
export async function isRunning(pid: number): Promise<boolean> {
  const st = await procStat(pid);
  return st !== undefined && st.state !== 'Z' && st.state !== 'X';
}

/**
 * Processes whose working directory is `dir` or below it (codex children run
 * with cwd = CODEX_HOME). A home deleted under a live process still counts:
 * the kernel shows its cwd with a ` (deleted)` suffix. Zombies have no cwd.
 */
export async function processesUnder(dir: string): Promise<Array<{ pid: number; cwd: string }>> {
  const root = path.resolve(dir);
  const out: Array<{ pid: number; cwd: string }> = [];
  for (const pid of await allPids()) {
    let cwd: string;
    try {
      cwd = (await fs.readlink(`/proc/${pid}/cwd`)).replace(/ \(deleted\)$/, '');
    } catch {
      continue;
    }
    if (cwd === root || cwd.startsWith(`${root}/`)) out.push({ pid, cwd });
  }
  return out;
}

/** Live processes per workspace: `<homeRoot>/<workspace>/…` → pids. */
export async function processesPerWorkspace(homeRoot: string): Promise<Map<string, number[]>> {
  const root = path.resolve(homeRoot);
  const out = new Map<string, number[]>();
  for (const { pid, cwd } of await processesUnder(root)) {
    const key = cwd.slice(root.length + 1).split('/')[0] ?? '';
    out.set(key, [...(out.get(key) ?? []), pid]);
  }
  return out;
}

/**
 * Process groups with a live process whose cwd is in `dir` or below. A codex
 * child leads its own group (the gateway spawns it detached); helpers it runs
 * (the real binary runs `lsb_release`, `getconf` at start) are in that group,
 * so one child is one group however many processes it has.
 */
export async function groupsUnder(dir: string): Promise<number[]> {
  const groups = new Set<number>();
  for (const { pid } of await processesUnder(dir)) {
    const st = await procStat(pid);
    if (st !== undefined && st.state !== 'Z') groups.add(st.pgid);
  }
  return [...groups].sort((a, b) => a - b);
}

/**
 * Live processes that descend from `ancestor`, or sit in a process group or
 * session led by one of them (a detached child keeps its group after its
 * parent is gone).
 */
export async function descendantsOf(ancestor: number): Promise<number[]> {
  const stats = (await Promise.all((await allPids()).map((p) => procStat(p)))).filter((s): s is ProcStat => s !== undefined && s.state !== 'Z');
  const family = new Set<number>();
  let grew = true;
  while (grew) {
    grew = false;
    for (const s of stats) {
      if (family.has(s.pid)) continue;
      if (s.ppid === ancestor || family.has(s.ppid) || family.has(s.pgid) || family.has(s.sid)) {
        family.add(s.pid);
        grew = true;
      }
    }
  }
  return [...family].sort((a, b) => a - b);
}

/** Kills the process groups of `pids` (cleanup after a failed scenario); never throws. */
export function killGroups(pids: Iterable<number>): void {
  for (const pid of pids) {
    for (const target of [-pid, pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  }
}

/**
 * Last-resort cleanup: kills every process (and its group) running in a
 * directory under `dir`, whoever started it. Returns what it killed, so a
 * suite can say so; a clean run kills nothing.
 */
export async function killLeftovers(dir: string): Promise<number[]> {
  const found = await processesUnder(dir);
  const pids = found.map((p) => p.pid);
  if (pids.length > 0) {
    console.warn(`fault suite: killing processes left under ${dir}: ${found.map((p) => `${p.pid} (${p.cwd})`).join(', ')}`);
    killGroups(pids);
  }
  return pids;
}

/** The pid a home's state file names, or undefined. */
export async function recordedChildPid(home: string): Promise<number | undefined> {
  try {
    const rec = JSON.parse(await fs.readFile(path.join(home, CHILD_RECORD), 'utf8')) as { pid?: unknown };
    return typeof rec.pid === 'number' ? rec.pid : undefined;
  } catch {
    return undefined;
  }
}

// ---- files -----------------------------------------------------------------------

/** Every path under `dir` (lstat) with its type and, for files, a digest of the content. */
export async function treeSnapshot(dir: string, skip: (rel: string) => boolean = () => false): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    let names: string[];
    try {
      names = (await fs.readdir(path.join(dir, rel))).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const p = rel === '' ? name : `${rel}/${name}`;
      if (skip(p)) continue;
      const abs = path.join(dir, p);
      const st = await fs.lstat(abs);
      if (st.isDirectory()) {
        out[p] = 'dir';
        await walk(p);
      } else if (st.isFile()) {
        out[p] = `file ${sha256(await fs.readFile(abs))}`;
      } else if (st.isSymbolicLink()) {
        out[p] = `symlink ${await fs.readlink(abs)}`;
      } else {
        out[p] = 'other';
      }
    }
  };
  await walk('');
  return out;
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

/**
 * Makes `dir` refuse new entries. As root, directory modes do not stop
 * writes, so root uses the immutable attribute (`chattr +i`); others fall back
 * to mode 0500. Returns the undo, which never throws.
 */
export function makeUnwritable(dir: string): () => void {
  if (process.getuid?.() === 0) {
    execFileSync('chattr', ['+i', dir]);
    return () => {
      try {
        execFileSync('chattr', ['-i', dir]);
      } catch {
        // Already undone, or the directory is gone.
      }
    };
  }
  const mode = 0o700;
  execFileSync('chmod', ['0500', dir]);
  return () => {
    try {
      execFileSync('chmod', [mode.toString(8), dir]);
    } catch {
      // Gone.
    }
  };
}
