/**
 * Limits on children across all shards, kept on the main thread because
 * they are global: `maxConcurrentSpawns` starts at once, and `maxChildren`
 * processes at once. When full, the least recently active running child
 * without a client (over all shards) is stopped to make room; if there is
 * none (every slot holds a child with a client, or one still starting), the
 * start fails with GW_CAPACITY.
 *
 * Starts wait in a fair queue. A start that a client waits for goes before a
 * speculative one (a warm restart's pre-start): clients are served in the
 * order they came, pre-starts in their rank (most recently active first)
 * whenever no client waits. A client that arrives for a queued pre-start
 * promotes it (`promote`): it then goes before every pre-start, in the
 * order of its client's arrival. A permit covers only the CPU-heavy part of
 * a start (process start to ready): shards download a home first and ask
 * for their permit afterwards, so a download never holds one.
 *
 * A pre-start never evicts: with no free child slot it fails with
 * GW_CAPACITY at once, since stopping a workspace to start one nobody asked
 * for is no gain.
 *
 * A child slot is held from a start's permission until its process exits
 * (or the start fails), keyed by generation so releases are idempotent.
 */
import { GatewayError } from '../../shared/errors.js';
import type { SpawnPriority } from '../../shared/protocol.js';

export interface SpawnLimits {
  maxChildren?: number;
  maxConcurrentSpawns?: number;
}

export interface Evictor {
  /** Begins stopping one idle child somewhere; false when there is none. */
  evictOne(): Promise<boolean>;
}

export interface SpawnTicket {
  /** `client` (a client waits for it, the default) or `prestart`. */
  priority?: SpawnPriority;
  /** Order among pre-starts, lowest first; ignored for client starts. */
  rank?: number;
}

export interface Admission {
  /** Time spent in the queue before the permit, in ms. */
  queuedMs: number;
  /** The priority it was admitted with (a promoted pre-start: `client`). */
  priority: SpawnPriority;
}

interface Waiter {
  generation: string;
  priority: SpawnPriority;
  rank: number;
  /** Arrival order; a promotion takes a new one (its client's arrival). */
  seq: number;
  admit(): void;
}

export class SpawnGate {
  private spawning = 0;
  private readonly queue: Waiter[] = [];
  private seq = 0;
  private readonly held = new Set<string>();
  private readonly waitingForRoom: Array<() => void> = [];
  private reserving: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly limits: SpawnLimits,
    private readonly evictor: Evictor,
    private readonly roomWaitMs = 30_000,
  ) {}

  get enabled(): boolean {
    return this.limits.maxChildren !== undefined || this.limits.maxConcurrentSpawns !== undefined;
  }

  get children(): number {
    return this.held.size;
  }

  /** Starts waiting for a permit now, by priority. */
  get queued(): Record<SpawnPriority, number> {
    const out: Record<SpawnPriority, number> = { client: 0, prestart: 0 };
    for (const w of this.queue) out[w.priority] += 1;
    return out;
  }

  /**
   * Resolves when `generation` may spawn, with the time it waited;
   * GW_CAPACITY when no room can be made. The queue entry exists when this
   * returns (synchronously), so a `promote` sent right after it finds it.
   */
  async enter(generation: string, ticket: SpawnTicket = {}): Promise<Admission> {
    const t0 = performance.now();
    const priority = await this.acquirePermit(generation, ticket);
    try {
      if (this.limits.maxChildren !== undefined) {
        // One reservation at a time, so concurrent starts do not all evict.
        const mine = this.reserving.then(() => this.reserve(generation, this.limits.maxChildren as number, priority));
        this.reserving = mine.catch(() => {});
        await mine;
      } else {
        this.held.add(generation);
      }
    } catch (err) {
      this.releasePermit();
      throw err;
    }
    return { queuedMs: performance.now() - t0, priority };
  }

  /**
   * A client now waits for the queued pre-start of `generation`: it goes
   * before every pre-start, after the clients that came before it. False
   * when it is not queued (admitted already, or a client start anyway).
   */
  promote(generation: string): boolean {
    const w = this.queue.find((x) => x.generation === generation);
    if (w === undefined || w.priority === 'client') return false;
    w.priority = 'client';
    w.seq = this.seq++;
    return true;
  }

  /** The start finished: its permit is free; on failure its slot too. */
  settled(generation: string, ok: boolean): void {
    this.releasePermit();
    if (!ok) this.release(generation);
  }

  /** The process of `generation` exited. */
  /** A child adopted after a handover holds a slot until it exits, as one started here. */
  adopt(generation: string): void {
    this.held.add(generation);
  }

  release(generation: string): void {
    if (!this.held.delete(generation)) return;
    const next = this.waitingForRoom.shift();
    next?.();
  }

  private async reserve(generation: string, max: number, priority: SpawnPriority): Promise<void> {
    while (this.held.size >= max) {
      if (priority === 'prestart') {
        throw new GatewayError('GW_CAPACITY', `all ${max} child slots are in use; a pre-start does not evict`, { details: { maxChildren: max } });
      }
      if (!(await this.evictor.evictOne())) {
        throw new GatewayError('GW_CAPACITY', `all ${max} child slots are in use by children that are starting or have clients attached`, { details: { maxChildren: max } });
      }
      // The evicted child may be gone already (its exit can be processed before
      // evictOne's answer): then there is room now, and no release left to wait for.
      if (this.held.size >= max) await this.roomOrTimeout();
    }
    this.held.add(generation);
  }

  private roomOrTimeout(): Promise<void> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined = undefined;
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.waitingForRoom.push(done);
      timer = setTimeout(() => {
        const i = this.waitingForRoom.indexOf(done);
        if (i >= 0) this.waitingForRoom.splice(i, 1);
        resolve();
      }, this.roomWaitMs);
    });
  }

  private acquirePermit(generation: string, ticket: SpawnTicket): Promise<SpawnPriority> {
    const max = this.limits.maxConcurrentSpawns;
    const priority = ticket.priority ?? 'client';
    // Nobody waits ahead of it when the queue is empty; otherwise the queue decides.
    if (max === undefined || (this.spawning < max && this.queue.length === 0)) {
      this.spawning++;
      return Promise.resolve(priority);
    }
    return new Promise((resolve) => {
      const w: Waiter = {
        generation,
        priority,
        rank: ticket.rank ?? 0,
        seq: this.seq++,
        admit: () => {
          this.spawning++;
          resolve(w.priority);
        },
      };
      this.queue.push(w);
    });
  }

  private releasePermit(): void {
    this.spawning = Math.max(0, this.spawning - 1);
    const max = this.limits.maxConcurrentSpawns ?? Number.POSITIVE_INFINITY;
    while (this.spawning < max && this.queue.length > 0) {
      const i = this.nextIndex();
      const [w] = this.queue.splice(i, 1);
      w?.admit();
    }
  }

  /** Clients first, by arrival; then pre-starts by rank, then arrival. */
  private nextIndex(): number {
    let best = 0;
    for (let i = 1; i < this.queue.length; i++) {
      if (before(this.queue[i] as Waiter, this.queue[best] as Waiter)) best = i;
    }
    return best;
  }
}

function before(a: Waiter, b: Waiter): boolean {
  if (a.priority !== b.priority) return a.priority === 'client';
  if (a.priority === 'prestart' && a.rank !== b.rank) return a.rank < b.rank;
  return a.seq < b.seq;
}
