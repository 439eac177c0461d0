/**
 * A workspace's CODEX_HOME on disk. Its path is a pure function of homes.root
 * and the workspace id, the same on every start, after every gateway restart
 * and on every replica (invariant 3 of ARCHITECTURE.md): codex writes
 * absolute paths (rollout files, cwd) into its sqlite state and resumes
 * threads through them.
 *
 *     <homes.root>/<workspace>/                 the workspace's directory (0700)
 *     <homes.root>/<workspace>/codex-home/      CODEX_HOME
 *     <homes.root>/<workspace>/codex-home/workspace/   the child's working directory
 *     <homes.root>/<workspace>/.incoming-*      a download in progress
 *
 * What the contents are lives inside the home, in `.cxg-home.json` (never
 * archived): the generation they hold, whether that generation is stored,
 * and the process running in them. The stored object records the same
 * generation in its metadata. A download lands in `.incoming-*` and is moved
 * into place only once complete and described, so a home without a state
 * file is never a partial download: it is treated as unsaved work.
 *
 * `deleteHome` is the only code that removes a home, and it refuses unless
 * its contents are safely stored (invariant 4).
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Dirent } from 'node:fs';
import path from 'node:path';
import { GatewayError } from '../shared/errors.js';

export type HomeOrigin = 'fresh' | 'store' | 'cache' | 'spool';

/** CODEX_HOME inside a workspace's directory. */
export const HOME_DIR = 'codex-home';
/** The child's working directory, inside CODEX_HOME (so the files it makes are stored with the home). */
export const WORK_DIR = 'workspace';
/** The home's state file (excluded from archives). */
export const HOME_STATE_FILE = '.cxg-home.json';
/** Prefix of download directories beside the home. */
export const INCOMING_PREFIX = '.incoming-';

export interface HomeState {
  /** Generation of the contents; null for a new workspace with nothing stored yet. */
  generation: string | null;
  /** True when the store holds exactly these contents (as `generation`): deleting loses nothing. */
  stored: boolean;
  /** The process running in the home (null while it is being started or when none runs). */
  pid: number | null;
  /** Its start time in clock ticks since boot (/proc/PID/stat field 22), to tell a reused pid apart. */
  startTicks: number | null;
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
    /** Generation of the contents; a run sets the generation it starts (see beginRun). */
    public generation: string | null,
    readonly dir: string,
    public origin: HomeOrigin,
  ) {}

  /** The child's working directory. */
  get workDir(): string {
    return path.join(this.dir, WORK_DIR);
  }

  /**
   * Whether deleting loses nothing: its upload succeeded, or no process ever
   * ran in it and it holds a copy of what the store has.
   */
  get disposable(): boolean {
    return this.uploaded || (!this.ran && this.origin !== 'spool');
  }
}

/** Sorts by creation time, also across gateway restarts. */
export function newGeneration(now = Date.now()): string {
  return `g${now.toString(36).padStart(9, '0')}-${randomBytes(3).toString('hex')}`;
}

/** The workspace's directory under homes.root. */
export function workspaceDir(homeRoot: string, workspaceId: string): string {
  return path.join(homeRoot, workspaceId);
}

/** The workspace's CODEX_HOME: a pure function of homes.root and the id. */
export function homePath(homeRoot: string, workspaceId: string): string {
  return path.join(homeRoot, workspaceId, HOME_DIR);
}

async function mkdirPrivate(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
}

function unwritable(what: string, err: unknown): GatewayError {
  return new GatewayError('GW_HOME_UNWRITABLE', what, { cause: err });
}

/** A new, empty download directory beside the workspace's home. */
export async function createIncomingDir(homeRoot: string, workspaceId: string): Promise<string> {
  const dir = path.join(workspaceDir(homeRoot, workspaceId), `${INCOMING_PREFIX}${randomBytes(4).toString('hex')}`);
  try {
    await mkdirPrivate(path.dirname(dir));
    await fs.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    throw unwritable(`cannot create download directory ${dir}`, err);
  }
  return dir;
}

/**
 * Moves a complete download into place as the workspace's home, with its
 * state file written first: a home without one is never a partial download.
 */
export async function installHome(from: string, home: Home, state: HomeState): Promise<void> {
  try {
    await writeHomeState(from, state);
    await fs.rename(from, home.dir);
  } catch (err) {
    throw unwritable(`cannot move ${from} to ${home.dir}`, err);
  }
}

/** An empty home for a workspace the store has nothing of. */
export async function createEmptyHome(home: Home, state: HomeState): Promise<void> {
  try {
    await mkdirPrivate(home.dir);
    await writeHomeState(home.dir, state);
  } catch (err) {
    throw unwritable(`cannot create CODEX_HOME ${home.dir}`, err);
  }
}

/** Creates the working directory if it is missing (an older home, or one the child removed it from). */
export async function ensureWorkDir(home: Home): Promise<void> {
  try {
    await fs.mkdir(home.workDir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw unwritable(`cannot create working directory ${home.workDir}`, err);
  }
}

export async function writePrivateFile(file: string, content: string): Promise<void> {
  const temp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await fs.writeFile(temp, content, { mode: 0o600, flag: 'wx' });
    await fs.rename(temp, file);
  } catch (err) {
    await fs.rm(temp, { force: true }).catch(() => {});
    throw unwritable(`cannot write ${file}`, err);
  }
}

/** Writes the state file of the home in `dir` (atomically: a reader sees the old state or the new). */
export async function writeHomeState(dir: string, state: HomeState): Promise<void> {
  await writePrivateFile(path.join(dir, HOME_STATE_FILE), `${JSON.stringify(state)}\n`);
}

/**
 * The state file of the home in `dir`: undefined when there is none, and a
 * state claiming unsaved work when it exists but cannot be read (safer to
 * upload a home twice than to take unsaved work for a stored copy).
 */
export async function readHomeState(dir: string): Promise<HomeState | undefined> {
  let text: string;
  try {
    text = await fs.readFile(path.join(dir, HOME_STATE_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return unsavedState();
  }
  try {
    const s = JSON.parse(text) as Partial<HomeState>;
    return {
      generation: typeof s.generation === 'string' ? s.generation : null,
      stored: s.stored === true,
      pid: typeof s.pid === 'number' ? s.pid : null,
      startTicks: typeof s.startTicks === 'number' ? s.startTicks : null,
      gatewayPid: typeof s.gatewayPid === 'number' ? s.gatewayPid : 0,
    };
  } catch {
    return unsavedState();
  }
}

function unsavedState(): HomeState {
  return { generation: null, stored: false, pid: null, startTicks: null, gatewayPid: 0 };
}

/**
 * The only way a CODEX_HOME is removed. Throws GW_INTERNAL for a home whose
 * contents are not safely stored: that is a bug, and losing work is worse
 * than leaving a directory behind.
 */
export async function deleteHome(home: Home): Promise<void> {
  if (!home.disposable) {
    throw new GatewayError('GW_INTERNAL', `refusing to delete ${home.dir}: its contents are not stored`);
  }
  await removeDir(home.dir);
  // The workspace directory goes too once nothing else is in it.
  await fs.rmdir(path.dirname(home.dir)).catch(() => {});
}

/**
 * Removes a directory that holds no work (a failed or abandoned download).
 * It is first renamed aside, so a removal cut short never leaves a
 * half-deleted directory under a name that means something.
 */
export async function removeDir(dir: string): Promise<void> {
  const aside = `${dir}.${randomBytes(4).toString('hex')}.deleting`;
  try {
    await fs.rename(dir, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  await fs.rm(aside, { recursive: true, force: true, maxRetries: 3 });
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
