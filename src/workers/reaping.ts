/**
 * Which children and homes a shard lets go of, and when: children idle past
 * the reaper's limits, the least recently active child without clients when
 * the gateway is at limits.max_children, and warm homes past the cache's
 * budget. Adopted children (handover-table.ts) are chosen as the shard's
 * own. The stops themselves are the table's (workspaces.ts).
 */
import { mapLimit } from '../shared/concurrency.js';
import type { ReapOptions, StopResult } from '../shared/protocol.js';
import { shouldReap } from '../shared/reap-policy.js';
import type { Entry, TableCore } from './workspace-entry.js';

/** Stops the children idle past the reaper's limits (reap-policy.ts), eight at a time. */
export async function reapIdle(core: TableCore, o: ReapOptions, stop: (workspaceId: string) => Promise<StopResult>): Promise<StopResult[]> {
  const now = Date.now();
  const idle = [...core.live.values()].filter((e) => e.state === 'running' && shouldReap(e, now, o));
  const results = await mapLimit(idle, 8, async (e) => {
    // Decided again when its turn comes: with more than eight to stop, a
    // client may have connected or spoken while the earlier ones stopped.
    const at = Date.now();
    if (core.live.get(e.workspaceId) !== e || e.state !== 'running' || !shouldReap(e, at, o)) return undefined;
    core.log.info({ workspaceId: e.workspaceId, idleMs: at - e.lastActivity, clients: e.clients }, 'reaping idle child');
    return stop(e.workspaceId);
  });
  return results.filter((r): r is StopResult => r !== undefined);
}

/**
 * Removes least recently used warm homes past the cache's budget, each
 * serialized with its workspace's starts (a workspace live, busy or
 * spooled keeps its home).
 */
export function trimCache(core: TableCore): void {
  const removable = (id: string): boolean => !core.live.has(id) && !core.busy.has(id) && !core.homes.spool.has(id);
  for (const id of core.homes.cache.overBudget(removable)) core.setBusy(id, core.homes.evict(id));
}

/** The least recently active running child without clients, for the capacity limit. */
export function evictCandidate(core: TableCore): { workspaceId: string; lastActivity: number } | null {
  let best: Entry | undefined;
  for (const e of core.live.values()) {
    if (e.state === 'running' && e.clients === 0 && (best === undefined || e.lastActivity < best.lastActivity)) best = e;
  }
  return best === undefined ? null : { workspaceId: best.workspaceId, lastActivity: best.lastActivity };
}

/** Starts stopping that child if nothing touched it since; true when it began. */
export function evict(core: TableCore, workspaceId: string, lastActivity: number, stop: (workspaceId: string) => void): boolean {
  const e = core.live.get(workspaceId);
  if (e === undefined || e.state !== 'running' || e.clients > 0 || e.lastActivity !== lastActivity) return false;
  core.log.info({ workspaceId, idleMs: Date.now() - lastActivity }, 'stopping the least recently active child to make room');
  stop(workspaceId);
  return true;
}
