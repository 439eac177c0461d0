/**
 * A shard's side of the cluster (ShardInit.cluster): which epoch each home
 * runs under, and the steps of a fenced save. The decisions are the main
 * thread's (src/main/cluster/ownership.ts, through etcd); this file only
 * remembers what the shard needs between a start and the save after it.
 *
 * A home runs under the epoch its start claimed (`runEpoch`). Its save goes
 * to the immutable snapshot `<ws>/<snapshotName(runEpoch, generation)>` and
 * then asks for the pointer to be switched to it, which etcd grants only to
 * the owner, and only while no state of a later epoch is current. A refusal
 * because a later owner stored state is final: the snapshot stays in the
 * store for inspection and the home is done with. A refusal because the
 * node does not hold the workspace right now (its lease lapsed, etcd was
 * away) is not: the save fails and the spool tries again, claiming first.
 */
import type { ClusterClaim, CommitOutcome, SnapshotRef } from '../shared/cluster.js';

/** The main thread's cluster calls, as a shard makes them. */
export interface ClusterHost {
  claim(workspaceId: string): Promise<ClusterClaim>;
  current(workspaceId: string): Promise<SnapshotRef | null>;
  commit(workspaceId: string, runEpoch: number, ref: SnapshotRef, homePath?: string): Promise<CommitOutcome>;
  release(workspaceId: string): Promise<void>;
}

export class ClusterHomes {
  /** Epoch each workspace's home last ran under, until its state is current or fenced. */
  private readonly runEpochs = new Map<string, number>();
  /** Workspaces with a start or a run under way: a spooled save that finishes meanwhile must not give them up. */
  private readonly active = new Set<string>();

  constructor(readonly host: ClusterHost) {}

  /**
   * Claims the workspace for a start; its home will run under the claimed
   * epoch. `earlier`: the epoch an unsaved home of an earlier run here ran
   * under, if any (prepare sets that home aside when a later owner's state
   * is current).
   */
  async claimForStart(workspaceId: string): Promise<{ claim: ClusterClaim; earlier: number | undefined }> {
    const earlier = this.runEpochs.get(workspaceId);
    const claim = await this.host.claim(workspaceId);
    this.active.add(workspaceId);
    this.runEpochs.set(workspaceId, claim.epoch);
    return { claim, earlier };
  }

  /** The start failed, or the run stopped: what remains is saving its home. */
  runEnded(workspaceId: string): void {
    this.active.delete(workspaceId);
  }

  /** The epoch a home being saved ran under: its start's, or (a home an earlier process left) the one claimed now. */
  runEpoch(workspaceId: string, claim: ClusterClaim): number {
    return this.runEpochs.get(workspaceId) ?? claim.epoch;
  }

  /** The home's state is current, or fenced for good: nothing more to remember; the workspace is given up. */
  async done(workspaceId: string): Promise<void> {
    if (this.active.has(workspaceId)) return;
    this.runEpochs.delete(workspaceId);
    await this.host.release(workspaceId);
  }
}
