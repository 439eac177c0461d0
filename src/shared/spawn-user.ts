/**
 * `spawn.user`: the account codex children run as when the gateway runs as
 * root. Given as a name (looked up in /etc/passwd, with that entry's primary
 * group) or as numeric `uid:gid`. Resolved once at start-up, on the main
 * thread; shards receive the numbers.
 */
import { readFileSync } from 'node:fs';
import { GatewayError } from './errors.js';

export interface ChildUser {
  uid: number;
  gid: number;
  /** The passwd name, when there is one (USER and LOGNAME of the child). */
  name?: string;
}

const NUMERIC = /^(\d{1,10}):(\d{1,10})$/;

/** passwd entries as [name, uid, gid]; an unreadable file has none. */
function passwdEntries(file: string): Array<[string, number, number]> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: Array<[string, number, number]> = [];
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length >= 4 && f[0] !== '' && /^\d+$/.test(f[2] ?? '') && /^\d+$/.test(f[3] ?? '')) out.push([f[0] as string, Number(f[2]), Number(f[3])]);
  }
  return out;
}

/**
 * The user `spec` names. Throws GW_SPAWN_USER when the gateway is not root
 * (only root can start a process as someone else), when the name is not in
 * /etc/passwd, or when it names root itself (no separation at all).
 */
export function resolveChildUser(spec: string, o: { euid?: number; passwdFile?: string } = {}): ChildUser {
  const euid = o.euid ?? process.geteuid?.() ?? -1;
  if (euid !== 0) {
    throw new GatewayError('GW_SPAWN_USER', `spawn.user is set to ${JSON.stringify(spec)}, but the gateway runs as uid ${euid}, not root: only root can start children as another user (unset spawn.user, or run the gateway as root)`);
  }
  const entries = passwdEntries(o.passwdFile ?? '/etc/passwd');
  let user: ChildUser | undefined;
  const m = NUMERIC.exec(spec);
  if (m !== null) {
    const uid = Number(m[1]);
    const gid = Number(m[2]);
    const name = entries.find((e) => e[1] === uid)?.[0];
    user = name === undefined ? { uid, gid } : { uid, gid, name };
  } else {
    const e = entries.find((x) => x[0] === spec);
    if (e !== undefined) user = { uid: e[1], gid: e[2], name: e[0] };
  }
  if (user === undefined) {
    throw new GatewayError('GW_SPAWN_USER', `spawn.user ${JSON.stringify(spec)}: no such user in /etc/passwd (give a user name, or numeric uid:gid)`);
  }
  if (user.uid === 0 || user.gid === 0) {
    throw new GatewayError('GW_SPAWN_USER', `spawn.user ${JSON.stringify(spec)}: uid and gid must not be 0 (root); children would read every file the gateway reads`);
  }
  if (user.uid > 0xfffffffe || user.gid > 0xfffffffe) throw new GatewayError('GW_SPAWN_USER', `spawn.user ${JSON.stringify(spec)}: uid or gid out of range`);
  return user;
}
