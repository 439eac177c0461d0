/**
 * CODEX_HOME directories: `<homeRoot>/<workspaceId>/<generation>`, one per
 * start, so no start ever shares a directory with a process still exiting.
 *
 * `deleteHome` is the only code that removes one, and it refuses unless the
 * directory is safely stored (invariant 4 of ARCHITECTURE.md).
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Dirent } from 'node:fs';
import path from 'node:path';
import { GatewayError } from '../shared/errors.js';

export type HomeOrigin = 'fresh' | 'store' | 'spool';

/** File in each home naming the process that runs in it (excluded from archives). */
export const CHILD_PID_FILE = '.cxg-child.json';

export interface ChildPidRecord {
  /** Null while the process is being started (the marker is written first). */
  pid: number | null;
  /** Process start time in clock ticks since boot (/proc/PID/stat field 22), to tell a reused pid apart. */
  startTicks: number | null;
  workspaceId: string;
  generation: string;
  gatewayPid: number;
}

export class Home {
  /** True once a codex process has run in it: its contents may differ from the store. */
  ran = false;
  /** Set once its contents reached the store. */
  uploaded = false;
  /** Found at start-up, left by an earlier gateway: compared with the store before it is uploaded. */
  recovered = false;

  constructor(
    readonly workspaceId: string,
    readonly generation: string,
    readonly dir: string,
    readonly origin: HomeOrigin,
  ) {}

  /**
   * Whether deleting loses nothing: its upload succeeded, or no process ever
   * ran in it and it did not come from the spool (so it holds at most a copy
   * of what the store already has).
   */
  get disposable(): boolean {
    return this.uploaded || (!this.ran && this.origin !== 'spool');
  }
}

/** Sorts by creation time, also across gateway restarts. */
export function newGeneration(now = Date.now()): string {
  return `g${now.toString(36).padStart(9, '0')}-${randomBytes(3).toString('hex')}`;
}

export function homePath(homeRoot: string, workspaceId: string, generation: string): string {
  return path.join(homeRoot, workspaceId, generation);
}

/** Creates the workspace directory and a new, empty generation directory, both 0700. */
export async function createHomeDir(homeRoot: string, workspaceId: string, generation: string): Promise<string> {
  const dir = homePath(homeRoot, workspaceId, generation);
  try {
    await fs.mkdir(path.dirname(dir), { recursive: true, mode: 0o700 });
    await fs.mkdir(dir, { mode: 0o700 });
    await fs.chmod(dir, 0o700);
  } catch (err) {
    throw new GatewayError('GW_HOME_UNWRITABLE', `cannot create CODEX_HOME ${dir}`, { cause: err });
  }
  return dir;
}

/** Moves a spooled directory into place as a new generation's home. */
export async function adoptDir(from: string, homeRoot: string, workspaceId: string, generation: string): Promise<string> {
  const dir = homePath(homeRoot, workspaceId, generation);
  try {
    await fs.mkdir(path.dirname(dir), { recursive: true, mode: 0o700 });
    await fs.rename(from, dir);
    await fs.chmod(dir, 0o700);
  } catch (err) {
    throw new GatewayError('GW_HOME_UNWRITABLE', `cannot move ${from} to ${dir}`, { cause: err });
  }
  return dir;
}

export async function writePrivateFile(file: string, content: string): Promise<void> {
  try {
    await fs.rm(file, { force: true });
    await fs.writeFile(file, content, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    throw new GatewayError('GW_HOME_UNWRITABLE', `cannot write ${file}`, { cause: err });
  }
}

export async function writePidFile(dir: string, rec: ChildPidRecord): Promise<void> {
  await writePrivateFile(path.join(dir, CHILD_PID_FILE), `${JSON.stringify(rec)}\n`);
}

/** Start time of a process in clock ticks since boot, or null when unknown or gone. */
export async function processStartTicks(pid: number): Promise<number | null> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may hold spaces and parentheses: parse after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(rest[19]);
    return Number.isFinite(ticks) ? ticks : null;
  } catch {
    return null;
  }
}

/**
 * True when /proc shows `pid` as ended: a zombie (exited, not yet reaped) or
 * no longer there. A process that cannot be inspected counts as running.
 */
export async function processEnded(pid: number): Promise<boolean> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/**
 * A note beside a home that was stored but could not be removed:
 * `<homeRoot>/<workspace>/.cxg-stored-<generation>`. Start-up recovery
 * reads it when the store cannot be asked, so such a home is never taken
 * for unsaved work (it may be older than what the store holds by then).
 */
function storedNotePath(home: Home): string {
  return path.join(path.dirname(home.dir), `.cxg-stored-${home.generation}`);
}

export async function noteStoredButKept(home: Home): Promise<void> {
  await fs.writeFile(storedNotePath(home), '', { mode: 0o600 });
}

export async function hasStoredNote(home: Home): Promise<boolean> {
  return fs.access(storedNotePath(home)).then(
    () => true,
    () => false,
  );
}

/** Removes the note, and the workspace directory once nothing is left in it. */
export async function clearStoredNote(home: Home): Promise<void> {
  await fs.rm(storedNotePath(home), { force: true });
  await fs.rmdir(path.dirname(home.dir)).catch(() => {});
}

/**
 * The only way a CODEX_HOME is removed. Throws GW_INTERNAL for a directory
 * whose contents are not safely stored: that is a bug, and losing work is
 * worse than leaving a directory behind.
 */
export async function deleteHome(home: Home): Promise<void> {
  if (!home.disposable) {
    throw new GatewayError('GW_INTERNAL', `refusing to delete ${home.dir}: its contents are not stored`);
  }
  await fs.rm(home.dir, { recursive: true, force: true, maxRetries: 3 });
  // The workspace directory goes too once its last generation is gone.
  await fs.rmdir(path.dirname(home.dir)).catch(() => {});
}

/** Bytes of the regular files under `dir` (0 when it cannot be read). */
export async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  let entries: Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const d of entries) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) total += await dirBytes(p);
    else if (d.isFile()) total += await fs.stat(p).then((st) => st.size, () => 0);
  }
  return total;
}
