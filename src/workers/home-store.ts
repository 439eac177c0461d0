/**
 * A shard's side of the object store: where a new generation's home comes
 * from (the spool, the store, or nothing) and where a stopped one goes
 * (uploaded, then removed; or kept in the spool). Every path that removes a
 * home goes through deleteHome (home.ts), after its upload.
 *
 * Homes found at start-up (recovered) are compared with the store before
 * they are uploaded or started from: each stored object records the
 * generation it was packed from, and generations sort by time, so an older
 * leftover is never uploaded over newer work.
 */
import type { Logger } from 'pino';
import type { HeadResult, PackResult, UnpackResult } from '../shared/archive-protocol.js';
import { deserializeError, toGatewayError } from '../shared/errors.js';
import type { ShardInit, StopResult } from '../shared/protocol.js';
import { Home, adoptDir, clearStoredNote, createHomeDir, deleteHome, hasStoredNote, noteStoredButKept } from './home.js';
import { quarantine, stopLeftoverChild } from './recovery.js';
import type { LeftoverHome } from './recovery.js';
import { Spool } from './spool.js';
import type { TableHost } from './workspaces.js';

export class HomeStore {
  readonly spool: Spool;

  constructor(
    private readonly init: ShardInit,
    private readonly host: Pick<TableHost, 'archive' | 'workspaceStopped'>,
    private readonly log: Logger,
  ) {
    this.spool = new Spool({
      baseMs: init.spoolRetryBaseMs,
      maxMs: init.spoolRetryMaxMs,
      logger: log,
      save: (home) => this.save(home),
    });
  }

  /**
   * The home for a new generation: the workspace's spooled home if there is
   * one (newest state), else the stored object, else an empty directory.
   */
  async prepare(workspaceId: string, generation: string): Promise<Home> {
    let spooled = await this.spool.claim(workspaceId);
    if (spooled?.recovered === true) {
      // Left by an earlier gateway and not yet checked against the store: it
      // may be older than what is stored. With the store unreachable there is
      // no telling, so the start fails rather than risk going back in time.
      const found = spooled;
      let head: { stored: string | undefined } | undefined;
      try {
        head = { stored: await this.storedGeneration(found) };
      } catch (err) {
        // The store cannot be asked. A home noted as stored may be older than
        // the stored state: never start from it. Any other is the newest work
        // there is (nothing newer could be stored after it): start from it.
        if (await hasStoredNote(found)) {
          this.spool.add(found, toGatewayError(err).describe());
          throw err;
        }
        found.recovered = false;
      }
      if (head !== undefined) {
        // The store answered: a failure from here on (removing or setting the
        // home aside) is local and fails the start, the home kept in the spool.
        try {
          if (await this.settleIfStored(found, head.stored)) spooled = undefined;
          else found.recovered = false;
        } catch (err) {
          this.spool.add(found, toGatewayError(err).describe());
          throw err;
        }
      }
    }
    if (spooled !== undefined) {
      try {
        const dir = await adoptDir(spooled.dir, this.init.homeRoot, workspaceId, generation);
        const home = new Home(workspaceId, generation, dir, 'spool');
        home.ran = true;
        return home;
      } catch (err) {
        this.spool.add(spooled, `could not reuse: ${toGatewayError(err).describe()}`);
        throw err;
      }
    }
    const dir = await createHomeDir(this.init.homeRoot, workspaceId, generation);
    const outcome = await this.host.archive({
      op: 'unpack',
      store: this.init.store,
      workspaceId: workspaceId,
      home: dir,
      exclude: this.init.archiveExclude,
      limits: this.init.unpackLimits,
    });
    const home = new Home(workspaceId, generation, dir, 'fresh');
    if (!outcome.ok) {
      // The download's code is the answer; a cleanup that fails too is only logged.
      const failure = deserializeError(outcome.error);
      await deleteHome(home).catch((err: unknown) => this.log.error({ workspaceId, dir, err: toGatewayError(err).describe() }, 'could not remove the home of a failed download'));
      throw failure;
    }
    const r = outcome.value as UnpackResult;
    return r.found ? new Home(workspaceId, generation, dir, 'store') : home;
  }


  /** Uploads and deletes a home; on failure keeps it in the spool. */
  async persist(home: Home, reason: string): Promise<StopResult> {
    let result: StopResult;
    try {
      await this.save(home);
      result = { workspaceId: home.workspaceId, stopped: true, saved: true };
    } catch (err) {
      const msg = toGatewayError(err, 'GW_STORE_UPLOAD').describe();
      this.spool.add(home, msg);
      result = { workspaceId: home.workspaceId, stopped: true, saved: false, error: msg, spooledDir: home.dir };
    }
    this.host.workspaceStopped(home.workspaceId, reason, result.saved);
    return result;
  }

  /** Upload then delete; throws only when the upload failed. */
  private async save(home: Home): Promise<void> {
    const t0 = Date.now();
    if (home.recovered) {
      if (await this.settleIfStored(home, await this.storedGeneration(home))) return;
      // Checked once: a retry from the spool uploads without asking again.
      home.recovered = false;
    }
    const outcome = await this.host.archive({
      op: 'pack',
      store: this.init.store,
      workspaceId: home.workspaceId,
      home: home.dir,
      exclude: this.init.archiveExclude,
      generation: home.generation,
    });
    if (!outcome.ok) throw deserializeError(outcome.error);
    home.uploaded = true;
    const r = outcome.value as PackResult;
    this.log.info({ workspaceId: home.workspaceId, key: r.key, bytes: r.bytes, files: r.files, ms: Date.now() - t0 }, 'home uploaded');
    await this.removeStored(home);
  }

  /** Deletes a stored home; if that fails, leaves a note that it is stored (see noteStoredButKept). */
  private async removeStored(home: Home): Promise<void> {
    try {
      await deleteHome(home);
      await clearStoredNote(home);
    } catch (err) {
      this.log.error({ workspaceId: home.workspaceId, dir: home.dir, err: toGatewayError(err).describe() }, 'home uploaded but not removed');
      await noteStoredButKept(home).catch((e: unknown) => this.log.error({ workspaceId: home.workspaceId, err: toGatewayError(e).describe() }, 'could not note that the kept home is stored'));
    }
  }

  /**
   * For a home left by an earlier gateway: whether the store already holds
   * it or something newer, so uploading it would lose work. The object
   * records the generation it was packed from; generations sort by time.
   * An equal generation is this very home, stored before its directory
   * could be removed: it goes now. An older one was superseded by a run
   * that started from the store after it was stored: it is set aside.
   */
  private async settleIfStored(home: Home, stored: string | undefined): Promise<boolean> {
    if (stored === undefined || stored < home.generation) return false;
    if (stored === home.generation) {
      home.uploaded = true;
      this.log.info({ workspaceId: home.workspaceId, dir: home.dir }, 'recovery: home was already stored; removing it');
      await this.removeStored(home);
    } else {
      const to = await quarantine(this.init.homeRoot, { workspaceId: home.workspaceId, generation: home.generation, dir: home.dir, record: undefined });
      await clearStoredNote(home);
      this.log.warn({ workspaceId: home.workspaceId, dir: to, stored }, 'recovery: home is older than the stored state; set aside, not uploaded');
    }
    return true;
  }

  /** The generation the stored object was packed from (undefined: none stored, or stored without one). */
  private async storedGeneration(home: Home): Promise<string | undefined> {
    const outcome = await this.host.archive({ op: 'head', store: this.init.store, workspaceId: home.workspaceId });
    if (!outcome.ok) throw deserializeError(outcome.error);
    return (outcome.value as HeadResult).generation;
  }


  /**
   * Handles the homes an earlier gateway left for one workspace (found by
   * findLeftoverHomes, oldest first): stops their leftover processes, removes
   * those where no process ran, sets aside all but the newest with work, and
   * spools the newest for an upload at once (checked against the store first).
   */
  async recoverWorkspace(homes: LeftoverHome[]): Promise<void> {
    for (const h of homes) {
      const outcome = await stopLeftoverChild(h.record, this.init.stopGraceMs);
      if (outcome !== 'none') this.log.warn({ workspaceId: h.workspaceId, dir: h.dir, pid: h.record?.pid, outcome }, 'recovery: leftover codex process');
    }
    const ran = homes.filter((h) => h.record !== undefined);
    for (const h of homes.filter((x) => x.record === undefined)) {
      // Never ran a process: at most a copy of what the store holds.
      await deleteHome(new Home(h.workspaceId, h.generation, h.dir, 'store'));
    }
    const newest = ran.at(-1);
    for (const h of ran.slice(0, -1)) {
      // Two homes with work for one workspace should not happen; keep the older one aside, untouched.
      const to = await quarantine(this.init.homeRoot, h);
      this.log.error({ workspaceId: h.workspaceId, dir: to }, 'recovery: an older home with unsaved work was set aside; inspect it by hand');
    }
    if (newest !== undefined) {
      const home = new Home(newest.workspaceId, newest.generation, newest.dir, 'spool');
      home.ran = true;
      home.recovered = true;
      this.spool.add(home, 'left by a previous gateway', { immediate: true });
    }
  }
}
