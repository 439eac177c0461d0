/**
 * What the main thread answers to a shard worker: its calls (configs,
 * archives, spawn permits, cluster ownership) and its notices (children
 * started and exited, stops, turn events), each handed to the part of the
 * supervisor that keeps it.
 */
import { GatewayError } from '../../shared/errors.js';
import type { HostMethods, HostNotices } from '../../shared/protocol.js';
import type { Handlers, NoticeHandlers } from '../../shared/rpc.js';
import type { ClusterOwnership } from '../cluster/ownership.js';
import type { ArchivePool } from './archive-pool.js';
import type { Children } from './children.js';
import type { ConfigBuilders } from './config-builders.js';
import type { SupervisorOptions } from './options.js';
import type { ShardRef } from './shard-pool.js';
import type { SpawnAdmission } from './spawn-admission.js';
import type { TokenRegistry } from './token-registry.js';
import type { TurnStreams } from './turn-streams.js';

export interface HostParts {
  opts: SupervisorOptions;
  pool: ArchivePool;
  builders: ConfigBuilders;
  admission: SpawnAdmission;
  children: Children;
  turns: TurnStreams;
  tokens: TokenRegistry;
  cluster(): ClusterOwnership;
  childGone(generation: string, exit: { code: number | null; signal: string | null }): void;
}

export function shardHost(h: HostParts, ref: ShardRef, current: () => boolean): { methods: Handlers<HostMethods>; notices: NoticeHandlers<HostNotices> } {
  const { opts } = h;
  // This worker's epoch: its tokens are its own (token-registry.ts).
  const epoch = ref.epoch;
  return {
    methods: {
      buildConfig: (p) => h.builders.build(p.builderId, p.workspaceId, p.loopbackToken),
      archive: (task) => {
        const run = h.pool.runObserved(task, opts.observer);
        ref.archives.add(run);
        const done = (): boolean => ref.archives.delete(run);
        run.then(done, done);
        return run;
      },
      enterSpawn: (p) => h.admission.enter(ref, current, p),
      clusterClaim: (p) => h.cluster().claim(p.workspaceId),
      clusterCurrent: (p) => h.cluster().current(p.workspaceId),
      clusterCommit: (p) => h.cluster().commit(p.workspaceId, p.runEpoch, p.ref, p.homePath),
      clusterRelease: async (p) => {
        await h.cluster().release(p.workspaceId);
        return null;
      },
      registerToken: (p) => {
        // A worker that died already had its tokens dropped; what it sent before dying must not add one back.
        if (!current()) throw new GatewayError('GW_SHARD_FAILED', `shard ${ref.index} worker was replaced`);
        h.tokens.register(p.key, p.workspaceId, ref.index, epoch);
        return null;
      },
    },
    notices: {
      childStarted: (p) => {
        h.children.started(p.generation, p.pid, ref.index);
        if (p.adopted === true) h.admission.adopt(p.generation);
      },
      spawnSettled: (p) => h.admission.settled(ref, p.generation, p.ok),
      promoteSpawn: (p) => h.admission.promote(p.generation),
      workspaceStopped: (p) => {
        opts.onWorkspaceStopped?.(p);
        opts.observer?.workspaceStopped?.(p);
      },
      startFinished: (p) => opts.observer?.startFinished?.(p),
      forgetToken: (p) => h.tokens.forget(p.key, ref.index, epoch),
      childExited: (p) => h.childGone(p.generation, { code: p.code, signal: p.signal }),
      turnEvent: (p) => h.turns.deliver(p),
      approvalAnswered: (p) => opts.observer?.approvalAnswered?.(p),
    },
  };
}
