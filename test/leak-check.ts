/**
 * Global setup: every run gets its own temp directory and a marker in the
 * environment, and ends with a check that it left nothing behind.
 *
 * A process counts as started by this run when its environment holds the
 * marker (test workers inherit it, and so does everything they spawn with
 * the test's environment), or when its working directory or an environment
 * value (CODEX_HOME) lies in the run's temp directory: the gateway gives
 * codex children only an allowlist of its environment, and spawns them
 * detached, so neither the marker nor the ancestry reaches them, but their
 * home does. The check waits a little for processes that are on their way
 * out, then names what is left, kills it (process groups, by pid) and fails
 * the run; likewise for anything left in the temp directory. Its last line
 * says how many of each were left.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { RUN_ENV, TMP_ROOT_ENV, testTempBase } from './temp-root.js';

export interface Leftover {
  pid: number;
  pgid: number;
  why: string;
  cmd: string;
}

async function read(file: string): Promise<string | undefined> {
  return fs.readFile(file, 'utf8').catch(() => undefined);
}

function within(p: string, root: string): boolean {
  return p === root || p.startsWith(`${root}/`);
}

/** Live processes other than this one and its own test workers that belong to the run. */
export async function leftovers(run: string, root: string): Promise<Leftover[]> {
  const out: Leftover[] = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const stat = await read(`/proc/${pid}/stat`);
    if (stat === undefined) continue;
    const [state, ppid, pgid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (state === 'Z' || state === 'X') continue;
    const cmd = ((await read(`/proc/${pid}/cmdline`)) ?? '').split('\0').join(' ').trim();
    // vitest's own fork workers are closed after the global teardown.
    if (Number(ppid) === process.pid && cmd.includes('vitest')) continue;
    const env = ((await read(`/proc/${pid}/environ`)) ?? '').split('\0');
    const cwd = (await fs.readlink(`/proc/${pid}/cwd`).catch(() => '')).replace(/ \(deleted\)$/, '');
    let why: string | undefined;
    if (env.includes(`${RUN_ENV}=${run}`)) why = `${RUN_ENV} in its environment`;
    else if (cwd !== '' && within(cwd, root)) why = `cwd ${cwd}`;
    else {
      const entry = env.find((e) => {
        const value = e.slice(e.indexOf('=') + 1);
        return value.startsWith('/') && within(value, root);
      });
      if (entry !== undefined) why = `environment ${entry}`;
    }
    if (why !== undefined) out.push({ pid, pgid: Number(pgid), why, cmd: cmd.slice(0, 160) });
  }
  return out;
}

function kill(left: Leftover[]): void {
  for (const l of left) {
    for (const target of l.pgid === l.pid ? [-l.pid, l.pid] : [l.pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
  }
}

export default async function setup(): Promise<() => Promise<void>> {
  const run = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
  const root = path.join(testTempBase(), `run-${run}`);
  await fs.mkdir(root, { recursive: true });
  process.env[RUN_ENV] = run;
  process.env[TMP_ROOT_ENV] = root;

  return async () => {
    // Processes a test just signalled may still be exiting: give them a moment, not forever.
    let left = await leftovers(run, root);
    for (const until = Date.now() + 10_000; left.length > 0 && Date.now() < until; left = await leftovers(run, root)) await sleep(200);
    const dirs = (await fs.readdir(root).catch(() => [] as string[])).sort();
    for (const l of left) process.stdout.write(`leaks: process ${l.pid} (${l.why}): ${l.cmd}\n`);
    for (const d of dirs) process.stdout.write(`leaks: temp dir ${path.join(root, d)}\n`);
    process.stdout.write(`leaks: ${left.length} processes and ${dirs.length} temp dirs left by this run\n`);
    kill(left);
    await fs.rm(root, { recursive: true, force: true });
    if (left.length > 0 || dirs.length > 0) {
      process.exitCode = 1;
      throw new Error(`the run left ${left.length} processes and ${dirs.length} temp dirs behind (listed above)`);
    }
  };
}
