/**
 * Periodically stops idle children. The decision runs inside each shard
 * (shouldReap in reap-policy.ts), next to the activity it reads, so a frame
 * that arrives during a tick is never raced by a stale snapshot.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { GatewayError, toGatewayError } from '../../shared/errors.js';
import type { ReapOptions, StopResult } from '../../shared/protocol.js';
import type { Supervisor } from './supervisor.js';

export interface IdleReaperOptions {
  intervalMs: number;
  /** Children with no client attached are stopped after this much inactivity. */
  idleAfterMs: number;
  /** Children with clients attached are stopped only after this much inactivity. Default: 4 × idleAfterMs. */
  hardIdleAfterMs?: number;
  /** Stop children older than this regardless of activity. Default: never. */
  maxAgeMs?: number;
  logger?: Logger;
}

export class IdleReaper {
  private readonly reap: ReapOptions;
  private readonly intervalMs: number;
  private readonly log: Logger | undefined;

  constructor(
    private readonly sup: Pick<Supervisor, 'reapIdle'>,
    o: IdleReaperOptions,
  ) {
    for (const [k, v] of Object.entries({ intervalMs: o.intervalMs, idleAfterMs: o.idleAfterMs })) {
      if (typeof v !== 'number' || !(v > 0)) throw new GatewayError('GW_BAD_OPTIONS', `IdleReaper ${k} must be a positive number`);
    }
    // Optional, but a NaN or negative one would silently never (or always) reap.
    for (const [k, v] of Object.entries({ hardIdleAfterMs: o.hardIdleAfterMs, maxAgeMs: o.maxAgeMs })) {
      if (v !== undefined && (typeof v !== 'number' || !(v > 0))) throw new GatewayError('GW_BAD_OPTIONS', `IdleReaper ${k} must be a positive number when set`);
    }
    this.intervalMs = o.intervalMs;
    this.reap = { idleAfterMs: o.idleAfterMs, hardIdleAfterMs: o.hardIdleAfterMs ?? 4 * o.idleAfterMs };
    if (o.maxAgeMs !== undefined) this.reap.maxAgeMs = o.maxAgeMs;
    this.log = o.logger;
  }

  /** One scan: stops what is idle and returns what was stopped. */
  async tick(): Promise<StopResult[]> {
    const stopped = await this.sup.reapIdle(this.reap);
    for (const r of stopped) {
      if (r.stopped) this.log?.info({ workspaceId: r.workspaceId, saved: r.saved }, 'reaped idle workspace');
    }
    return stopped;
  }

  /** Ticks every interval until `signal` aborts; resolves then. */
  async run(signal?: AbortSignal): Promise<void> {
    while (signal?.aborted !== true) {
      try {
        await sleep(this.intervalMs, undefined, { signal });
      } catch {
        return;
      }
      try {
        await this.tick();
      } catch (err) {
        this.log?.warn({ err: toGatewayError(err).describe() }, 'idle reaper tick failed');
      }
    }
  }
}
