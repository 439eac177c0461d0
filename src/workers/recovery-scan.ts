/**
 * A shard's start-up: first it adopts the children a predecessor handed
 * over (handover-table.ts), then it takes over the homes an earlier gateway
 * left under homes.root for its workspaces (recovery.ts): leftover
 * processes are stopped, homes that ran something go to the spool and are
 * uploaded at once, the rest are removed. Adopted children run in their
 * homes, so recovery leaves those workspaces alone.
 */
import { toGatewayError } from '../shared/errors.js';
import type { HandoverRecord } from '../shared/handover.js';
import { shardOf } from '../shared/workspace-id.js';
import { adoptAll } from './handover-table.js';
import { findLeftovers } from './recovery.js';
import type { TableCore } from './workspace-entry.js';

/**
 * `scanned` resolves once every leftover's workspace is marked busy (starts
 * wait for it); `done` once every leftover is handled (never rejects).
 */
export function recoverAtStart(core: TableCore, adopt: readonly HandoverRecord[], trimCache: () => void): { scanned: Promise<void>; done: Promise<void> } {
  const scan = (async () => {
    await adoptAll(core, adopt);
    const leftovers = await findLeftovers(core.init.homeRoot, (id) => shardOf(id, core.init.shards) === core.init.shard && !core.live.has(id));
    return leftovers.map((w) => {
      const p = core.homes.recoverWorkspace(w);
      core.setBusy(w.workspaceId, p);
      return p.catch((err: unknown) => core.log.error({ workspaceId: w.workspaceId, err: toGatewayError(err).describe() }, 'recovery of a workspace failed'));
    });
  })();
  const scanned = scan.then(
    () => {},
    () => {},
  );
  const done = scan.then(
    async (recoveries) => {
      await Promise.all(recoveries);
      // Homes kept warm while their workspace was busy recovering are weighed against the budget now.
      trimCache();
      if (recoveries.length > 0) core.log.info({ workspaces: recoveries.length }, 'recovery: homes left by a previous gateway taken over');
    },
    (err: unknown) => {
      core.log.error({ err: toGatewayError(err).describe() }, 'recovery failed');
    },
  );
  return { scanned, done };
}
