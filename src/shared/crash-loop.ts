/**
 * Crash-loop protection. A workspace whose child exits before it is ready,
 * or within `windowMs` after, `threshold` times in a row, is not started
 * again until an exponentially growing backoff has passed; meanwhile ensure
 * fails fast with GW_CRASH_LOOP (clients see 1013, try again later). A child
 * that lives past the window clears the record, so it recovers by itself.
 */
import { GatewayError } from './errors.js';

export interface CrashLoopOptions {
  threshold: number;
  windowMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
}

export const DEFAULT_CRASH_LOOP: CrashLoopOptions = {
  threshold: 3,
  windowMs: 10_000,
  backoffBaseMs: 5_000,
  backoffMaxMs: 5 * 60_000,
};

interface Record {
  failures: number;
  until: number;
}

export class CrashLoopGuard {
  private readonly records = new Map<string, Record>();

  constructor(
    private readonly o: CrashLoopOptions,
    private readonly now: () => number = Date.now,
  ) {}

  /** Throws GW_CRASH_LOOP while the workspace is backing off. */
  check(workspaceId: string): void {
    const r = this.records.get(workspaceId);
    if (r === undefined) return;
    const wait = r.until - this.now();
    if (wait > 0) {
      throw new GatewayError('GW_CRASH_LOOP', `workspace ${workspaceId} failed ${r.failures} times in a row; next start allowed in ${Math.ceil(wait / 1000)} s`, {
        details: { retryAfterMs: wait, failures: r.failures },
      });
    }
  }

  /** A start failed in the process, or the child died within the window. */
  failed(workspaceId: string): void {
    const r = this.records.get(workspaceId) ?? { failures: 0, until: 0 };
    r.failures += 1;
    if (r.failures >= this.o.threshold) {
      const exp = Math.min(this.o.backoffMaxMs, this.o.backoffBaseMs * 2 ** Math.min(30, r.failures - this.o.threshold));
      r.until = this.now() + exp;
    }
    this.records.set(workspaceId, r);
  }

  /** The child ended after `livedMs`: a short life counts as a failure, a long one clears the record. */
  exited(workspaceId: string, livedMs: number): void {
    if (livedMs < this.o.windowMs) this.failed(workspaceId);
    else this.records.delete(workspaceId);
  }

  /** A child has been running for the whole window. */
  healthy(workspaceId: string): void {
    this.records.delete(workspaceId);
  }

  failures(workspaceId: string): number {
    return this.records.get(workspaceId)?.failures ?? 0;
  }
}
