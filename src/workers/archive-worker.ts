/**
 * The archive pool's task file (piscina). Each call packs or unpacks one
 * CODEX_HOME. It never throws: errors lose their class and code when they
 * cross a thread, so a failure comes back as `{ ok: false, error }` with its
 * stable code, for the caller to rebuild with deserializeError.
 */
import os from 'node:os';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../shared/archive-protocol.js';
import { snapshotScope } from '../shared/cluster.js';
import { GatewayError, serializeError } from '../shared/errors.js';
import type { StoreSpec } from '../shared/store-spec.js';
import type { ObjectStore } from '../shared/stores/object-store.js';
import { storeFromSpec } from '../shared/stores/from-spec.js';
import { validateWorkspaceId } from '../shared/workspace-id.js';
import { pack } from './archive-pack.js';
import { unpack } from './archive-unpack.js';

/**
 * One store per distinct spec for the life of this worker thread, so an S3
 * client (and its connection pool) is reused across tasks.
 */
const stores = new Map<string, ObjectStore>();

/**
 * Archive work (tar, gzip) yields the CPU to the threads that serve frames:
 * this thread runs 10 nice levels below them. On Linux the priority is per
 * thread, so only this pool thread is affected.
 */
const ARCHIVE_NICE = 10;
try {
  os.setPriority(0, Math.min(19, os.getPriority(0) + ARCHIVE_NICE));
} catch {
  // Not permitted here: archive work runs at the normal priority.
}

function storeFor(spec: StoreSpec): ObjectStore {
  const key = JSON.stringify(spec);
  let store = stores.get(key);
  if (store === undefined) {
    store = storeFromSpec(spec);
    stores.set(key, store);
  }
  return store;
}

export default async function run(task: ArchiveTask): Promise<ArchiveOutcome<ArchiveValue>> {
  try {
    validateWorkspaceId(task.workspaceId);
    if (task.op === 'drop') {
      // Snapshot names pass the workspace-id check (snapshotName), so they never escape the workspace's scope.
      const scoped = storeFor(snapshotScope(task.store, task.workspaceId));
      for (const s of task.snapshots) await scoped.delete(validateWorkspaceId(s));
      return { ok: true, value: { dropped: task.snapshots.length } };
    }
    // A cluster snapshot is an object of the workspace's own scope, named by the snapshot.
    if (task.snapshot !== undefined) task = { ...task, workspaceId: validateWorkspaceId(task.snapshot), store: snapshotScope(task.store, task.workspaceId) };
    const store = storeFor(task.store);
    switch (task.op) {
      case 'pack':
        return { ok: true, value: await pack(task, store) };
      case 'unpack':
        return { ok: true, value: await unpack(task, store) };
      case 'head': {
        const t0 = performance.now();
        const h = await store.head(task.workspaceId);
        return { ok: true, value: { key: store.key(task.workspaceId), found: h !== undefined, bytes: h?.bytes ?? 0, generation: h?.generation, durationMs: performance.now() - t0 } };
      }
      default: {
        const unknown: never = task;
        throw new GatewayError('GW_INTERNAL', `unknown archive task op ${JSON.stringify((unknown as { op?: unknown }).op)}`);
      }
    }
  } catch (err) {
    return { ok: false, error: serializeError(err) };
  }
}
