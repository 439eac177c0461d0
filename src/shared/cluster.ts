/**
 * What the main thread's cluster membership (src/main/cluster) and the
 * shards share: the shape of a claim and of the current-state pointer, the
 * name of an immutable snapshot, and where snapshots live in the store.
 *
 * With [cluster], a workspace's state is a series of immutable objects
 * `<ws>/<snapshot>.tar.gz` (snapshot = epoch and generation), and which one
 * is current is a pointer in etcd that only the workspace's owner can switch
 * (docs/operations.md, "Cluster"). Without it nothing here is used and the
 * store keeps one `<ws>.tar.gz` per workspace.
 */
import path from 'node:path';
import type { StoreSpec } from './store-spec.js';

/** A stored snapshot of a workspace's home. */
export interface SnapshotRef {
  /** Object name inside the workspace's scope of the store (snapshotName). */
  snapshot: string;
  /** Epoch (fencing token) of the ownership it was produced under. */
  epoch: number;
  /** Generation of the home it was packed from. */
  generation: string;
}

/** This node owns the workspace: at `epoch`, with `current` as its stored state (null: none yet). */
export interface ClusterClaim {
  epoch: number;
  current: SnapshotRef | null;
  /** True when this call took the workspace over (a new epoch), false when the node held it already. */
  taken: boolean;
}

/**
 * A pointer switch: done (`current`, with the snapshots no longer kept), or
 * refused (fenced). `final`: a later owner's state is current, so this
 * snapshot never will be; otherwise the node just does not hold the
 * workspace now, and may claim it and try again.
 */
export type CommitOutcome = { current: true; drop: string[] } | { current: false; final: boolean; reason: string };

/**
 * `e000000000007-g…`: epochs padded so names sort by epoch, then by
 * generation (itself time-ordered), which makes a listing of a workspace's
 * snapshots read oldest first.
 */
export function snapshotName(epoch: number, generation: string): string {
  return `e${String(epoch).padStart(12, '0')}-${generation}`;
}

/**
 * The store as seen from one workspace's snapshots: a file store's
 * `<dir>/<ws>`, an S3 store's `<prefix>/<ws>` prefix. Object names inside it
 * are snapshot names, so `<ws>/<snapshot>.tar.gz` never meets the
 * `<ws>.tar.gz` of the single-gateway layout.
 */
export function snapshotScope(spec: StoreSpec, workspaceId: string): StoreSpec {
  if (spec.kind === 'file') return { ...spec, dir: path.join(spec.dir, workspaceId) };
  return { ...spec, prefix: spec.prefix ? `${spec.prefix}/${workspaceId}` : workspaceId };
}
