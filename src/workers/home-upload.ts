/**
 * Where a stopped home goes: uploaded (under the cluster, to a fenced
 * snapshot made current through etcd), then marked stored and kept warm or
 * removed. A home an earlier gateway left unsaved is first checked against
 * the store, so it is never uploaded over newer work.
 */
import type { Logger } from 'pino';
import type { HeadResult, PackResult } from '../shared/archive-protocol.js';
import { snapshotName } from '../shared/cluster.js';
import type { SnapshotRef } from '../shared/cluster.js';
import { GatewayError, deserializeError, toGatewayError } from '../shared/errors.js';
import type { ShardInit } from '../shared/protocol.js';
import type { ClusterHomes } from './cluster-homes.js';
import type { HomeCache } from './home-cache.js';
import { deleteHome, dirBytes, newGeneration, writeHomeState } from './home.js';
import type { Home, HomeState } from './home.js';
import { quarantine } from './recovery.js';
import type { TableHost } from './table-host.js';

/** A stored home's state on disk: no process, contents equal to `generation` in the store. */
export function storedState(generation: string | null): HomeState {
  return { generation, stored: true, pid: null, startTicks: null, gatewayPid: process.pid };
}

export interface HomeStoreHooks {
  /** A stored home was kept warm: the cache may be over its budget now. */
  cached(): void;
}

export class HomeUploads {
  constructor(
    private readonly init: ShardInit,
    private readonly host: Pick<TableHost, 'archive' | 'cluster'>,
    private readonly log: Logger,
    private readonly hooks: HomeStoreHooks,
    private readonly cache: HomeCache,
    private readonly cluster: ClusterHomes | undefined,
  ) {}

  /**
   * Upload, then keep warm or delete; throws only when the upload failed.
   * With [cluster], answers why when the upload was fenced (stored, never current).
   */
  async save(home: Home): Promise<string | undefined> {
    if (this.cluster !== undefined) return await this.saveClustered(home, this.cluster);
    const t0 = Date.now();
    if (home.recovered) {
      if (await this.settleIfStored(home, await this.storedGeneration(home.workspaceId))) return;
      // Checked once: a retry from the spool uploads without asking again.
      home.recovered = false;
    }
    home.generation ??= newGeneration();
    const outcome = await this.host.archive({
      op: 'pack',
      store: this.init.store,
      workspaceId: home.workspaceId,
      home: home.dir,
      exclude: this.init.archiveExclude,
      generation: home.generation,
      limits: this.init.unpackLimits,
    });
    if (!outcome.ok) throw deserializeError(outcome.error);
    home.uploaded = true;
    const r = outcome.value as PackResult;
    this.log.info({ workspaceId: home.workspaceId, key: r.key, bytes: r.bytes, files: r.files, generation: home.generation, ms: Date.now() - t0 }, 'home uploaded');
    await this.markStored(home, r.fileBytes);
    return undefined;
  }

  /**
   * The cluster's save (cluster-homes.ts): under ownership, to an immutable
   * snapshot, made current only through etcd. Fenced for good: the home is
   * removed (its snapshot stays in the store for inspection) and the answer
   * says why. Not held now: throws, and the spool tries again.
   */
  async saveClustered(home: Home, cluster: ClusterHomes): Promise<string | undefined> {
    const t0 = Date.now();
    const ws = home.workspaceId;
    const claim = await cluster.host.claim(ws);
    const runEpoch = cluster.runEpoch(ws, claim);
    if (home.recovered) {
      if (await this.settleIfStored(home, claim.current?.generation ?? (await this.storedGeneration(ws)))) {
        await cluster.done(ws);
        return undefined;
      }
      home.recovered = false;
    }
    home.generation ??= newGeneration();
    const snapshot = snapshotName(runEpoch, home.generation);
    const outcome = await this.host.archive({
      op: 'pack',
      store: this.init.store,
      workspaceId: ws,
      home: home.dir,
      exclude: this.init.archiveExclude,
      generation: home.generation,
      limits: this.init.unpackLimits,
      snapshot,
    });
    if (!outcome.ok) throw deserializeError(outcome.error);
    const r = outcome.value as PackResult;
    const commit = await cluster.host.commit(ws, runEpoch, { snapshot, epoch: runEpoch, generation: home.generation }, home.dir);
    if (!commit.current) {
      if (!commit.final) throw new GatewayError('GW_OWNERSHIP_LOST', `snapshot ${snapshot} stored but not made current: ${commit.reason}`);
      home.uploaded = true;
      const why = `GW_OWNERSHIP_LOST: snapshot ${snapshot} was fenced (${commit.reason}); it stays in the store, never current`;
      this.log.warn({ workspaceId: ws, snapshot, runEpoch, generation: home.generation }, 'home uploaded but fenced: a later owner stored newer state; the local copy is removed');
      await deleteHome(home).catch((err: unknown) => this.log.error({ workspaceId: ws, dir: home.dir, err: toGatewayError(err).describe() }, 'could not remove a fenced home'));
      await cluster.done(ws);
      return why;
    }
    home.uploaded = true;
    this.log.info({ workspaceId: ws, key: r.key, snapshot, bytes: r.bytes, files: r.files, generation: home.generation, epoch: runEpoch, ms: Date.now() - t0 }, 'home uploaded and made current');
    await this.markStored(home, r.fileBytes);
    await cluster.done(ws);
    if (commit.drop.length > 0) {
      const dropped = await this.host.archive({ op: 'drop', store: this.init.store, workspaceId: ws, snapshots: commit.drop });
      if (!dropped.ok) this.log.warn({ workspaceId: ws, snapshots: commit.drop, err: deserializeError(dropped.error).describe() }, 'could not remove old snapshots; they stay in the store');
    }
    return undefined;
  }

  /** With [cluster]: the snapshot etcd names current (null: none, the single-gateway object is read if any). */
  async currentSnapshot(workspaceId: string): Promise<SnapshotRef | null> {
    return this.cluster === undefined ? null : await this.cluster.host.current(workspaceId);
  }

  /** Records that the home's contents are stored, then keeps it warm or removes it. */
  private async markStored(home: Home, bytes?: number): Promise<void> {
    try {
      await writeHomeState(home.dir, storedState(home.generation));
    } catch (err) {
      // The home still reads as unsaved: the next start or recovery stores it again. Nothing is lost.
      this.log.error({ workspaceId: home.workspaceId, dir: home.dir, err: toGatewayError(err).describe() }, 'home uploaded but not marked stored');
      return;
    }
    await this.keepOrDelete(home, bytes);
  }

  /** `bytes`: the home's size when known (an upload counts it), else it is measured. */
  async keepOrDelete(home: Home, bytes?: number): Promise<void> {
    if (this.cache.enabled) {
      this.cache.add(home.workspaceId, bytes ?? (await dirBytes(home.dir)));
      this.hooks.cached();
      return;
    }
    try {
      await deleteHome(home);
    } catch (err) {
      // Marked stored, so a later start or recovery takes it for a warm copy.
      this.log.error({ workspaceId: home.workspaceId, dir: home.dir, err: toGatewayError(err).describe() }, 'home uploaded but not removed');
    }
  }

  /**
   * For a home left unsaved by an earlier gateway: whether the store already
   * holds it or something newer, so uploading it would lose work. An equal
   * generation is this very home, stored before its state could say so: it
   * becomes a warm copy. An older one was superseded by a run elsewhere
   * that started from the store: it is set aside. So is a home that does
   * not know its generation when the store holds anything.
   */
  async settleIfStored(home: Home, stored: string | undefined): Promise<boolean> {
    if (stored === undefined) return false;
    if (home.generation !== null && stored < home.generation) return false;
    if (stored === home.generation) {
      home.uploaded = true;
      this.log.info({ workspaceId: home.workspaceId, dir: home.dir }, 'recovery: home was already stored');
      await this.markStored(home);
      return true;
    }
    const to = await quarantine(this.init.homeRoot, home.workspaceId, home.dir, home.generation ?? `unknown-${Date.now()}`);
    this.log.warn({ workspaceId: home.workspaceId, dir: to, generation: home.generation, stored }, 'recovery: home is older than the stored state; set aside, not uploaded');
    return true;
  }

  /** The generation the stored object was packed from (undefined: none stored, or stored without one). */
  async storedGeneration(workspaceId: string): Promise<string | undefined> {
    const current = await this.currentSnapshot(workspaceId);
    if (current !== null) return current.generation;
    const outcome = await this.host.archive({ op: 'head', store: this.init.store, workspaceId });
    if (!outcome.ok) throw deserializeError(outcome.error);
    return (outcome.value as HeadResult).generation;
  }
}
