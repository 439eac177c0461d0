/**
 * Bearer tokens checked by a remote service: POST `{"token": "…"}`, and a 200
 * answer `{"workspace_id": "…"}` (or `workspaceId`) grants that workspace.
 * 401/403 mean no; anything else (other statuses, timeouts, network errors)
 * means the answer is unknown, which the client sees as 503, not 401.
 *
 * Positive answers are cached for `cacheMs` under the SHA-256 of the token,
 * so the raw token is never kept. Negative answers are not cached: a token
 * refused during the verifier's hiccup must work once it recovers.
 */
import { createHash } from 'node:crypto';
import { GatewayError } from '../shared/errors.js';
import type { Authenticator } from './authenticator.js';
import { checkTokenShape, workspaceIdFromClaim } from './authenticator.js';

export interface RemoteAuthenticatorOptions {
  url: string;
  /** How long a positive answer is reused; 0 disables the cache. */
  cacheMs: number;
  /** Per request, body included. Default 5 s. */
  timeoutMs?: number;
  /** Cached tokens kept at most; the least recently used go first. Default 10 000. */
  maxEntries?: number;
  fetch?: typeof fetch;
  now?: () => number;
}

interface CacheEntry {
  workspaceId: string;
  expiresAt: number;
}

export class RemoteAuthenticator implements Authenticator {
  /** Map order is recency order: a hit moves its entry to the end. */
  private readonly cache = new Map<string, CacheEntry>();
  /** One request per token at a time; concurrent verifications share it. */
  private readonly inflight = new Map<string, Promise<{ workspaceId: string }>>();
  private readonly timeoutMs: number;
  private readonly maxEntries: number;
  private readonly fetch: typeof fetch;
  private readonly now: () => number;

  constructor(private readonly o: RemoteAuthenticatorOptions) {
    this.timeoutMs = o.timeoutMs ?? 5000;
    this.maxEntries = o.maxEntries ?? 10_000;
    this.fetch = o.fetch ?? globalThis.fetch;
    this.now = o.now ?? Date.now;
  }

  /** A cached positive answer; undefined when the verifier must be asked. */
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
      pending = this.ask(token)
        .then((workspaceId) => {
          this.remember(key, workspaceId);
          return { workspaceId };
        })
        .finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  private cached(key: string): { workspaceId: string } | undefined {
    const hit = this.cache.get(key);
    if (hit === undefined) return undefined;
    this.cache.delete(key);
    if (hit.expiresAt <= this.now()) return undefined;
    this.cache.set(key, hit);
    return { workspaceId: hit.workspaceId };
  }

  private remember(key: string, workspaceId: string): void {
    if (this.o.cacheMs <= 0) return;
    this.cache.set(key, { workspaceId, expiresAt: this.now() + this.o.cacheMs });
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
        if (res.status === 401 || res.status === 403) throw new GatewayError('GW_UNAUTHORIZED', 'bearer token refused by the auth verifier');
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

function tokenKey(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
