/**
 * Which gateway of the cluster owns a workspace, kept in etcd.
 *
 * Keys under the prefix (default `/cxg/`):
 * - `owner/<ws>`: `{node, url, lease, epoch}`, bound to the owner's lease,
 *   so it disappears when the owner stops proving it is alive.
 * - `epoch/<ws>`: the workspace's fencing token, a counter bumped by every
 *   takeover; it outlives owners.
 * - `state/<ws>`: the current-state pointer, `{snapshot, epoch, generation,
 *   kept}`: which immutable snapshot in the store is the workspace's state.
 *
 * Invariants:
 * 1. A takeover is one transaction: it creates the owner key only if absent
 *    and only if the epoch is still the one read, and bumps the epoch. Of
 *    any number of concurrent takeovers exactly one wins.
 * 2. The pointer moves only in a transaction that finds this node's own
 *    owner value (lease and epoch) in place: a node whose lease expired, or
 *    whose workspace was taken over, can upload, but its snapshot never
 *    becomes current ("fenced"; the object is kept for inspection).
 * 3. A pointer never moves back past another owner's state: a save whose
 *    home ran under an older epoch than the pointer's is fenced too.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Etcd3, IOptions, Watcher } from 'etcd3';
import type { ClusterClaim, CommitOutcome, SnapshotRef } from '../../shared/cluster.js';
import { GatewayError, isGatewayError } from '../../shared/errors.js';
import { NodeLease } from './lease.js';

export interface ClusterOptions {
  nodeId: string;
  /** How peers reach this node (forwarding); shown to clients' operators in owner records. */
  advertiseUrl?: string;
  leaseTtlMs: number;
  etcd: {
    endpoints: string[];
    /** Key prefix, ending in `/`. */
    prefix: string;
    tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
    auth?: { username: string; password: string };
  };
  /** Snapshots kept besides the current one (older ones are removed from the store). */
  keepSnapshots: number;
  log: Logger;
}

/** An owner key's value. */
export interface OwnerRecord {
  node: string;
  url: string | null;
  lease: string;
  epoch: number;
}

interface StateRecord extends SnapshotRef {
  /** Earlier snapshots still in the store, newest first. */
  kept: string[];
  homePath?: string;
}

export interface ClusterStats {
  nodeId: string;
  lease: string | null;
  leaseAlive: boolean;
  leaseRemainingMs: number;
  held: number;
  takeovers: number;
  fencedCommits: number;
  leaseLosses: number;
}

/** What the supervisor and the shards need from the cluster. */
export interface ClusterOwnership extends EventEmitter {
  start(): Promise<void>;
  claim(workspaceId: string): Promise<ClusterClaim>;
  current(workspaceId: string): Promise<SnapshotRef | null>;
  commit(workspaceId: string, runEpoch: number, ref: SnapshotRef, homePath?: string): Promise<CommitOutcome>;
  release(workspaceId: string): Promise<void>;
  owner(workspaceId: string): Promise<OwnerRecord | null>;
  stats(): ClusterStats;
  close(): Promise<void>;
}

/** A transaction that loses a race is tried again this often before giving up. */
const MAX_TAKEOVER_ATTEMPTS = 5;
/** Each etcd call ends by then, so no ensure or save hangs on an etcd that does not answer. */
const CALL_TIMEOUT_MS = 5000;

/**
 * A policy that runs the call once: this module decides what to retry, and
 * when. Async, so a call that throws at once still rejects (the client
 * reports failed streams through it and only catches rejections).
 */
const ONCE = { execute: async <T>(fn: (ctx: { signal: AbortSignal }) => T | Promise<T>): Promise<T> => await fn({ signal: new AbortController().signal }) };

type Kv = { key: Buffer; value: Buffer; mod_revision: string; create_revision: string; lease: string };

/**
 * Events: 'lost' (): the lease can no longer be proven alive; every child
 * this node runs must stop (the supervisor does it).
 */
export class ClusterNode extends EventEmitter implements ClusterOwnership {
  private readonly client: Etcd3;
  private readonly lease: NodeLease;
  /** Workspaces this node holds, with the exact owner value it wrote (commits compare it). */
  private readonly held = new Map<string, { epoch: number; value: string }>();
  private readonly claiming = new Map<string, Promise<ClusterClaim>>();
  private takeovers = 0;
  private fencedCommits = 0;
  private leaseLosses = 0;
  private readonly log: Logger;

  private constructor(
    private readonly o: ClusterOptions,
    client: Etcd3,
  ) {
    super();
    this.client = client;
    this.log = o.log.child({ node: o.nodeId });
    this.lease = new NodeLease(client, { ttlMs: o.leaseTtlMs, log: this.log });
    this.lease.on('lost', () => {
      this.leaseLosses += 1;
      this.emit('lost');
    });
    // Owner keys were bound to the forgotten lease: etcd removed them with it.
    this.lease.on('replaced', () => this.held.clear());
  }

  static async create(o: ClusterOptions): Promise<ClusterNode> {
    const { Etcd3: Client } = await import('etcd3');
    const opts: IOptions = {
      hosts: o.etcd.endpoints,
      dialTimeout: CALL_TIMEOUT_MS,
      // No retries and no circuit breaker inside the client: a failed call fails now, and the lease's own schedule retries.
      faultHandling: { host: () => ONCE as never, global: ONCE as never },
      ...(o.etcd.tls === undefined ? {} : { credentials: { rootCertificate: o.etcd.tls.ca, ...(o.etcd.tls.key === undefined ? {} : { privateKey: o.etcd.tls.key }), ...(o.etcd.tls.cert === undefined ? {} : { certChain: o.etcd.tls.cert }) } }),
      ...(o.etcd.auth === undefined ? {} : { auth: o.etcd.auth }),
    };
    return new ClusterNode(o, new Client(opts));
  }

  async start(): Promise<void> {
    await this.lease.start();
    if (!this.lease.alive()) this.log.warn({ endpoints: this.o.etcd.endpoints }, 'cluster: etcd not reachable at start; workspaces cannot start until it is');
  }

  private key(kind: 'owner' | 'epoch' | 'state', workspaceId: string): Buffer {
    return Buffer.from(`${this.o.etcd.prefix}${kind}/${workspaceId}`);
  }

  private call(): { deadline: number } {
    return { deadline: Date.now() + CALL_TIMEOUT_MS };
  }

  private async etcd<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (isGatewayError(err)) throw err;
      throw new GatewayError('GW_CLUSTER_UNAVAILABLE', `etcd: ${what}`, { cause: err });
    }
  }

  /** Reads several keys in one revision. */
  private async read(keys: Buffer[]): Promise<(Kv | undefined)[]> {
    const res = await this.client.kv.txn({ compare: [], success: keys.map((key) => ({ request_range: { key } })), failure: [] }, this.call());
    return res.responses.map((r) => (r.response_range?.kvs?.[0] as Kv | undefined) ?? undefined);
  }

  /**
   * Makes this node the workspace's owner, or finds it already is. A live
   * peer's ownership is GW_OWNED_ELSEWHERE; an unprovable lease or an etcd
   * that does not answer, GW_CLUSTER_UNAVAILABLE.
   */
  claim(workspaceId: string): Promise<ClusterClaim> {
    let p = this.claiming.get(workspaceId);
    if (p === undefined) {
      p = this.takeOver(workspaceId).finally(() => this.claiming.delete(workspaceId));
      this.claiming.set(workspaceId, p);
    }
    return p;
  }

  private async takeOver(workspaceId: string): Promise<ClusterClaim> {
    const lease = this.lease.current();
    const ownerKey = this.key('owner', workspaceId);
    const epochKey = this.key('epoch', workspaceId);
    const stateKey = this.key('state', workspaceId);
    for (let attempt = 0; attempt < MAX_TAKEOVER_ATTEMPTS; attempt++) {
      const [owner, epochKv, state] = await this.etcd('read owner', () => this.read([ownerKey, epochKey, stateKey]));
      const current = parseState(state);
      if (owner !== undefined) {
        const rec = parseOwner(owner.value);
        if (rec !== undefined && rec.lease === lease && rec.node === this.o.nodeId) {
          this.held.set(workspaceId, { epoch: rec.epoch, value: owner.value.toString() });
          return { epoch: rec.epoch, current, taken: false };
        }
        throw new GatewayError('GW_OWNED_ELSEWHERE', `workspace ${workspaceId} is owned by node ${rec?.node ?? '?'} (epoch ${rec?.epoch ?? '?'})`, {
          details: { node: rec?.node ?? null, url: rec?.url ?? null },
        });
      }
      const epoch = (epochKv === undefined ? 0 : Number(epochKv.value.toString())) + 1;
      const value = JSON.stringify({ node: this.o.nodeId, url: this.o.advertiseUrl ?? null, lease, epoch } satisfies OwnerRecord);
      const res = await this.etcd('take over', () =>
        this.client.kv.txn(
          {
            compare: [
              { key: ownerKey, target: 'Create', result: 'Equal', create_revision: 0 },
              { key: epochKey, target: 'Mod', result: 'Equal', mod_revision: epochKv?.mod_revision ?? 0 },
            ],
            success: [{ request_put: { key: ownerKey, value: Buffer.from(value), lease } }, { request_put: { key: epochKey, value: Buffer.from(String(epoch)) } }],
            failure: [],
          },
          this.call(),
        ),
      );
      if (!res.succeeded) continue;
      this.held.set(workspaceId, { epoch, value });
      this.takeovers += 1;
      this.log.info({ workspaceId, epoch, current: current?.snapshot ?? null }, 'cluster: workspace taken over');
      // Nobody took it since the read (the epoch is the one read), so `current` is still the state.
      return { epoch, current, taken: true };
    }
    throw new GatewayError('GW_CLUSTER_UNAVAILABLE', `takeover of ${workspaceId} kept losing races`);
  }

  /** The workspace's current snapshot, whoever owns it (null: none stored under the cluster layout). */
  async current(workspaceId: string): Promise<SnapshotRef | null> {
    const [state] = await this.etcd('read state', () => this.read([this.key('state', workspaceId)]));
    return parseState(state);
  }

  /** Whether this node holds the workspace now, by its own record (no etcd call). */
  holds(workspaceId: string): boolean {
    return this.held.has(workspaceId);
  }

  /** A watch on the workspace's owner key (owner-watch.ts); resolves once etcd confirmed it. */
  async watchOwnerKey(workspaceId: string): Promise<Watcher> {
    return await this.client.watch().key(this.key('owner', workspaceId)).create();
  }

  async owner(workspaceId: string): Promise<OwnerRecord | null> {
    const [owner] = await this.etcd('read owner', () => this.read([this.key('owner', workspaceId)]));
    return owner === undefined ? null : (parseOwner(owner.value) ?? null);
  }

  /**
   * Makes `ref` the workspace's current state, if this node still owns the
   * workspace and no other owner stored state since the home's run began
   * (`runEpoch`). Refused: `{current: false}`, the snapshot stays in the
   * store as it is, never current. `drop`: snapshots no longer kept.
   */
  async commit(workspaceId: string, runEpoch: number, ref: SnapshotRef, homePath?: string): Promise<CommitOutcome> {
    const stateKey = this.key('state', workspaceId);
    const [state] = await this.etcd('read state', () => this.read([stateKey]));
    const before = parseState(state);
    if (before !== null && before.epoch > runEpoch) return this.fenced(workspaceId, ref, true, `state of epoch ${before.epoch} was stored after this home's run (epoch ${runEpoch}) began`);
    const held = this.held.get(workspaceId);
    if (held === undefined) return this.fenced(workspaceId, ref, false, 'this node does not hold the workspace');
    const kept = before === null ? [] : [before.snapshot, ...before.kept];
    const next: StateRecord = { ...ref, kept: kept.slice(0, this.o.keepSnapshots), ...(homePath === undefined ? {} : { homePath }) };
    const res = await this.etcd('switch state', () =>
      this.client.kv.txn(
        {
          compare: [
            { key: this.key('owner', workspaceId), target: 'Value', result: 'Equal', value: Buffer.from(held.value) },
            { key: stateKey, target: 'Mod', result: 'Equal', mod_revision: state?.mod_revision ?? 0 },
          ],
          success: [{ request_put: { key: stateKey, value: Buffer.from(JSON.stringify(next)) } }],
          failure: [],
        },
        this.call(),
      ),
    );
    if (!res.succeeded) {
      this.held.delete(workspaceId);
      return this.fenced(workspaceId, ref, false, 'ownership changed before the state could be switched');
    }
    return { current: true, drop: kept.slice(this.o.keepSnapshots).filter((s) => s !== ref.snapshot) };
  }

  private fenced(workspaceId: string, ref: SnapshotRef, final: boolean, reason: string): CommitOutcome {
    this.fencedCommits += 1;
    this.log.warn({ workspaceId, snapshot: ref.snapshot, epoch: ref.epoch, final, reason }, 'cluster: upload fenced; it stays in the store for inspection and is not current');
    return { current: false, final, reason };
  }

  /** Gives the workspace up (its owner key goes) if this node still holds it; never throws. */
  async release(workspaceId: string): Promise<void> {
    const held = this.held.get(workspaceId);
    if (held === undefined) return;
    this.held.delete(workspaceId);
    const ownerKey = this.key('owner', workspaceId);
    await this.client.kv
      .txn({ compare: [{ key: ownerKey, target: 'Value', result: 'Equal', value: Buffer.from(held.value) }], success: [{ request_delete_range: { key: ownerKey } }], failure: [] }, this.call())
      .catch((err: unknown) => this.log.warn({ workspaceId, err: (err as Error).message }, 'cluster: could not release a workspace; its key goes with the lease'));
  }

  stats(): ClusterStats {
    return {
      nodeId: this.o.nodeId,
      lease: this.lease.id ?? null,
      leaseAlive: this.lease.alive(),
      leaseRemainingMs: this.lease.remainingMs(),
      held: this.held.size,
      takeovers: this.takeovers,
      fencedCommits: this.fencedCommits,
      leaseLosses: this.leaseLosses,
    };
  }

  /**
   * Stops the lease. With nothing held it is revoked, so peers see this node
   * gone at once; workspaces still held (unsaved homes on disk) stay this
   * node's until the lease expires, which keeps a peer from starting them
   * from older state meanwhile.
   */
  async close(): Promise<void> {
    await this.lease.close(this.held.size === 0);
    this.client.close();
  }
}

/** An owner key's value, or undefined when it is not one. */
export function parseOwner(value: Buffer): OwnerRecord | undefined {
  try {
    const o = JSON.parse(value.toString()) as Partial<OwnerRecord>;
    if (typeof o.node !== 'string' || typeof o.lease !== 'string' || typeof o.epoch !== 'number') return undefined;
    return { node: o.node, url: typeof o.url === 'string' ? o.url : null, lease: o.lease, epoch: o.epoch };
  } catch {
    return undefined;
  }
}

function parseState(kv: Kv | undefined): (StateRecord & SnapshotRef) | null {
  if (kv === undefined) return null;
  try {
    const s = JSON.parse(kv.value.toString()) as Partial<StateRecord>;
    if (typeof s.snapshot !== 'string' || typeof s.epoch !== 'number' || typeof s.generation !== 'string') return null;
    return { snapshot: s.snapshot, epoch: s.epoch, generation: s.generation, kept: Array.isArray(s.kept) ? s.kept.filter((k): k is string => typeof k === 'string') : [] };
  } catch {
    return null;
  }
}
