/**
 * Tells a forwarding gateway when the workspace it forwards for changes
 * hands: one etcd watch per workspace on its owner key, shared by every
 * connection forwarded for it, and gone with the last of them.
 *
 * A forwarded connection is only as good as its target's ownership. An owner
 * that is alive closes its own clients when it gives a workspace up, and the
 * forwarding gateway passes that close on; one that froze or was cut off
 * from the network closes nothing, and its lease ends in etcd instead. The
 * watch sees that (the key is deleted, or written by a new owner), and the
 * forwarding gateway closes its client, which reconnects and reaches the new
 * owner.
 *
 * A change between the read that chose the target and the watch's start is
 * not missed: once etcd confirms the watch, the owner is read again.
 */
import type { Logger } from 'pino';
import { parseOwner } from './ownership.js';
import type { OwnerRecord } from './ownership.js';

/** An etcd3 Watcher, as far as this module uses it. */
export interface OwnerWatcher {
  on(event: 'connected' | 'put' | 'delete' | 'disconnected' | 'error' | 'end', handler: (arg: unknown) => void): unknown;
  cancel(): Promise<void>;
}

export interface OwnerWatchSource {
  /** A watch on the workspace's owner key. */
  watchOwnerKey(workspaceId: string): Promise<OwnerWatcher>;
  owner(workspaceId: string): Promise<OwnerRecord | null>;
}

interface Subscriber {
  target: OwnerRecord;
  moved: () => void;
}

interface Entry {
  subs: Set<Subscriber>;
  watcher: Promise<OwnerWatcher | undefined>;
}

/** Whether `rec` still names the owner a connection was forwarded to. */
export function sameOwner(rec: OwnerRecord | null, target: OwnerRecord): boolean {
  return rec !== null && rec.node === target.node && rec.lease === target.lease && rec.epoch === target.epoch;
}

export class OwnerWatches {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly source: OwnerWatchSource,
    private readonly log: Logger,
  ) {}

  /** Calls `moved` once if `target` stops being the workspace's owner; the returned function stops watching. */
  watch(workspaceId: string, target: OwnerRecord, moved: () => void): () => void {
    let entry = this.entries.get(workspaceId);
    if (entry === undefined) {
      const subs = new Set<Subscriber>();
      entry = { subs, watcher: this.start(workspaceId, subs) };
      this.entries.set(workspaceId, entry);
    }
    let fired = false;
    const sub: Subscriber = {
      target,
      moved: () => {
        if (fired) return;
        fired = true;
        moved();
      },
    };
    entry.subs.add(sub);
    const e = entry;
    return () => {
      e.subs.delete(sub);
      if (e.subs.size > 0 || this.entries.get(workspaceId) !== e) return;
      this.entries.delete(workspaceId);
      void e.watcher.then((w) => w?.cancel()).catch(() => {});
    };
  }

  /** Tells every subscriber whose target `rec` no longer names. */
  private check(subs: Set<Subscriber>, rec: OwnerRecord | null): void {
    for (const s of [...subs]) if (!sameOwner(rec, s.target)) s.moved();
  }

  private async start(workspaceId: string, subs: Set<Subscriber>): Promise<OwnerWatcher | undefined> {
    let watcher: OwnerWatcher;
    try {
      watcher = await this.source.watchOwnerKey(workspaceId);
    } catch (err) {
      // Without a watch a frozen owner's clients stay until their own timeouts; a live owner still closes them.
      this.log.warn({ workspaceId, err: (err as Error).message }, 'cluster: cannot watch the owner of a forwarded workspace');
      return undefined;
    }
    watcher.on('put', (kv) => this.check(subs, parseOwner((kv as { value: Buffer }).value) ?? null));
    watcher.on('delete', () => this.check(subs, null));
    watcher.on('error', (err) => this.log.warn({ workspaceId, err: (err as Error).message }, 'cluster: owner watch failed'));
    // create() resolves once etcd confirmed the watch: anything after this read is seen by it.
    this.source.owner(workspaceId).then(
      (rec) => this.check(subs, rec),
      () => {},
    );
    return watcher;
  }

  /** Watches still open (tests, stats). */
  get size(): number {
    return this.entries.size;
  }

  close(): void {
    for (const e of this.entries.values()) void e.watcher.then((w) => w?.cancel()).catch(() => {});
    this.entries.clear();
  }
}
