/**
 * Limits on children across all shards, kept on the main thread because
 * they are global: `maxConcurrentSpawns` starts at once (the others wait, in
 * order), and `maxChildren` processes at once. When full, the least recently
 * active running child without a client (over all shards) is stopped to make
 * room; if there is none (every slot holds a child with a client, or one still
 * starting), the start fails with GW_CAPACITY.
 *
 * A child slot is held from a start's permission until its process exits
 * (or the start fails), keyed by generation so releases are idempotent.
 */
import { GatewayError } from '../shared/errors.js';

export interface SpawnLimits {
  maxChildren?: number;
  maxConcurrentSpawns?: number;
}

export interface Evictor {
  /** Begins stopping one idle child somewhere; false when there is none. */
  evictOne(): Promise<boolean>;
}

export class SpawnGate {
  private spawning = 0;
  private readonly queue: Array<() => void> = [];
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

  /** Resolves when `generation` may spawn; GW_CAPACITY when no room can be made. */
  async enter(generation: string): Promise<void> {
    await this.acquirePermit();
    try {
      if (this.limits.maxChildren !== undefined) {
        // One reservation at a time, so concurrent starts do not all evict.
        const mine = this.reserving.then(() => this.reserve(generation, this.limits.maxChildren as number));
        this.reserving = mine.catch(() => {});
        await mine;
      } else {
        this.held.add(generation);
      }
    } catch (err) {
      this.releasePermit();
      throw err;
    }
  }

  /** The start finished: its permit is free; on failure its slot too. */
  settled(generation: string, ok: boolean): void {
    this.releasePermit();
    if (!ok) this.release(generation);
  }

  /** The process of `generation` exited. */
  release(generation: string): void {
    if (!this.held.delete(generation)) return;
    const next = this.waitingForRoom.shift();
    next?.();
  }

  private async reserve(generation: string, max: number): Promise<void> {
    while (this.held.size >= max) {
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

  private acquirePermit(): Promise<void> {
    const max = this.limits.maxConcurrentSpawns;
    if (max === undefined || this.spawning < max) {
      this.spawning++;
      return Promise.resolve();
    }
    return new Promise((resolve) =>
      this.queue.push(() => {
        this.spawning++;
        resolve();
      }),
    );
  }

  private releasePermit(): void {
    this.spawning = Math.max(0, this.spawning - 1);
    const next = this.queue.shift();
    next?.();
  }
}
