/**
 * This node's etcd lease: granted with the cluster's TTL, kept alive every
 * third of it, and judged alive only by what this process can prove.
 *
 * etcd starts a lease's TTL over when it receives a keep-alive, which is
 * after we sent it. So a keep-alive sent at monotonic time t and answered
 * with a positive TTL proves the lease lives until at least t + TTL; this
 * node counts it alive only until t + TTL − margin (`validUntil`), by
 * `performance.now()` (never the wall clock, which may jump). Past that,
 * with no newer proof, the lease is `lost`: the owner stops its children
 * before etcd can hand their workspaces to another node. Children of a
 * process that was frozen (SIGSTOP) find on waking that the deadline has
 * passed, whatever the timers did meanwhile.
 *
 * A lease etcd no longer knows (expired, revoked) is replaced by a new one;
 * owner keys bound to the old one are gone with it ('replaced').
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Etcd3 } from 'etcd3';
import { GatewayError } from '../../shared/errors.js';

export interface LeaseOptions {
  ttlMs: number;
  log: Logger;
}

/** How long before the proven end of the lease this node gives it up. */
export function leaseMarginMs(ttlMs: number): number {
  return Math.min(Math.max(500, Math.floor(ttlMs / 5)), 5000);
}

/**
 * Events: 'alive' (id): a lease is proven alive (after a grant, or again
 * after a loss); 'lost' (id): no proof within the TTL minus the margin, the
 * node must stop what it owns; 'replaced' (oldId, newId): etcd forgot the
 * old lease and a new one was granted.
 */
export class NodeLease extends EventEmitter {
  private leaseId: string | undefined;
  private validUntil = 0;
  private lost = true;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private deadline: NodeJS.Timeout | undefined;
  private readonly ttlSeconds: number;
  private readonly marginMs: number;
  private running: Promise<void> | undefined;

  constructor(
    private readonly client: Etcd3,
    private readonly o: LeaseOptions,
  ) {
    super();
    this.ttlSeconds = Math.max(2, Math.ceil(o.ttlMs / 1000));
    this.marginMs = leaseMarginMs(this.ttlSeconds * 1000);
  }

  /** The lease id while it is provably alive, else GW_CLUSTER_UNAVAILABLE. */
  current(): string {
    if (this.leaseId === undefined || !this.alive()) throw new GatewayError('GW_CLUSTER_UNAVAILABLE', 'this node cannot prove its etcd lease is alive');
    return this.leaseId;
  }

  /** The lease id, alive or not (owner keys carry it). */
  get id(): string | undefined {
    return this.leaseId;
  }

  alive(): boolean {
    return !this.lost && performance.now() < this.validUntil;
  }

  /** Milliseconds of proven life left (0 when lost). */
  remainingMs(): number {
    return this.alive() ? Math.max(0, Math.round(this.validUntil - performance.now())) : 0;
  }

  /** Tries to grant a lease at once; keeps trying in the background whatever the outcome. */
  async start(): Promise<void> {
    await this.tick();
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private tick(): Promise<void> {
    this.running ??= this.renew().finally(() => (this.running = undefined));
    return this.running;
  }

  private async renew(): Promise<void> {
    const every = Math.max(200, Math.floor((this.ttlSeconds * 1000) / 3));
    const sentAt = performance.now();
    // A late answer still proves the lease from when it was sent, so the wait may outlast the schedule.
    const callDeadline = { deadline: Date.now() + Math.max(2000, every) };
    try {
      if (this.leaseId === undefined) {
        const res = await this.client.leaseClient.leaseGrant({ TTL: this.ttlSeconds, ID: 0 }, callDeadline);
        this.leaseId = String(res.ID);
        this.o.log.info({ lease: this.leaseId, ttlSeconds: this.ttlSeconds }, 'cluster: lease granted');
        if (!this.prove(sentAt, Number(res.TTL))) {
          this.schedule(0);
          return;
        }
      } else {
        const ttl = await this.keepAliveOnce(this.leaseId, callDeadline);
        if (ttl <= 0) {
          const old = this.leaseId;
          this.leaseId = undefined;
          this.markLost(old, 'etcd no longer knows the lease');
          this.emit('replaced', old);
          this.schedule(0);
          return;
        }
        if (!this.prove(sentAt, ttl)) {
          // Answered so late (etcd coming back) that the proof has run out already: ask again now.
          this.schedule(0);
          return;
        }
      }
      // A late answer proves less than a full TTL: the next keep-alive goes
      // out well before that proof runs out, not a whole interval later.
      this.schedule(Math.min(every, Math.max(0, Math.floor((this.validUntil - performance.now()) / 2))));
    } catch (err) {
      this.o.log.warn({ lease: this.leaseId, err: (err as Error).message, remainingMs: this.remainingMs() }, 'cluster: lease keep-alive failed');
      this.check();
      this.schedule(Math.min(every, 500));
    }
  }

  /** Records a proof of life; false when it has run out already (nothing is proven now). */
  private prove(sentAt: number, ttlSeconds: number): boolean {
    // etcd answers with the TTL it restarted; trust no more than we asked for.
    const ttlMs = Math.min(ttlSeconds, this.ttlSeconds) * 1000;
    const until = sentAt + ttlMs - this.marginMs;
    if (until <= performance.now()) return false;
    this.validUntil = until;
    clearTimeout(this.deadline);
    this.deadline = setTimeout(() => this.check(), Math.max(0, this.validUntil - performance.now()));
    if (this.lost) {
      this.lost = false;
      this.emit('alive', this.leaseId);
    }
    return true;
  }

  /**
   * Called when the proof runs out; also after a freeze, when timers fire
   * late. A timer may also fire a little early by `performance.now()`
   * (timers count whole milliseconds of the loop's cached clock): then it
   * is set again, never dropped, or the loss would go unnoticed.
   */
  private check(): void {
    if (this.lost) return;
    const left = this.validUntil - performance.now();
    if (left > 0) {
      clearTimeout(this.deadline);
      this.deadline = setTimeout(() => this.check(), Math.ceil(left) + 1);
      return;
    }
    this.markLost(this.leaseId, 'no keep-alive proven within the lease TTL minus the margin');
  }

  private markLost(id: string | undefined, why: string): void {
    if (this.lost) return;
    this.lost = true;
    clearTimeout(this.deadline);
    this.o.log.error({ lease: id, why }, 'cluster: lease lost; stopping owned workspaces');
    this.emit('lost', id);
  }

  private async keepAliveOnce(id: string, opts: { deadline: number }): Promise<number> {
    const stream = await this.client.leaseClient.leaseKeepAlive(opts);
    try {
      return await new Promise<number>((resolve, reject) => {
        stream.on('data', (res: { TTL: string | number }) => resolve(Number(res.TTL)));
        stream.on('error', reject);
        stream.on('end', () => reject(new Error('keep-alive stream ended')));
        stream.write({ ID: id });
      });
    } finally {
      stream.end();
    }
  }

  /**
   * Sends no more keep-alives but goes on judging the lease, which then
   * runs out as it would for a node cut off from etcd (used by close, and
   * by tests that cut a node off).
   */
  async stopRenewing(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.running?.catch(() => {});
  }

  /** Stops keeping the lease alive; with `revoke`, tells etcd to drop it (and every key bound to it) now. */
  async close(revoke: boolean): Promise<void> {
    await this.stopRenewing();
    clearTimeout(this.deadline);
    if (revoke && this.leaseId !== undefined) {
      await this.client.leaseClient.leaseRevoke({ ID: this.leaseId }, { deadline: Date.now() + 2000 }).catch(() => {});
    }
  }
}
