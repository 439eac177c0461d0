/**
 * `spawn.sandbox = "bubblewrap"`: each codex child runs under Debian's
 * `bwrap`, in a mount namespace whose root is an empty tmpfs holding only:
 *
 *   - its own workspace directory `<homes.root>/<ws>`, read-write, at the
 *     same absolute path (codex stores absolute paths in its sqlite state);
 *   - read-only system paths: /usr (and the merged-/usr links /bin, /lib…),
 *     a short list of /etc files that name resolution, TLS and shells need
 *     (not /etc as a whole: /etc/shadow, and the gateway's own config files
 *     if an operator keeps them there, stay out), and the directory of the
 *     codex binary;
 *   - a fresh /proc, a minimal /dev and a private /tmp.
 *
 * Nothing else of the data directory exists inside: not jwt.secret, not the
 * file store, not another workspace. The network is shared (the child talks
 * to the model provider and the gateway's loopback endpoint).
 *
 * Processes: bwrap stays outside as a small monitor, and inside a new pid
 * namespace its own init (pid 1 there) runs codex as its child. Signalling
 * the monitor would kill codex at once (bwrap forwards no signals), losing
 * codex's graceful SIGTERM. So the sandbox is a new session (--new-session:
 * its own process group, led by that init), bwrap reports the init's pid on
 * --info-fd, and that pid is the one the gateway records (with its start
 * ticks), signals as a group and watches: a SIGTERM to the group reaches
 * codex (the init, pid 1 of its namespace with no handler, is not affected
 * by it) and the init exits as soon as codex has; SIGKILL ends the whole
 * namespace. Checked with bwrap 0.8.0: a `trap … TERM` child finished its
 * handler and bwrap exited 0.
 *
 * The pid namespace is what keeps /proc honest: without it a child would see
 * the gateway's /proc/<pid>/environ and /proc/<pid>/root (the host's whole
 * filesystem) whenever it runs as the same uid. --cap-drop ALL: bwrap run by
 * root otherwise leaves the sandbox nearly every capability (CapEff
 * 0x1fffeffffff seen), mount and ptrace included. With spawn.user the caps
 * are kept until the inner setpriv changes uid (which clears them): bwrap's
 * --chdir into the user's 0700 home needs them.
 *
 * When the gateway dies, the monitor gets the parent-death SIGTERM and dies;
 * --die-with-parent then kills the init, and with it the whole namespace
 * (SIGKILL): the child-SIGKILL case, which start-up recovery covers. The
 * inner `setpriv` drops to spawn.user after bwrap has set everything up.
 */
import { lstatSync, readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';

export type SandboxMode = 'none' | 'bubblewrap';

export const BWRAP_PATHS = ['/usr/bin/bwrap', '/bin/bwrap'];

/** The file descriptor on which bwrap writes `{"child-pid": N}`. */
export const BWRAP_INFO_FD = 3;

/** Top-level system paths: bound read-only when they are directories, recreated when they are links. */
const SYSTEM_PATHS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];

/** What of /etc a child sees: name resolution, users, TLS roots, the linker cache, alternatives. */
const ETC_PATHS = [
  '/etc/resolv.conf',
  '/etc/hosts',
  '/etc/host.conf',
  '/etc/gai.conf',
  '/etc/nsswitch.conf',
  '/etc/passwd',
  '/etc/group',
  '/etc/localtime',
  '/etc/timezone',
  '/etc/ssl',
  '/etc/ca-certificates',
  '/etc/pki',
  '/etc/ld.so.cache',
  '/etc/ld.so.conf',
  '/etc/ld.so.conf.d',
  '/etc/alternatives',
  '/etc/os-release',
  '/etc/mime.types',
  '/etc/bash.bashrc',
  '/etc/profile',
  '/etc/inputrc',
  '/etc/gitconfig',
];

export interface SandboxSpec {
  /** `<homes.root>/<ws>`: the only part of the data directory the child sees. */
  workspaceDir: string;
  /** The child's working directory (inside workspaceDir). */
  cwd: string;
  /** The codex binary (its real path is what runs inside). */
  codexBin: string;
}

function kindOf(p: string): 'dir' | 'link' | 'file' | undefined {
  try {
    const st = lstatSync(p);
    return st.isSymbolicLink() ? 'link' : st.isDirectory() ? 'dir' : 'file';
  } catch {
    return undefined;
  }
}

/** The directory to show read-only for the codex binary: its package's platform dir (`…/<target>/bin/codex` → `…/<target>`). */
export function codexPackageDir(realBin: string): string {
  const dir = path.dirname(realBin);
  return path.basename(dir) === 'bin' ? path.dirname(dir) : dir;
}

export function realCodexBin(codexBin: string): string {
  try {
    return realpathSync(codexBin);
  } catch {
    return codexBin;
  }
}

/**
 * bwrap's options for one child (everything before `--`). The command after
 * `--` must be given by its real path (see realCodexBin): that is where the
 * binary is mounted.
 */
export function bubblewrapArgs(spec: SandboxSpec, o: { userChange: boolean } = { userChange: false }): string[] {
  const args = ['--die-with-parent', '--new-session', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--info-fd', String(BWRAP_INFO_FD)];
  if (!o.userChange) args.push('--cap-drop', 'ALL');
  for (const p of SYSTEM_PATHS) {
    const k = kindOf(p);
    if (k === 'dir') args.push('--ro-bind', p, p);
    else if (k === 'link') args.push('--symlink', readlinkSync(p), p);
  }
  // Made explicitly: bwrap would make it 0700, closed to a child running as spawn.user.
  args.push('--perms', '0755', '--dir', '/etc');
  for (const p of ETC_PATHS) {
    // A link (e.g. resolv.conf managed elsewhere) is followed: its target is bound at this name.
    if (kindOf(p) !== undefined) args.push('--ro-bind-try', p, p);
  }
  args.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp');
  const pkg = codexPackageDir(realCodexBin(spec.codexBin));
  const made = new Set<string>(['/', '/tmp', '/proc', '/dev', ...SYSTEM_PATHS, '/etc']);
  const parents = (p: string): void => {
    // bwrap makes missing parents of a mount point 0700 (root's): a child running as spawn.user could not pass.
    const chain: string[] = [];
    for (let d = path.dirname(p); !made.has(d) && d !== path.dirname(d); d = path.dirname(d)) chain.unshift(d);
    for (const d of chain) {
      args.push('--perms', '0755', '--dir', d);
      made.add(d);
    }
  };
  if (!pkg.startsWith('/usr/')) {
    parents(pkg);
    args.push('--ro-bind', pkg, pkg);
  }
  parents(spec.workspaceDir);
  args.push('--bind', spec.workspaceDir, spec.workspaceDir, '--chdir', spec.cwd);
  return args;
}

/** Parses what bwrap wrote on its info fd; undefined until a whole object with a child pid arrived. */
export function parseBwrapInfo(text: string): number | undefined {
  const end = text.indexOf('}');
  if (end < 0) return undefined;
  try {
    const info = JSON.parse(text.slice(0, end + 1)) as { 'child-pid'?: unknown };
    const pid = info['child-pid'];
    return typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
