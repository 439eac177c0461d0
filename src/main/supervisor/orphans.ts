/**
 * Stopping the children of a shard worker that died. Nothing in the dead
 * worker can stop them any more, and the new worker (if one comes) starts
 * only once the dead one's uploads have ended, which with a hung store is
 * a long time. So the supervisor stops them itself, as a stop of one child
 * does: SIGTERM to each process group, again at half of the grace period,
 * SIGKILL at its end. codex itself also got SIGTERM from its parent-death
 * signal when the worker's thread ended; the group signal reaches what it
 * started too.
 *
 * The pids are safe to signal for as long as the gateway lives: a child of
 * a dead worker is never reaped (no event loop waits for it any more), so it
 * stays a zombie and its pid (and group id) cannot be given to another
 * process.
 */
import { setTimeout as sleep } from 'node:timers/promises';

function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Resolves once every group got its SIGKILL (or was gone before). */
export async function stopOrphanedGroups(pgids: readonly number[], graceMs: number): Promise<void> {
  let alive = pgids.filter((g) => signalGroup(g, 'SIGTERM'));
  if (alive.length === 0) return;
  await sleep(graceMs / 2, undefined, { ref: false });
  alive = alive.filter((g) => signalGroup(g, 'SIGTERM'));
  if (alive.length === 0) return;
  await sleep(graceMs / 2, undefined, { ref: false });
  for (const g of alive) signalGroup(g, 'SIGKILL');
}
