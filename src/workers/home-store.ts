/**
 * A shard's side of the object store: what a workspace's home holds before
 * a start (its spooled work, its warm copy, a download, or nothing) and
 * where it goes after a stop (uploaded, then kept warm or removed; or kept
 * in the spool; the upload itself is home-upload.ts). Every path that
 * removes a home goes through deleteHome (home.ts), after its upload.
 *
 * Generations order homes: each stored object records the generation it was
 * packed from, and each home records the one it holds (home.ts), so an
 * older home is never uploaded over newer work and a warm copy is used only
 * while it is the stored generation.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { UnpackResult } from '../shared/archive-protocol.js';
import { deserializeError, toGatewayError } from '../shared/errors.js';
import type { ShardInit, StopResult } from '../shared/protocol.js';
import { HomeCache } from './home-cache.js';
import { Home, createEmptyHome, createIncomingDir, deleteHome, homePath, installHome, readHomeState, removeDir, writeHomeState } from './home.js';
import type { HomeState } from './home.js';
import { LEGACY_MARKER, clearLegacyNotes, quarantine, stopLeftoverChild } from './recovery.js';
import type { LeftoverWorkspace } from './recovery.js';
import { Spool, unretryable } from './spool.js';
import type { TableHost } from './table-host.js';
import { ClusterHomes } from './cluster-homes.js';
import { HomeUploads, storedState } from './home-upload.js';
import type { HomeStoreHooks } from './home-upload.js';

export type { HomeStoreHooks } from './home-upload.js';

export class HomeStore {
  readonly spool: Spool;
  readonly cache: HomeCache;
  private readonly uploads: HomeUploads;
  /** With [cluster]: ownership and fenced snapshots (cluster-homes.ts); undefined keeps the single-gateway layout. */
  private readonly cluster: ClusterHomes | undefined;

  constructor(
    private readonly init: ShardInit,
    private readonly host: Pick<TableHost, 'archive' | 'workspaceStopped' | 'cluster'>,
    private readonly log: Logger,
    private readonly hooks: HomeStoreHooks,
  ) {
    this.cluster = host.cluster === undefined ? undefined : new ClusterHomes(host.cluster);
    this.spool = new Spool({
      baseMs: init.spoolRetryBaseMs,
      maxMs: init.spoolRetryMaxMs,
      logger: log,
      save: async (home) => {
        await this.uploads.save(home);
      },
    });
    this.cache = new HomeCache(init.homeCacheBytes);
    this.uploads = new HomeUploads(init, host, log, hooks, this.cache, this.cluster);
  }

  /**
   * The workspace's home, ready for a start: its spooled home if it has one
   * (the newest work), else its warm copy if that is still the stored
   * generation, else a download of the stored object, else an empty home.
   */
  async prepare(workspaceId: string): Promise<Home> {
    if (this.cluster === undefined) return await this.prepareOwned(workspaceId);
    // Nothing is read or run before this node holds the workspace.
    const { claim, earlier } = await this.cluster.claimForStart(workspaceId);
    try {
      if (earlier !== undefined && claim.current !== null && claim.current.epoch > earlier && this.spool.has(workspaceId)) {
        // Unsaved work of a run here that a later owner's stored state has
        // superseded (this node was fenced meanwhile): never started from.
        const stale = await this.spool.claim(workspaceId);
        if (stale !== undefined) {
          const to = await quarantine(this.init.homeRoot, workspaceId, stale.dir, stale.generation ?? `unknown-${Date.now()}`);
          this.log.warn({ workspaceId, dir: to, ranUnder: earlier, current: claim.current.snapshot }, 'cluster: unsaved home of a fenced run set aside; a later owner stored newer state');
        }
      }
      return await this.prepareOwned(workspaceId);
    } catch (err) {
      // No process ran: the workspace is given up, unless unsaved work of it is spooled here.
      this.cluster.runEnded(workspaceId);
      if (!this.spool.has(workspaceId)) await this.cluster.done(workspaceId);
      throw err;
    }
  }

  private async prepareOwned(workspaceId: string): Promise<Home> {
    const spooled = await this.claimSpooled(workspaceId);
    if (spooled !== undefined) return spooled;
    this.cache.take(workspaceId);
    const dir = homePath(this.init.homeRoot, workspaceId);
    const state = await readHomeState(dir);
    if (state !== undefined) {
      const home = new Home(workspaceId, state.generation, dir, 'cache');
      if (!state.stored) {
        // Unsaved work the spool does not know of (a drain that ran out of
        // budget, say): the newest state there is. Start from it as it is.
        home.origin = 'spool';
        home.ran = true;
        return home;
      }
      const stored = await this.uploads.storedGeneration(workspaceId);
      // Equal generations, or none on either side (nothing stored yet, or an object from before generations were recorded).
      if (stored === (state.generation ?? undefined)) return home;
      if (stored === undefined || (state.generation !== null && stored < state.generation)) {
        // The store lost what was uploaded from here (the object was removed
        // or replaced by an older one): this copy is the newest. It is
        // started from and uploaded again at its next stop.
        this.log.warn({ workspaceId, generation: state.generation, stored: stored ?? null }, 'home is newer than the stored state; keeping it and storing it again');
        home.origin = 'spool';
        home.ran = true;
        return home;
      }
      // A newer generation was stored from elsewhere: this copy is stale.
      // It is replaced once the download is complete.
      return await this.download(workspaceId, home);
    }
    return await this.download(workspaceId, undefined);
  }

  /** A spooled home of the workspace, checked against the store when an earlier gateway left it. */
  private async claimSpooled(workspaceId: string): Promise<Home | undefined> {
    const spooled = await this.spool.claim(workspaceId);
    if (spooled === undefined || !spooled.recovered) return spooled;
    let stored: string | undefined;
    try {
      stored = await this.uploads.storedGeneration(workspaceId);
    } catch {
      // The store cannot be asked: nothing newer could have been stored
      // after this home was left unsaved here, so it is the newest work.
      spooled.recovered = false;
      return spooled;
    }
    // The store answered: a failure from here on (marking the home stored or
    // setting it aside) is local and fails the start, the home kept spooled.
    try {
      if (!(await this.uploads.settleIfStored(spooled, stored))) {
        spooled.recovered = false;
        return spooled;
      }
    } catch (err) {
      this.spool.add(spooled, toGatewayError(err).describe());
      throw err;
    }
    // Settled: now a warm copy of the stored generation, or set aside.
    return undefined;
  }

  /**
   * Downloads the stored object into a new directory beside the home and
   * moves it into place once complete: a failed download leaves `stale` (a
   * stored, older copy) or nothing. Without an object: an empty home.
   */
  private async download(workspaceId: string, stale: Home | undefined): Promise<Home> {
    const dir = homePath(this.init.homeRoot, workspaceId);
    const current = await this.uploads.currentSnapshot(workspaceId);
    const incoming = await createIncomingDir(this.init.homeRoot, workspaceId);
    const outcome = await this.host.archive({
      op: 'unpack',
      store: this.init.store,
      workspaceId,
      home: incoming,
      exclude: this.init.archiveExclude,
      limits: this.init.unpackLimits,
      ...(current === null ? {} : { snapshot: current.snapshot }),
    });
    if (!outcome.ok) {
      // The download's code is the answer; a cleanup that fails too is only logged.
      await removeDir(incoming).catch((err: unknown) => this.log.error({ workspaceId, dir: incoming, err: toGatewayError(err).describe() }, 'could not remove a failed download'));
      // A workspace that had nothing here leaves nothing here.
      await fs.rmdir(path.dirname(incoming)).catch(() => {});
      throw deserializeError(outcome.error);
    }
    const r = outcome.value as UnpackResult;
    if (stale !== undefined) await deleteHome(stale);
    const home = new Home(workspaceId, r.found ? (r.generation ?? null) : null, dir, r.found ? 'store' : 'fresh');
    if (!r.found) {
      await removeDir(incoming);
      await createEmptyHome(home, storedState(null));
      return home;
    }
    if (r.homePath !== undefined && r.homePath !== dir) {
      // codex's state names paths under the home it ran in: threads from
      // there are listed here but cannot be resumed (docs/operations.md).
      this.log.warn({ workspaceId, code: 'GW_HOME_PATH_CHANGED', storedFrom: r.homePath, home: dir }, 'stored home was packed from another path; its earlier threads cannot be resumed here (every replica must use the same homes.root)');
    }
    await installHome(incoming, home, storedState(home.generation));
    return home;
  }

  /** Uploads a stopped home, then keeps it warm or removes it; on failure keeps it in the spool. */
  async persist(home: Home, reason: string): Promise<StopResult> {
    this.cluster?.runEnded(home.workspaceId);
    // Rewritten at every start; it holds the run's tokens.
    await fs.rm(path.join(home.dir, 'config.toml'), { force: true }).catch(() => {});
    let result: StopResult;
    try {
      const fenced = await this.uploads.save(home);
      result = fenced === undefined ? { workspaceId: home.workspaceId, stopped: true, saved: true } : { workspaceId: home.workspaceId, stopped: true, saved: false, error: fenced };
    } catch (err) {
      const failure = toGatewayError(err, 'GW_STORE_UPLOAD');
      const msg = failure.describe();
      this.spool.add(home, msg, { hold: unretryable(failure.code) });
      result = { workspaceId: home.workspaceId, stopped: true, saved: false, error: msg, spooledDir: home.dir };
    }
    this.host.workspaceStopped(home.workspaceId, reason, result.saved);
    return result;
  }

  /**
   * A start failed before any process ran in the home: its contents are as
   * they were. A stored copy goes back to the cache; unsaved work is stored.
   */
  async release(home: Home, generation: string | null, stored: boolean): Promise<StopResult | undefined> {
    home.generation = generation;
    this.cluster?.runEnded(home.workspaceId);
    if (!stored) return await this.persist(home, 'failed-start');
    await writeHomeState(home.dir, storedState(generation));
    await this.uploads.keepOrDelete(home);
    await this.cluster?.done(home.workspaceId);
    return undefined;
  }

  /** Removes a warm copy (cache eviction); the caller serializes it with starts of the workspace. */
  async evict(workspaceId: string): Promise<void> {
    const dir = homePath(this.init.homeRoot, workspaceId);
    const state = await readHomeState(dir);
    if (state?.stored !== true) return;
    const home = new Home(workspaceId, state.generation, dir, 'cache');
    await deleteHome(home).catch((err: unknown) => this.log.error({ workspaceId, dir, err: toGatewayError(err).describe() }, 'could not remove a cached home'));
  }

  /**
   * Takes over what an earlier gateway left for one workspace (recovery.ts):
   * stops leftover processes, removes cut-short downloads, moves the newest
   * earlier-layout home with work into the stable place, and then keeps a
   * stored home warm or spools an unsaved one for an upload at once
   * (checked against the store first).
   */
  async recoverWorkspace(w: LeftoverWorkspace): Promise<void> {
    const { workspaceId } = w;
    for (const rec of [...w.legacy.map((h) => h.record), w.home?.state ?? undefined]) {
      const outcome = await stopLeftoverChild(rec, this.init.stopGraceMs);
      if (outcome !== 'none') this.log.warn({ workspaceId, pid: rec?.pid, outcome }, 'recovery: leftover codex process');
    }
    for (const d of w.debris) await removeDir(d);
    let home = w.home;
    const ran = w.legacy.filter((h) => h.record !== undefined);
    for (const h of w.legacy.filter((x) => x.record === undefined)) {
      // Never ran a process: at most a copy of what the store holds.
      await removeDir(h.dir);
    }
    const newest = ran.at(-1);
    for (const h of ran) {
      if (h === newest && home === undefined) {
        // Its threads name its old path and stay read-only; the rest of its
        // work goes on in the stable home (docs/operations.md).
        const dir = homePath(this.init.homeRoot, workspaceId);
        const state: HomeState = { generation: h.generation, stored: h.storedNote, pid: null, startTicks: null, gatewayPid: process.pid };
        await writeHomeState(h.dir, state);
        await fs.rm(path.join(h.dir, LEGACY_MARKER), { force: true });
        await fs.rename(h.dir, dir);
        home = { dir, state };
        this.log.warn({ workspaceId, from: h.dir, dir }, 'recovery: home of the earlier layout moved to the stable path');
        continue;
      }
      const to = await quarantine(this.init.homeRoot, workspaceId, h.dir, h.generation);
      this.log.error({ workspaceId, dir: to }, 'recovery: an older home with unsaved work was set aside; inspect it by hand');
    }
    await clearLegacyNotes(w);
    if (home === undefined) return;
    const state = home.state;
    if (state?.stored === true) {
      await this.uploads.keepOrDelete(new Home(workspaceId, state.generation, home.dir, 'cache'));
      return;
    }
    const h = new Home(workspaceId, state?.generation ?? null, home.dir, 'spool');
    h.ran = true;
    h.recovered = true;
    this.spool.add(h, 'left by a previous gateway', { immediate: true });
  }
}
