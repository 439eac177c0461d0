/**
 * The loopback tokens of a shard's running children: each child sends its
 * token back to the gateway's internal API, which asks every shard which
 * workspace it belongs to. Kept by SHA-256 (the map never holds the token as
 * a key) and compared in constant time.
 */
import { sameSecret, tokenKey } from '../shared/secrets.js';

export class LoopbackTokens {
  private readonly byKey = new Map<string, { token: Buffer; workspaceId: string }>();

  add(token: string, workspaceId: string): void {
    this.byKey.set(tokenKey(token), { token: Buffer.from(token), workspaceId });
  }

  remove(token: string): void {
    this.byKey.delete(tokenKey(token));
  }

  /** The workspace whose running child holds `token`, or null. */
  lookup(token: string): string | null {
    if (typeof token !== 'string' || token.length === 0) return null;
    const hit = this.byKey.get(tokenKey(token));
    if (hit === undefined) return null;
    return sameSecret(token, hit.token) ? hit.workspaceId : null;
  }
}
