/**
 * Start-up recovery: what an earlier gateway left under homes.root for this
 * shard's workspaces. A home whose state file says it is stored is a warm
 * copy of the store; any other home may hold work not yet stored: its
 * process, if still running (the gateway was killed), is stopped, and the
 * home goes to the spool to be uploaded. Downloads cut short are removed.
 *
 * Homes of the earlier layout, one directory per start
 * (`<homes.root>/<workspace>/<generation>/`), are taken over too: the newest
 * one that ran a process becomes the workspace's stable home, older ones
 * with work are set aside, and those that never ran one are removed.
 *
 * A pid is signalled only when /proc shows the same process that was
 * recorded (same start time), never a process that reused the pid.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { WORKSPACE_ID_PATTERN } from '../shared/workspace-id.js';
import { HOME_DIR, INCOMING_PREFIX, readHomeState } from './home.js';
import { processEnded, processEnviron, processStartTicks } from '../shared/proc.js';
import type { HomeState } from './home.js';
import { signalGroup } from './process-group.js';

/** The process a home's state (or an earlier layout's marker) recorded. */
export interface ProcessRecord {
  pid: number | null;
  startTicks: number | null;
}

/** A generation directory of the earlier layout. */
export interface LegacyHome {
  generation: string;
  dir: string;
  /** Its marker, when a process was started in it. */
  record: ProcessRecord | undefined;
  /** Its note that it was stored but not removed (`<workspace>/.cxg-stored-<generation>`). */
  storedNote: boolean;
}

export interface LeftoverWorkspace {
  workspaceId: string;
  /** The workspace's directory. */
  dir: string;
  /** The stable home, when there is one; `state` undefined when it has no state file. */
  home: { dir: string; state: HomeState | undefined } | undefined;
  /** Earlier-layout homes, oldest first. */
  legacy: LegacyHome[];
  /** Downloads cut short and directories half removed: they hold no work. */
  debris: string[];
}

const GENERATION = /^g[0-9a-z]{9}-[0-9a-f]{6}$/;
/** The earlier layout's record of a home's process. */
export const LEGACY_MARKER = '.cxg-child.json';
const LEGACY_STORED_NOTE = '.cxg-stored-';

/** Directory under homes.root for homes set aside by recovery (not a valid workspace id). */
export const QUARANTINE_DIR = '#quarantine';

/** What lies under `homeRoot` for the workspaces `owns` accepts. */
export async function findLeftovers(homeRoot: string, owns: (workspaceId: string) => boolean): Promise<LeftoverWorkspace[]> {
  let workspaces: string[];
  try {
    workspaces = await fs.readdir(homeRoot);
  } catch {
    return [];
  }
  const out: LeftoverWorkspace[] = [];
  for (const workspaceId of workspaces.sort()) {
    if (!WORKSPACE_ID_PATTERN.test(workspaceId) || workspaceId === '.' || workspaceId === '..' || !owns(workspaceId)) continue;
    const dir = path.join(homeRoot, workspaceId);
    // Only real directories: a symlink would lead recovery to delete or upload what lies outside homeRoot.
    if (!(await isRealDir(dir))) continue;
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      continue;
    }
    const w: LeftoverWorkspace = { workspaceId, dir, home: undefined, legacy: [], debris: [] };
    for (const name of names.sort()) {
      const p = path.join(dir, name);
      if (name === HOME_DIR) {
        if (await isRealDir(p)) w.home = { dir: p, state: await readHomeState(p) };
      } else if (name.startsWith(INCOMING_PREFIX) || name.endsWith('.deleting')) {
        w.debris.push(p);
      } else if (GENERATION.test(name) && (await isRealDir(p))) {
        w.legacy.push({ generation: name, dir: p, record: await readLegacyMarker(p), storedNote: names.includes(`${LEGACY_STORED_NOTE}${name}`) });
      }
    }
    out.push(w);
  }
  return out;
}

/** Removes the earlier layout's stored-notes of a workspace. */
export async function clearLegacyNotes(w: LeftoverWorkspace): Promise<void> {
  for (const h of w.legacy) await fs.rm(path.join(w.dir, `${LEGACY_STORED_NOTE}${h.generation}`), { force: true });
}

async function isRealDir(p: string): Promise<boolean> {
  const st = await fs.lstat(p).catch(() => undefined);
  return st !== undefined && st.isDirectory();
}

async function readLegacyMarker(dir: string): Promise<ProcessRecord | undefined> {
  try {
    const rec = JSON.parse(await fs.readFile(path.join(dir, LEGACY_MARKER), 'utf8')) as Partial<ProcessRecord> | null;
    return { pid: typeof rec?.pid === 'number' ? rec.pid : null, startTicks: typeof rec?.startTicks === 'number' ? rec.startTicks : null };
  } catch (err) {
    // A marker that exists but cannot be read still means a process ran here.
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : { pid: null, startTicks: null };
  }
}

export type LeftoverChildOutcome = 'none' | 'gone' | 'pid-reused' | 'stopped';

/** Whether /proc shows the recorded process: same pid, same start time, not a zombie. */
export async function isRecordedProcess(rec: ProcessRecord): Promise<boolean> {
  if (rec.pid === null || rec.startTicks === null) return false;
  if ((await processStartTicks(rec.pid)) !== rec.startTicks) return false;
  return !(await processEnded(rec.pid));
}

/** Whether a process has the environment every child is started with (child-env.ts). */
async function isGatewayChild(pid: number): Promise<boolean> {
  const env = await processEnviron(pid);
  return env !== undefined && env.some((e) => e.startsWith('CODEX_HOME=')) && env.some((e) => e.startsWith('CXG_LOOPBACK_TOKEN='));
}

/**
 * Stops the process group a dead gateway left running in a home: SIGTERM,
 * a second SIGTERM at half the grace, SIGKILL at its end. Not our child any
 * more, so it is watched through /proc rather than waited for.
 */
export async function stopLeftoverChild(rec: ProcessRecord | undefined, graceMs: number): Promise<LeftoverChildOutcome> {
  if (rec === undefined || rec.pid === null) return 'none';
  const ticks = await processStartTicks(rec.pid);
  if (ticks === null) return 'gone';
  // Without a recorded start time the pid cannot be told apart from a reuse: leave it alone.
  if (rec.startTicks === null || ticks !== rec.startTicks) return 'pid-reused';
  if (await processEnded(rec.pid)) return 'gone';
  // The record lies in a directory the child could write (spawn.user owns its home):
  // signal only a process that carries a child's environment, never one a forged record names.
  if (!(await isGatewayChild(rec.pid))) return 'pid-reused';
  const pid = rec.pid;
  // The recorded process leads its own group (codex children are spawned so);
  // if no such group exists, it is signalled alone, since its home must not be
  // uploaded while it still runs. Its identity was checked above.
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

/**
 * Moves a home that cannot be used out of the way, keeping its contents:
 * `<homes.root>/#quarantine/<workspace>/<name>`.
 */
export async function quarantine(homeRoot: string, workspaceId: string, dir: string, name: string): Promise<string> {
  const base = path.join(homeRoot, QUARANTINE_DIR, workspaceId, name);
  await fs.mkdir(path.dirname(base), { recursive: true, mode: 0o700 });
  // A home set aside before under the same name (put back by hand, say) is kept too: never overwritten.
  for (let i = 0; ; i++) {
    const to = i === 0 ? base : `${base}.${i}`;
    try {
      await fs.rename(dir, to);
      return to;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || i >= 100) throw err;
    }
  }
}
