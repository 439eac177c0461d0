/**
 * The loopback tokens of live children as the main thread knows them, so a
 * lookup (a child calling the internal API with its X-Loopback-Token) is
 * answered on the calling thread, known or unknown, without a message to
 * any shard.
 *
 * Only digests are kept (tokenKey, SHA-256): the token itself stays with the
 * shard that made it and the child that holds it. Tokens are 32 random bytes
 * per start or adoption, so a digest names one process: entries are removed
 * by digest, never by workspace, and a late removal for an earlier process of
 * a workspace cannot remove its current one.
 *
 * Who keeps what:
 * - a shard registers a digest and waits for the answer before it spawns the
 *   child that holds the token (or adopts it): the child's first call finds it;
 * - it forgets the digest where the process's life ends for it (stop, exit,
 *   failed start, handover), by a notice on the same port, so after its
 *   registration;
 * - every entry belongs to one worker of one shard (its epoch). When that
 *   worker dies all its entries go at once (forgetShard); a registration from
 *   a worker that is no longer current is refused (shard-host.ts), and a
 *   forget removes only its own worker's entry.
 */
import { GatewayError } from '../../shared/errors.js';
import { tokenKey } from '../../shared/secrets.js';

const DIGEST = /^[0-9a-f]{64}$/;

interface Owner {
  workspaceId: string;
  shard: number;
  epoch: number;
}

export class TokenRegistry {
  private readonly byKey = new Map<string, Owner>();

  register(key: string, workspaceId: string, shard: number, epoch: number): void {
    if (typeof key !== 'string' || !DIGEST.test(key)) throw new GatewayError('GW_INTERNAL', 'a loopback token is registered by its SHA-256 (64 hex digits)');
    this.byKey.set(key, { workspaceId, shard, epoch });
  }

  forget(key: string, shard: number, epoch: number): void {
    const o = this.byKey.get(key);
    if (o !== undefined && o.shard === shard && o.epoch === epoch) this.byKey.delete(key);
  }

  /** A shard worker died: the tokens of every child it ran go now (the children are being stopped). */
  forgetShard(shard: number): void {
    for (const [key, o] of this.byKey) if (o.shard === shard) this.byKey.delete(key);
  }

  clear(): void {
    this.byKey.clear();
  }

  /**
   * The workspace whose live child holds `token`. The map is searched by the
   * digest of what was given, so its time says nothing about the token; the
   * same work is done for known and unknown tokens.
   */
  lookup(token: string): string | undefined {
    if (typeof token !== 'string' || token.length === 0 || token.length > 256) return undefined;
    return this.byKey.get(tokenKey(token))?.workspaceId;
  }

  get size(): number {
    return this.byKey.size;
  }
}
