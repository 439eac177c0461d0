/**
 * The start-up half of child isolation (the spawn half is in
 * src/workers/parent-death.ts, home-owner.ts and src/shared/sandbox.ts):
 * the data layout's permissions, and refusing spawn.user or
 * spawn.sandbox settings this system cannot honour, before any child runs.
 *
 * Modes and owners (docs/operations.md, "Trust boundary"):
 *
 *     <data.dir>/            0700 (0711 with spawn.user: children pass through, never list)
 *     <data.dir>/jwt.secret  0600, created so (jwt-secret.ts)
 *     <store dir>/           0700 (file store)
 *     <homes.root>/          0700 (0711 with spawn.user)
 *     <homes.root>/<ws>/     0700, root's; the child user's only while its child runs
 *
 * With one uid for the gateway and its children none of this is a boundary:
 * a process reads whatever its uid owns, whatever the mode. The modes keep
 * other local users out; spawn.user and the sandbox keep children out.
 */
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { GatewayError } from '../shared/errors.js';
import { bubblewrapArgs, BWRAP_PATHS } from '../shared/sandbox.js';
import type { SandboxMode } from '../shared/sandbox.js';
import type { ChildUser } from '../shared/spawn-user.js';
import { accessSync, constants } from 'node:fs';

async function mkdirMode(dir: string, mode: number): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, mode);
}

function inside(parent: string, p: string): boolean {
  const rel = path.relative(parent, p);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

/**
 * data.dir and the generated key file: private to the gateway. With a child
 * user and homes.root inside data.dir, data.dir is 0711 so children can pass
 * through to their own home without listing or reading what lies beside it.
 */
export async function secureDataDir(o: { dataDir: string; homesRoot: string; secretFile?: string; childUser: boolean }): Promise<void> {
  const dataDir = path.resolve(o.dataDir);
  const through = o.childUser && inside(dataDir, path.resolve(o.homesRoot));
  try {
    await mkdirMode(dataDir, through ? 0o711 : 0o700);
    if (o.secretFile !== undefined && inside(dataDir, path.resolve(o.secretFile))) {
      await fs.chmod(o.secretFile, 0o600).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
    }
  } catch (err) {
    throw new GatewayError('GW_SETTINGS', `data.dir ${dataDir}: cannot make it private (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { cause: err });
  }
}

/**
 * homes.root (and the file store's directory) before the shards start:
 * private, every workspace directory taken back from a child user a killed
 * gateway left it with, and, with a child user, a path it can walk down.
 */
export async function secureHomesRoot(o: { homeRoot: string; storeDir?: string; runAs?: ChildUser }): Promise<void> {
  try {
    await mkdirMode(o.homeRoot, o.runAs === undefined ? 0o700 : 0o711);
  } catch (err) {
    throw new GatewayError('GW_HOME_UNWRITABLE', `cannot create or restrict homes.root ${o.homeRoot}`, { cause: err });
  }
  // The file store may be down at start-up (an unmounted volume, a dangling
  // link): the gateway still starts and spools, as with any store outage, so
  // the store is made private when it can be and left to its own errors
  // when it cannot.
  if (o.storeDir !== undefined) await mkdirMode(o.storeDir, 0o700).catch(() => undefined);
  if (o.runAs === undefined) return;
  for (const d of await fs.readdir(o.homeRoot, { withFileTypes: true })) {
    if (!d.isDirectory()) continue;
    const ws = path.join(o.homeRoot, d.name);
    await fs.chown(ws, process.geteuid?.() ?? 0, process.getegid?.() ?? 0);
    await fs.chmod(ws, 0o700);
  }
  // Every directory above homes.root must let the child user through.
  for (let dir = path.dirname(o.homeRoot); ; dir = path.dirname(dir)) {
    const st = await fs.stat(dir);
    const passes = (st.mode & 0o001) !== 0 || (st.uid === o.runAs.uid && (st.mode & 0o100) !== 0) || (st.gid === o.runAs.gid && (st.mode & 0o010) !== 0);
    if (!passes) {
      throw new GatewayError('GW_SPAWN_USER', `spawn.user uid ${o.runAs.uid} cannot reach homes.root: ${dir} is not searchable by it (chmod o+x ${dir}, or put homes.root elsewhere)`);
    }
    if (dir === path.dirname(dir)) break;
  }
}

/**
 * Refuses spawn.sandbox = bubblewrap where it cannot run: no bwrap, no
 * setpriv, or namespaces refused (a container without CAP_SYS_ADMIN and
 * without user namespaces). Runs bwrap once with the options a child gets.
 */
export function checkSandbox(mode: SandboxMode, o: { homeRoot: string; codexBin: string }): void {
  if (mode !== 'bubblewrap') return;
  const bwrap = BWRAP_PATHS.find((p) => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (bwrap === undefined) throw new GatewayError('GW_SANDBOX_UNAVAILABLE', 'spawn.sandbox is bubblewrap, and this system has no bwrap (Debian: apt-get install bubblewrap)');
  const args = bubblewrapArgs({ workspaceDir: o.homeRoot, cwd: o.homeRoot, codexBin: o.codexBin });
  const i = args.indexOf('--info-fd');
  if (i >= 0) args.splice(i, 2);
  const r = spawnSync(bwrap, [...args, '--', '/usr/bin/true'], { encoding: 'utf8', timeout: 10_000, env: { PATH: '/usr/bin:/bin' } });
  if (r.status !== 0) {
    const why = (r.stderr ?? '').trim().split('\n')[0] ?? '';
    throw new GatewayError('GW_SANDBOX_UNAVAILABLE', `spawn.sandbox is bubblewrap, and bwrap cannot run here: ${why !== '' ? why : r.error?.message ?? `exit ${String(r.status)}`}`);
  }
}
