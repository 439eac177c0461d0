/**
 * Homes whose upload failed. Each stays on disk and is retried with
 * exponential backoff and jitter until an upload succeeds; only then is it
 * deleted. A new start of the workspace takes its spooled directory (it is
 * newer than the stored object) instead of downloading stale state.
 *
 * One entry per workspace at most: a start waits for any stop or upload of
 * its key and then claims the spooled directory, so a second one never forms.
 */
import type { Logger } from 'pino';
import { toGatewayError } from '../shared/errors.js';
import type { SpoolStatus } from '../shared/protocol.js';
import { dirBytes } from './home.js';
import type { Home } from './home.js';

interface Entry {
  home: Home;
  attempts: number;
  bytes: number;
  since: number;
  nextRetryAt: number | undefined;
  lastError: string;
  timer: NodeJS.Timeout | undefined;
  attempt: Promise<void> | undefined;
}

export interface SpoolOptions {
  baseMs: number;
  maxMs: number;
  /** Uploads a home and deletes it; throws when the upload failed. */
  save: (home: Home) => Promise<void>;
  logger: Logger;
}

export class Spool {
  private readonly entries = new Map<string, Entry>();
  private closed = false;

  constructor(private readonly o: SpoolOptions) {}

  /**
   * Keeps `home` (its upload failed with `error`, or it was found at start-up)
   * and schedules a retry, or an attempt right away with `immediate`. With
   * `hold` (a failure no retry can mend, such as GW_HOME_TOO_LARGE) it is
   * kept without retries: its next stop (or a drain) tries again.
   */
  add(home: Home, error: string, opts: { immediate?: boolean; hold?: boolean } = {}): void {
    const attempts = opts.immediate === true ? 0 : 1;
    const prev = this.entries.get(home.workspaceId);
    if (prev !== undefined && prev.home.dir !== home.dir) {
      // Cannot happen while starts wait for stops; if it did, keep both on disk
      // and retry the newer one (the older is left for start-up recovery).
      this.o.logger.error({ workspaceId: home.workspaceId, kept: prev.home.dir, dir: home.dir }, 'second spooled home for one workspace');
      if (prev.timer !== undefined) clearTimeout(prev.timer);
    }
    const e: Entry = { home, attempts, bytes: 0, since: prev?.since ?? Date.now(), nextRetryAt: undefined, lastError: error, timer: undefined, attempt: undefined };
    this.entries.set(home.workspaceId, e);
    this.o.logger.warn({ workspaceId: home.workspaceId, dir: home.dir, attempts, err: error }, 'home kept in spool until it is uploaded');
    void dirBytes(home.dir).then((n) => (e.bytes = n));
    if (opts.immediate === true) this.attempt(e);
    else if (opts.hold !== true) this.schedule(e);
  }

  has(workspaceId: string): boolean {
    return this.entries.has(workspaceId);
  }

  /**
   * Takes the spooled home of a workspace out of the spool, after any upload
   * attempt in flight has finished. Undefined when none is left.
   */
  async claim(workspaceId: string): Promise<Home | undefined> {
    for (;;) {
      const e = this.entries.get(workspaceId);
      if (e === undefined) return undefined;
      if (e.attempt !== undefined) {
        await e.attempt;
        continue;
      }
      if (e.timer !== undefined) clearTimeout(e.timer);
      this.entries.delete(workspaceId);
      return e.home;
    }
  }

  status(): SpoolStatus[] {
    return [...this.entries.values()].map((e) => ({
      workspaceId: e.home.workspaceId,
      dir: e.home.dir,
      bytes: e.bytes,
      attempts: e.attempts,
      since: e.since,
      nextRetryAt: e.nextRetryAt,
      lastError: e.lastError,
    }));
  }

  /** Tries every spooled home once, now; resolves when all attempts finished. */
  async retryAll(): Promise<void> {
    const waits: Array<Promise<void>> = [];
    for (const e of this.entries.values()) {
      if (e.attempt === undefined) {
        if (e.timer !== undefined) clearTimeout(e.timer);
        e.timer = undefined;
        this.attempt(e);
      }
      if (e.attempt !== undefined) waits.push(e.attempt);
    }
    await Promise.all(waits);
  }

  /** Stops retrying. Spooled directories stay on disk for the next start. */
  close(): void {
    this.closed = true;
    for (const e of this.entries.values()) {
      if (e.timer !== undefined) clearTimeout(e.timer);
      e.timer = undefined;
    }
  }

  private schedule(e: Entry): void {
    if (this.closed) return;
    const exp = Math.min(this.o.maxMs, this.o.baseMs * 2 ** Math.min(30, Math.max(0, e.attempts - 1)));
    const delay = Math.round(exp / 2 + (Math.random() * exp) / 2);
    e.nextRetryAt = Date.now() + delay;
    e.timer = setTimeout(() => {
      e.timer = undefined;
      this.attempt(e);
    }, delay);
    e.timer.unref();
  }

  private attempt(e: Entry): void {
    e.nextRetryAt = undefined;
    e.attempt = (async () => {
      try {
        await this.o.save(e.home);
        if (this.entries.get(e.home.workspaceId) === e) this.entries.delete(e.home.workspaceId);
        this.o.logger.info({ workspaceId: e.home.workspaceId, dir: e.home.dir, attempts: e.attempts + 1 }, 'spooled home uploaded');
      } catch (err) {
        e.attempts += 1;
        // With its code: an operator tells an outage from a home too large.
        const failure = toGatewayError(err, 'GW_STORE_UPLOAD');
        e.lastError = failure.describe();
        this.o.logger.warn({ workspaceId: e.home.workspaceId, attempts: e.attempts, err: e.lastError }, 'spool retry failed');
        if (!unretryable(failure.code)) this.schedule(e);
      } finally {
        e.attempt = undefined;
      }
    })();
  }
}

/** Failures no retry can mend: a home past the archive limits stays as it is until it changes. */
export function unretryable(code: string): boolean {
  return code === 'GW_HOME_TOO_LARGE';
}
