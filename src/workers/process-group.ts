/**
 * A running child as the table sees it (its own or adopted after a
 * handover), and stopping it: each child leads its own process group, and
 * stopping a child stops the whole group (ARCHITECTURE.md invariant 6).
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child that is ready: where it listens, and its exit. */
export interface RunningChild {
  readonly pid: number;
  readonly wsUrl: string;
  readonly httpUrl: string;
  readonly exited: Promise<ExitInfo>;
  exitInfo(): ExitInfo | undefined;
}

/** Signals a whole process group; a group that is already gone is not an error. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * SIGTERM to the process group; a second SIGTERM halfway through the grace
 * period; SIGKILL at its end. codex (0.169.0) finishes a turn in flight
 * before it honours the first SIGTERM, and exits at once, cleanly, on the
 * second, so a stuck turn costs half the grace, not a SIGKILL. Whatever else
 * is left in the group once the leader is gone (an MCP server, a tool) gets
 * SIGKILL too, so stopping a child stops all of it.
 */
export async function stopProcessGroup(c: RunningChild, graceMs: number): Promise<ExitInfo> {
  const exitedWithin = async (ms: number): Promise<boolean> => {
    const ac = new AbortController();
    try {
      return await Promise.race([c.exited.then(() => true), sleep(ms, false, { signal: ac.signal }).catch(() => false)]);
    } finally {
      ac.abort();
    }
  };
  if (c.exitInfo() === undefined) {
    signalGroup(c.pid, 'SIGTERM');
    if (!(await exitedWithin(graceMs / 2))) {
      signalGroup(c.pid, 'SIGTERM');
      if (!(await exitedWithin(graceMs / 2))) signalGroup(c.pid, 'SIGKILL');
    }
  }
  const info = await c.exited;
  await reapGroup(c.pid, Math.min(graceMs, 2000));
  return info;
}

/** Gives the rest of a group a moment to follow its leader out, then SIGKILL. */
export async function reapGroup(pgid: number, waitMs: number): Promise<void> {
  const until = Date.now() + waitMs;
  while (groupAlive(pgid) && Date.now() < until) await sleep(20);
  if (groupAlive(pgid)) signalGroup(pgid, 'SIGKILL');
}
