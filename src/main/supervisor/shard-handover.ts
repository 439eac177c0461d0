/**
 * The supervisor's side of a handover restart (restart.handover, see
 * handover.ts): every shard closes its clients with 1012, lets go of its
 * running children and returns their records, after its stops and uploads
 * under way have finished. The released children keep running (they were
 * started without a parent-death signal) and are no longer this process's
 * to kill at exit. A shard that does not answer hands over nothing: its
 * children are left to the successor's start-up recovery.
 */
import type { Logger } from 'pino';
import { toGatewayError } from '../../shared/errors.js';
import type { HandoverRecord } from '../../shared/handover.js';
import type { Children } from './children.js';
import type { ShardRef } from './shard-pool.js';

export async function releaseShards(shards: readonly ShardRef[], children: Children, log: Logger): Promise<HandoverRecord[]> {
  const per = await Promise.all(
    shards.map((s) =>
      s.rpc.call('handover', {}).catch((err: unknown) => {
        log.error({ shard: s.index, err: toGatewayError(err).describe() }, 'shard did not hand over; its children are left to the successor\'s recovery');
        return [] as HandoverRecord[];
      }),
    ),
  );
  const records = per.flat();
  for (const r of records) children.released(r.generation);
  return records;
}
