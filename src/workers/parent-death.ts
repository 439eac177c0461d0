/**
 * Children die with the gateway, however it dies (SIGKILL, the OOM killer, a
 * crash), not only when it stops them. A codex child is started through
 * util-linux `setpriv --pdeathsig SIGTERM`, which sets the parent-death
 * signal (prctl PR_SET_PDEATHSIG) and then execs codex in the same process:
 * same pid, same process group, nothing stays in between. The setting
 * survives that exec (codex is not set-user-ID).
 *
 * SIGTERM, not SIGKILL: codex flushes its sqlite state and exits at once on
 * it when idle (it finishes a turn in flight first, which is bounded by its
 * own stream timeout); the next start's recovery stops whatever is left.
 *
 * Linux sends the signal when the THREAD that forked the child ends, not
 * only the process. Children are forked by their shard worker's thread
 * (libuv spawns on the calling loop's thread), so a shard worker that dies or
 * is terminated takes its children with it. That is what the supervisor
 * wants of a dead shard anyway: it stops them too (SIGTERM to their process
 * groups), and the new worker's recovery uploads their homes. A worker ends
 * normally only after close() has stopped every child.
 *
 * Without setpriv (not Linux, or a system without util-linux) children are
 * started directly, and only the gateway's own exit handler and the next
 * start's recovery stop them.
 *
 * The same setpriv also drops to spawn.user (--reuid/--regid/--clear-groups).
 * Linux clears the parent-death signal when a process changes its uid or
 * gid; util-linux setpriv sets it after the change, so one setpriv does both
 * (checked: setpriv 2.38 as root, `--reuid=65534 … --pdeathsig SIGTERM`,
 * its child ends when its parent is SIGKILLed). Under bubblewrap the outer
 * setpriv guards bwrap's monitor, and a second one inside the sandbox drops
 * to spawn.user (see src/shared/sandbox.ts for how the sandbox dies).
 */
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { GatewayError } from '../shared/errors.js';
import { BWRAP_INFO_FD, BWRAP_PATHS, bubblewrapArgs, realCodexBin } from '../shared/sandbox.js';
import type { SandboxSpec } from '../shared/sandbox.js';
import type { ChildUser } from '../shared/spawn-user.js';

const SETPRIV_PATHS = ['/usr/bin/setpriv', '/bin/setpriv'];
const PARENT_DEATH_SIGNAL = 'SIGTERM';

let setpriv: string | null | undefined;

function executable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The setpriv binary, when this system has one. */
export function parentDeathLauncher(): string | undefined {
  setpriv ??= process.platform === 'linux' ? (SETPRIV_PATHS.find(executable) ?? null) : null;
  return setpriv ?? undefined;
}

export interface Launch {
  command: string;
  args: string[];
  /** Whether the child gets the parent-death signal. */
  guarded: boolean;
  /** Set under bubblewrap: the fd on which it reports codex's pid (the spawned process is its monitor). */
  infoFd?: number;
}

export interface LaunchOptions {
  /** spawn.user: the child drops to this uid/gid, with no supplementary groups. */
  runAs?: ChildUser;
  /** spawn.sandbox = bubblewrap. */
  sandbox?: SandboxSpec;
  /**
   * restart.handover: no parent-death signal, so the child can outlive this
   * gateway and be adopted by its successor. A gateway that dies without
   * handing over then leaves it running until the next start's recovery
   * stops it and stores its home. Not with the sandbox: bwrap's own
   * --die-with-parent ties it to the thread that started it.
   */
  outliveParent?: boolean;
}

/**
 * The uid change: no supplementary groups (root's would stay), and
 * no_new_privs, so set-user-ID programs (su, mount) cannot take the child
 * back up. The change from root clears every capability.
 */
function userArgs(u: ChildUser | undefined): string[] {
  return u === undefined ? [] : [`--reuid=${u.uid}`, `--regid=${u.gid}`, '--clear-groups', '--no-new-privs'];
}

let bwrap: string | null | undefined;

/** The bwrap binary, when this system has one. */
export function bubblewrapBinary(): string | undefined {
  bwrap ??= process.platform === 'linux' ? (BWRAP_PATHS.find(executable) ?? null) : null;
  return bwrap ?? undefined;
}

/**
 * The command line of a child: `command args` with the parent-death signal,
 * as spawn.user, inside the sandbox, as the options ask. Throws when an
 * option asks for what this system lacks (the start-up checks refuse such
 * settings earlier).
 */
export function childLaunch(command: string, args: readonly string[], o: LaunchOptions = {}): Launch {
  if (o.outliveParent === true && o.sandbox !== undefined) throw new GatewayError('GW_SANDBOX_UNAVAILABLE', 'restart.handover cannot keep children started in the bubblewrap sandbox (bwrap ends them with their parent)');
  if (o.outliveParent === true && o.runAs === undefined) return { command, args: [...args], guarded: false };
  if (o.runAs === undefined && o.sandbox === undefined) return withParentDeathSignal(command, args);
  const launcher = parentDeathLauncher();
  if (launcher === undefined) {
    throw new GatewayError(o.sandbox !== undefined ? 'GW_SANDBOX_UNAVAILABLE' : 'GW_SPAWN_USER', 'util-linux setpriv is needed to start children as spawn.user or in the sandbox, and this system has none');
  }
  if (o.sandbox === undefined) {
    const pdeath = o.outliveParent === true ? [] : ['--pdeathsig', PARENT_DEATH_SIGNAL];
    return { command: launcher, args: [...userArgs(o.runAs), ...pdeath, '--', command, ...args], guarded: true };
  }
  const bin = bubblewrapBinary();
  if (bin === undefined) throw new GatewayError('GW_SANDBOX_UNAVAILABLE', 'spawn.sandbox is bubblewrap, and this system has no bwrap (Debian: apt-get install bubblewrap)');
  const inner = [launcher, ...userArgs(o.runAs), '--pdeathsig', PARENT_DEATH_SIGNAL, '--', realCodexBin(command), ...args];
  return {
    command: launcher,
    args: ['--pdeathsig', PARENT_DEATH_SIGNAL, '--', bin, ...bubblewrapArgs(o.sandbox, { userChange: o.runAs !== undefined }), '--', ...inner],
    guarded: true,
    infoFd: BWRAP_INFO_FD,
  };
}

/** The command line that runs `command args` with the parent-death signal set, when it can be. */
export function withParentDeathSignal(command: string, args: readonly string[]): Launch {
  const launcher = parentDeathLauncher();
  if (launcher === undefined) return { command, args: [...args], guarded: false };
  return { command: launcher, args: ['--pdeathsig', PARENT_DEATH_SIGNAL, '--', command, ...args], guarded: true };
}

/**
 * Where `command` would be found, like execvp with the child's PATH; undefined
 * when it is not an executable file. Through setpriv a missing binary is no
 * longer a spawn error (setpriv itself starts, then fails its exec), so the
 * caller checks first and keeps its GW_CODEX_NOT_FOUND.
 */
export function findExecutable(command: string, envPath: string | undefined): string | undefined {
  if (command.includes('/')) return executable(command) ? command : undefined;
  for (const dir of (envPath ?? '').split(':')) {
    if (dir === '') continue;
    const file = path.join(dir, command);
    if (executable(file)) return file;
  }
  return undefined;
}
