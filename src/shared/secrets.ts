/** Comparing and indexing secrets (bearer tokens, loopback tokens) without leaking them through timing. */
import { createHash, timingSafeEqual } from 'node:crypto';

/** The key a token is indexed by: its SHA-256, so a map never holds the token itself as a key. */
export function tokenKey(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Whether `given` equals `expected`, in time that depends only on their lengths. */
export function sameSecret(given: string | Buffer, expected: string | Buffer): boolean {
  const a = typeof given === 'string' ? Buffer.from(given) : given;
  const b = typeof expected === 'string' ? Buffer.from(expected) : expected;
  return a.length === b.length && timingSafeEqual(a, b);
}
