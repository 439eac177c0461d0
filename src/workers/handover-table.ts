/**
 * The workspace table's side of a handover restart (src/shared/handover.ts):
 * a successor adopts the children its predecessor released, and a gateway
 * asked to hand over releases its own. An adopted child is an ordinary
 * entry from then on: reaped when idle, evicted, drained, its crash handled,
 * as a child this gateway started.
 */
import path from 'node:path';
import { withTimeout } from '../shared/concurrency.js';
import type { HandoverRecord } from '../shared/handover.js';
import type { ChildInfo } from '../shared/protocol.js';
import { shardOf } from '../shared/workspace-id.js';
import { adoptedChild, adoptionRefusal } from './adoption.js';
import type { AdoptedChild } from './adoption.js';
import { recordPid } from './child-start.js';
import { closeWorkspaceDir } from './home-owner.js';
import { Home, homePath } from './home.js';
import { processStartTicks } from '../shared/proc.js';
import type { Entry, TableCore } from './workspace-entry.js';

/**
 * Adopts the children a previous gateway handed over (adoption.ts), before
 * recovery looks at their homes. A child that is not the recorded one, or
 * does not answer, is not adopted: recovery then stops it like any child a
 * gateway left behind, and stores its home.
 */
export async function adoptAll(core: TableCore, records: readonly HandoverRecord[]): Promise<void> {
  let adopted = 0;
  for (const rec of records) {
    if (shardOf(rec.workspaceId, core.init.shards) !== core.init.shard) continue;
    const dir = homePath(core.init.homeRoot, rec.workspaceId);
    const refusal = await adoptionRefusal(rec, dir);
    if (refusal !== undefined) {
      core.log.warn({ workspaceId: rec.workspaceId, pid: rec.pid, why: refusal }, 'handover: child not adopted; recovery stops it and stores its home');
      continue;
    }
    const home = new Home(rec.workspaceId, rec.generation, dir, 'cache');
    home.ran = true;
    const e: Entry = {
      workspaceId: rec.workspaceId,
      generation: rec.generation,
      state: 'running',
      ready: undefined as unknown as Promise<ChildInfo>,
      info: { workspaceId: rec.workspaceId, generation: rec.generation, pid: rec.pid, wsUrl: rec.wsUrl, wsToken: rec.wsToken, httpUrl: rec.httpUrl, codexHome: dir, startedAt: rec.startedAt, shard: core.init.shard },
      home,
      child: undefined,
      pid: rec.pid,
      loopbackToken: rec.loopbackToken,
      wsToken: rec.wsToken,
      lastActivity: rec.lastActivity,
      startedAt: rec.startedAt,
      readyAt: Date.now(),
      clients: 0,
      exitHandled: false,
      priority: 'client',
      rank: 0,
      prestarted: rec.prestartedActivity === undefined ? undefined : { lastActivity: rec.prestartedActivity },
    };
    e.ready = Promise.resolve(e.info as ChildInfo);
    const wsDir = path.dirname(dir);
    const child = adoptedChild(rec, core.init.runAs === undefined ? undefined : () => void closeWorkspaceDir(wsDir));
    e.child = child;
    // Known to the main thread before the entry is: from here on a stop or exit forgets it.
    await core.tokens.add(e.loopbackToken, rec.workspaceId);
    core.live.set(rec.workspaceId, e);
    core.host.childStarted(rec.workspaceId, rec.generation, rec.pid, true);
    // The home's state names this gateway from now on (recovery reads pid and start time, not this).
    await recordPid(core, home, rec.pid);
    void child.exited.then((exit) => core.onExit(e, exit));
    core.log.info({ workspaceId: rec.workspaceId, generation: rec.generation, pid: rec.pid }, 'handover: child adopted');
    adopted++;
  }
  if (records.length > 0) core.log.info({ adopted, offered: records.filter((r) => shardOf(r.workspaceId, core.init.shards) === core.init.shard).length }, 'handover: children adopted');
}

/**
 * Lets go of every running child without stopping it, for a successor
 * that adopts them: their clients are closed (1012, reconnect), their
 * tokens forgotten, and their records returned. Starts under way finish
 * first and are handed over too; stops and uploads under way finish
 * within the drain budget (the successor's recovery finds what is left).
 * New ensures fail from here on, as in close().
 */
export async function release(core: TableCore): Promise<HandoverRecord[]> {
  core.closed = true;
  await Promise.all([...core.live.values()].filter((e) => e.state === 'starting').map((e) => e.ready.catch(() => {})));
  const out: HandoverRecord[] = [];
  for (const e of [...core.live.values()]) {
    const child = e.child;
    if (e.state !== 'running' || child === undefined || child.exitInfo() !== undefined || e.pid === undefined) continue;
    const startTicks = await processStartTicks(e.pid);
    if (startTicks === null || core.live.get(e.workspaceId) !== e || e.state !== 'running') continue;
    out.push({
      workspaceId: e.workspaceId,
      generation: e.generation,
      pid: e.pid,
      startTicks,
      wsUrl: child.wsUrl,
      httpUrl: child.httpUrl,
      wsToken: e.wsToken,
      loopbackToken: e.loopbackToken,
      lastActivity: e.lastActivity,
      startedAt: e.startedAt,
      ...(e.prestarted === undefined ? {} : { prestartedActivity: e.prestarted.lastActivity }),
    });
    // Its exit is no longer ours to handle: the successor watches it.
    e.exitHandled = true;
    e.state = 'stopping';
    core.live.delete(e.workspaceId);
    core.tokens.remove(e.loopbackToken);
    (child as Partial<AdoptedChild>).release?.();
    core.events.childGone(e.workspaceId, e.generation, 'restart');
  }
  const left = core.init.drainBudgetMs;
  await Promise.all([...core.busy.values()].map((p) => withTimeout(p, left, () => new Error('budget')).catch(() => {})));
  core.homes.spool.close();
  return out;
}
