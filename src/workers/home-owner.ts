/**
 * Ownership of a workspace's directory under spawn.user. The gateway (root)
 * keeps everything it guards root-owned and private: the data directory's
 * key files, the file store, and every workspace directory `<homes.root>/<ws>`
 * (0700). A workspace's directory is handed to the child user only for the
 * life of its child:
 *
 *   - before a start, CODEX_HOME and everything in it (downloaded, unpacked
 *     or written by root: config.toml, the state file) becomes the user's,
 *     and so does `<homes.root>/<ws>` itself;
 *   - when the child has exited, `<homes.root>/<ws>` goes back to root, 0700
 *     (one chown, done synchronously in the exit handler, so a next start of
 *     the same workspace cannot interleave with it).
 *
 * The contents stay the user's between runs; with the directory above them
 * closed they cannot be reached by any user process, and root packs them as
 * they are. So a child reaches no stopped workspace's home. Children running
 * at the same moment share the one uid and could reach each other's homes;
 * the bubblewrap sandbox is what hides those (docs/operations.md, "Trust
 * boundary").
 */
import { chmodSync, chownSync, promises as fs } from 'node:fs';
import path from 'node:path';
import type { ChildUser } from '../shared/spawn-user.js';
import { GatewayError } from '../shared/errors.js';

async function chownTree(p: string, uid: number, gid: number): Promise<void> {
  await fs.lchown(p, uid, gid);
  let entries;
  try {
    entries = await fs.readdir(p, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOTDIR') return;
    throw err;
  }
  for (const d of entries) {
    const child = path.join(p, d.name);
    if (d.isDirectory()) await chownTree(child, uid, gid);
    else await fs.lchown(child, uid, gid);
  }
}

/** Gives CODEX_HOME and its workspace directory to the child user, before a start. */
export async function openHomeTo(user: ChildUser, homeDir: string): Promise<void> {
  const wsDir = path.dirname(homeDir);
  try {
    await chownTree(homeDir, user.uid, user.gid);
    await fs.chmod(wsDir, 0o700);
    await fs.lchown(wsDir, user.uid, user.gid);
  } catch (err) {
    throw new GatewayError('GW_HOME_UNWRITABLE', `cannot give ${homeDir} to uid ${user.uid}`, { cause: err });
  }
}

/**
 * Takes the workspace directory back from the child user (root-owned, 0700).
 * Synchronous: it runs in the child's exit handler. A directory already gone
 * is fine; any other failure is returned for the log.
 */
export function closeWorkspaceDir(wsDir: string): Error | undefined {
  try {
    chownSync(wsDir, process.geteuid?.() ?? 0, process.getegid?.() ?? 0);
    chmodSync(wsDir, 0o700);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : (err as Error);
  }
}
