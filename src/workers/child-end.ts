/**
 * How a workspace's child ends: a stop the table asked for (idle, eviction,
 * shutdown, drain), or an exit of its own (a crash). Either way its clients
 * are told, its process group is gone, and its home is persisted (stored, or
 * spooled when the store fails). The child may be the shard's own or adopted
 * after a handover (adoption.ts): both are a RunningChild.
 */
import type { StopReason, StopResult } from '../shared/protocol.js';
import type { Home } from './home.js';
import { reapGroup, stopProcessGroup } from './process-group.js';
import { describeExit } from './spawn.js';
import type { ExitInfo, RunningChild } from './spawn.js';
import type { Entry, TableCore } from './workspace-entry.js';

/**
 * The child of `e` exited. Its token goes at once; the rest is a crash's
 * (the entry is evicted, its clients told, the process group reaped and the
 * home persisted) unless a stop already owns it.
 */
export function childExited(core: TableCore, e: Entry, exit: ExitInfo): void {
  if (e.exitHandled) return;
  if (e.state === 'starting') return; // start() reports it and cleans up
  e.exitHandled = true;
  core.tokens.remove(e.loopbackToken);
  core.host.childExited(e.workspaceId, e.generation, exit);
  if (e.state !== 'running') return; // a stop in progress owns the rest
  core.crashLoop.exited(e.workspaceId, Date.now() - e.readyAt);
  core.log.warn({ workspaceId: e.workspaceId, generation: e.generation, pid: e.pid, exit: describeExit(exit), failures: core.crashLoop.failures(e.workspaceId) }, 'codex app-server exited unexpectedly');
  e.state = 'stopping';
  if (core.live.get(e.workspaceId) === e) core.live.delete(e.workspaceId);
  core.events.childGone(e.workspaceId, e.generation, 'crash');
  const home = e.home as Home;
  core.setBusy(
    e.workspaceId,
    (async () => {
      await reapGroup(e.pid as number, 1000);
      return core.homes.persist(home, 'crash');
    })(),
  );
}

/** Stops the child of a running entry (its whole process group) and persists its home. */
export async function stopChild(core: TableCore, e: Entry, reason: StopReason): Promise<StopResult> {
  e.state = 'stopping';
  core.live.delete(e.workspaceId);
  core.tokens.remove(e.loopbackToken);
  core.events.childGone(e.workspaceId, e.generation, reason);
  const child = e.child as RunningChild;
  const exit = await stopProcessGroup(child, core.init.stopGraceMs);
  if (Date.now() - e.readyAt >= core.init.crashLoop.windowMs) core.crashLoop.healthy(e.workspaceId);
  core.log.info({ workspaceId: e.workspaceId, pid: child.pid, reason, exit: describeExit(exit) }, 'codex app-server stopped');
  return core.homes.persist(e.home as Home, reason);
}
