/**
 * Bearer tokens checked by a remote service: POST `{"token": "…"}`, and a 200
 * answer `{"workspace_id": "…"}` (or `workspaceId`) grants that workspace.
 * 401/403 mean no; anything else (other statuses, timeouts, network errors)
 * means the answer is unknown, which the client sees as 503, not 401.
 *
 * Answers are cached under the SHA-256 of the token, so the raw token is
 * never kept: a grant for `cacheMs`, a refusal (401/403) for
 * `negativeCacheMs`, so a client retrying a bad token in a loop costs the
 * verifier one request per period. An unknown answer is never cached: a
 * token that met the verifier's hiccup must work once it recovers.
 *
 * At most `maxConcurrent` requests are in flight; the others wait their
 * turn, at most `timeoutMs` in all, so a burst of new tokens cannot open
 * thousands of sockets to the verifier at once.
 */
import { GatewayError } from '../../shared/errors.js';
import { tokenKey } from '../../shared/secrets.js';
import type { Authenticator } from './authenticator.js';
import { checkTokenShape, workspaceIdFromClaim } from './authenticator.js';

export interface RemoteAuthenticatorOptions {
  url: string;
  /** How long a positive answer is reused; 0 disables the cache. */
  cacheMs: number;
  /** How long a refusal (401/403) is reused; 0 disables it. Default 5 s. */
  negativeCacheMs?: number;
  /** Requests to the verifier in flight at most. Default 32. */
  maxConcurrent?: number;
  /** Per request, body included. Default 5 s. */
  timeoutMs?: number;
  /** Cached tokens kept at most; the least recently used go first. Default 10 000. */
  maxEntries?: number;
  fetch?: typeof fetch;
  now?: () => number;
}

interface CacheEntry {
  /** undefined: the verifier refused the token. */
  workspaceId: string | undefined;
  expiresAt: number;
}

const REFUSED = 'bearer token refused by the auth verifier';

export class RemoteAuthenticator implements Authenticator {
  /** Map order is recency order: a hit moves its entry to the end. */
  private readonly cache = new Map<string, CacheEntry>();
  /** One request per token at a time; concurrent verifications share it. */
  private readonly inflight = new Map<string, Promise<{ workspaceId: string }>>();
  private readonly timeoutMs: number;
  private readonly maxEntries: number;
  private readonly negativeCacheMs: number;
  private readonly maxConcurrent: number;
  private active = 0;
  /** Requests waiting for a slot, oldest first. */
  private readonly waiting: Array<() => void> = [];
  private readonly fetch: typeof fetch;
  private readonly now: () => number;

  constructor(private readonly o: RemoteAuthenticatorOptions) {
    this.timeoutMs = o.timeoutMs ?? 5000;
    this.maxEntries = o.maxEntries ?? 10_000;
    this.negativeCacheMs = o.negativeCacheMs ?? 5000;
    this.maxConcurrent = Math.max(1, o.maxConcurrent ?? 32);
    this.fetch = o.fetch ?? globalThis.fetch;
    this.now = o.now ?? Date.now;
  }

  /** A cached answer (a refusal throws); undefined when the verifier must be asked. */
  verifyNow(token: string): { workspaceId: string } | undefined {
    checkTokenShape(token);
    return this.cached(tokenKey(token));
  }

  async verify(token: string): Promise<{ workspaceId: string }> {
    checkTokenShape(token);
    const key = tokenKey(token);
    const hit = this.cached(key);
    if (hit !== undefined) return hit;
    let pending = this.inflight.get(key);
    if (pending === undefined) {
      pending = this.askInTurn(token)
        .then(
          (workspaceId) => {
            this.remember(key, workspaceId, this.o.cacheMs);
            return { workspaceId };
          },
          (err: unknown) => {
            if (err instanceof GatewayError && err.code === 'GW_UNAUTHORIZED') this.remember(key, undefined, this.negativeCacheMs);
            throw err;
          },
        )
        .finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  /** A cached answer (a grant, or a throw for a refusal); undefined when none. */
  private cached(key: string): { workspaceId: string } | undefined {
    const hit = this.cache.get(key);
    if (hit === undefined) return undefined;
    this.cache.delete(key);
    if (hit.expiresAt <= this.now()) return undefined;
    this.cache.set(key, hit);
    if (hit.workspaceId === undefined) throw new GatewayError('GW_UNAUTHORIZED', REFUSED);
    return { workspaceId: hit.workspaceId };
  }

  /** Waits for one of the maxConcurrent slots (bounded by timeoutMs), then asks. */
  private async askInTurn(token: string): Promise<string> {
    if (this.active >= this.maxConcurrent) {
      const started = this.now();
      await new Promise<void>((resolve, reject) => {
        const turn = (): void => {
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          const i = this.waiting.indexOf(turn);
          if (i >= 0) this.waiting.splice(i, 1);
          reject(new GatewayError('GW_AUTH_UNAVAILABLE', `auth verifier busy: ${this.maxConcurrent} requests in flight for ${this.now() - started} ms`));
        }, this.timeoutMs);
        this.waiting.push(turn);
      });
    } else {
      this.active++;
    }
    try {
      return await this.ask(token);
    } finally {
      // The slot passes straight to the next waiter, if any.
      const next = this.waiting.shift();
      if (next !== undefined) next();
      else this.active--;
    }
  }

  private remember(key: string, workspaceId: string | undefined, ttlMs: number): void {
    if (ttlMs <= 0) return;
    this.cache.set(key, { workspaceId, expiresAt: this.now() + ttlMs });
    while (this.cache.size > this.maxEntries) {
      const oldest = this.cache.keys().next().value as string;
      this.cache.delete(oldest);
    }
  }

  private async ask(token: string): Promise<string> {
    const signal = AbortSignal.timeout(this.timeoutMs);
    let res: Response;
    let body: unknown;
    try {
      res = await this.fetch(this.o.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify({ token }),
        signal,
        // A redirect would carry the token to wherever the verifier points.
        redirect: 'error',
      });
      if (res.status !== 200) {
        await res.body?.cancel();
        if (res.status === 401 || res.status === 403) throw new GatewayError('GW_UNAUTHORIZED', REFUSED);
        throw new GatewayError('GW_AUTH_UNAVAILABLE', `auth verifier answered HTTP ${res.status}`);
      }
      body = await res.json();
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      throw new GatewayError('GW_AUTH_UNAVAILABLE', `auth verifier ${signal.aborted ? `did not answer within ${this.timeoutMs}ms` : `unreachable or answered badly (${reason(err)})`}`, { cause: err });
    }
    const answer = (typeof body === 'object' && body !== null ? body : {}) as { workspace_id?: unknown; workspaceId?: unknown };
    return workspaceIdFromClaim(answer.workspace_id ?? answer.workspaceId, 'workspace_id');
  }
}

/** The most specific cause: `fetch failed` hides ECONNREFUSED in its cause. */
function reason(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause;
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string') return code;
  // A JSON SyntaxError quotes the body, which is not ours to pass on.
  if (err instanceof SyntaxError) return 'invalid JSON';
  return err instanceof Error ? err.message : String(err);
}
