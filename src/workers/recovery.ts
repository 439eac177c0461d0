/**
 * Start-up recovery: homes left under homes.root by a gateway that died
 * (SIGKILL, OOM, a crash). A home whose marker file says a codex process ran
 * in it may hold work not yet stored; its process, if still running, is
 * stopped, and the home goes to the spool to be uploaded. A home without a
 * marker never ran a process: it holds at most a (possibly partial) copy of
 * the stored object, and is removed.
 *
 * A pid is signalled only when /proc shows the same process that was
 * recorded (same start time), never a process that reused the pid.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { WORKSPACE_ID_PATTERN } from '../shared/workspace-id.js';
import { CHILD_PID_FILE, processStartTicks } from './home.js';
import type { ChildPidRecord } from './home.js';
import { signalGroup } from './spawn.js';

export interface LeftoverHome {
  workspaceId: string;
  generation: string;
  dir: string;
  /** The marker, when a process was started in this home. */
  record: ChildPidRecord | undefined;
}

const GENERATION = /^g[0-9a-z]{9}-[0-9a-f]{6}$/;

/** Directory under homes.root for homes set aside by recovery (not a valid workspace id). */
export const QUARANTINE_DIR = '#quarantine';

/** Generation directories under `homeRoot` of the workspaces `owns` accepts, oldest first per workspace. */
export async function findLeftoverHomes(homeRoot: string, owns: (workspaceId: string) => boolean): Promise<LeftoverHome[]> {
  let workspaces: string[];
  try {
    workspaces = await fs.readdir(homeRoot);
  } catch {
    return [];
  }
  const out: LeftoverHome[] = [];
  for (const workspaceId of workspaces.sort()) {
    if (!WORKSPACE_ID_PATTERN.test(workspaceId) || workspaceId === '.' || workspaceId === '..' || !owns(workspaceId)) continue;
    // Only real directories: a symlink would lead recovery to delete or upload what lies outside homeRoot.
    const ws = await fs.lstat(path.join(homeRoot, workspaceId)).catch(() => undefined);
    if (ws === undefined || !ws.isDirectory()) continue;
    let gens: string[];
    try {
      gens = await fs.readdir(path.join(homeRoot, workspaceId));
    } catch {
      continue;
    }
    for (const generation of gens.filter((g) => GENERATION.test(g)).sort()) {
      const dir = path.join(homeRoot, workspaceId, generation);
      const st = await fs.lstat(dir).catch(() => undefined);
      if (st === undefined || !st.isDirectory()) continue;
      out.push({ workspaceId, generation, dir, record: await readRecord(dir) });
    }
  }
  return out;
}

async function readRecord(dir: string): Promise<ChildPidRecord | undefined> {
  try {
    const rec = JSON.parse(await fs.readFile(path.join(dir, CHILD_PID_FILE), 'utf8')) as ChildPidRecord;
    return typeof rec === 'object' && rec !== null ? rec : undefined;
  } catch (err) {
    // A marker that exists but cannot be read still means a process ran here.
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : { pid: null, startTicks: null, workspaceId: '', generation: '', gatewayPid: 0 };
  }
}

export type LeftoverChildOutcome = 'none' | 'gone' | 'pid-reused' | 'stopped';

/** Whether /proc shows the recorded process: same pid, same start time, not a zombie. */
export async function isRecordedProcess(rec: ChildPidRecord): Promise<boolean> {
  if (rec.pid === null || rec.startTicks === null) return false;
  if ((await processStartTicks(rec.pid)) !== rec.startTicks) return false;
  return !(await isZombie(rec.pid));
}

async function isZombie(pid: number): Promise<boolean> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/**
 * Stops the process group a dead gateway left running in a home: SIGTERM,
 * a second SIGTERM at half the grace, SIGKILL at its end. Not our child any
 * more, so it is watched through /proc rather than waited for.
 */
export async function stopLeftoverChild(rec: ChildPidRecord | undefined, graceMs: number): Promise<LeftoverChildOutcome> {
  if (rec === undefined || rec.pid === null) return 'none';
  const ticks = await processStartTicks(rec.pid);
  if (ticks === null) return 'gone';
  // Without a recorded start time the pid cannot be told apart from a reuse: leave it alone.
  if (rec.startTicks === null || ticks !== rec.startTicks) return 'pid-reused';
  if (await isZombie(rec.pid)) return 'gone';
  const pid = rec.pid;
  // The recorded process leads its own group (codex children are spawned so);
  // if no such group exists, it is signalled alone, since its home must not be
  // uploaded and deleted while it still runs. Its identity was checked above.
  const signal = (sig: NodeJS.Signals): void => {
    if (signalGroup(pid, sig)) return;
    try {
      process.kill(pid, sig);
    } catch {
      // Gone meanwhile.
    }
  };
  const until = Date.now() + graceMs;
  signal('SIGTERM');
  let secondSent = false;
  while (await isRecordedProcess(rec)) {
    const left = until - Date.now();
    if (left <= 0) {
      signal('SIGKILL');
      break;
    }
    if (!secondSent && left <= graceMs / 2) {
      signal('SIGTERM');
      secondSent = true;
    }
    await sleep(25);
  }
  // Whatever else stayed in the group follows its leader.
  signalGroup(pid, 'SIGKILL');
  return 'stopped';
}

/** Moves a home that cannot be used out of the way, keeping its contents. */
export async function quarantine(homeRoot: string, h: LeftoverHome): Promise<string> {
  const base = path.join(homeRoot, QUARANTINE_DIR, h.workspaceId, h.generation);
  await fs.mkdir(path.dirname(base), { recursive: true, mode: 0o700 });
  // A home set aside before under the same name (put back by hand, say) is kept too: never overwritten.
  for (let i = 0; ; i++) {
    const to = i === 0 ? base : `${base}.${i}`;
    try {
      await fs.rename(h.dir, to);
      return to;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || i >= 100) throw err;
    }
  }
}
