/**
 * Bearer tokens as JWTs, checked by fast-jwt (a maintained verifier) with
 * an algorithm allowlist: HMAC with a shared secret, and RSA, RSA-PSS,
 * ECDSA or EdDSA with public keys from a JWKS file, as identity providers
 * sign. A token's `kid` picks its key among several (rotation); one without
 * a `kid` is tried against every key that fits its algorithm. An expiry
 * is required, so no token is valid forever; `maxTokenAgeSec` also bounds
 * its age (then `iat` is required).
 *
 * Verification is synchronous (fast-jwt verifies with a string or buffer
 * key without a callback) so the front can upgrade inside uWS's upgrade
 * callback: an upgrade completed after an await can be cut by uWS 20.30
 * (see Authenticator.verifyNow). jose signs the tokens (signWorkspaceToken).
 */
import { createDecoder, createVerifier } from 'fast-jwt';
import { SignJWT } from 'jose';
import { GatewayError } from '../../shared/errors.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';
import type { Authenticator } from './authenticator.js';
import { checkTokenShape, workspaceIdFromClaim } from './authenticator.js';
import { HS_ALGORITHMS, JWT_ALGORITHMS } from './jwks.js';
import type { JwtAlgorithm, JwtKey } from './jwks.js';

const ALG = 'HS256';
export const DEFAULT_WORKSPACE_CLAIM = 'workspace_id';

export interface JwtAuthenticatorOptions {
  /** An HMAC key (HS*). A string is used as its UTF-8 bytes. */
  secret?: string | Uint8Array;
  /** Further keys, e.g. from a JWKS file (loadJwksFile). */
  keys?: readonly JwtKey[];
  /**
   * Algorithms accepted at all. Default: HS256 when only a secret is given,
   * else HS256 (with a secret) plus RS256 and ES256. `none` is never accepted.
   */
  algorithms?: readonly JwtAlgorithm[];
  /** When set, the `iss` claim must equal it. */
  issuer?: string;
  /** When set, the `aud` claim must contain it. */
  audience?: string;
  /** Default `workspace_id`. */
  workspaceClaim?: string;
  /** Allowed clock skew for exp/nbf/iat. Default 5 s. */
  clockToleranceSec?: number;
  /** When set, a token older than this (by `iat`, which becomes required) is refused. */
  maxTokenAgeSec?: number;
}

type Verify = (token: string) => Record<string, unknown>;

interface KeyVerifier {
  kid: string | undefined;
  algorithms: readonly string[];
  verify: Verify;
}

const decodeHeader = createDecoder({ complete: true, checkTyp: undefined }) as (token: string) => { header: Record<string, unknown> };

export class JwtAuthenticator implements Authenticator {
  private readonly verifiers: KeyVerifier[];
  private readonly claim: string;

  constructor(o: JwtAuthenticatorOptions) {
    this.claim = o.workspaceClaim ?? DEFAULT_WORKSPACE_CLAIM;
    const toleranceSec = o.clockToleranceSec ?? 5;
    // NaN would pass every expiry check.
    if (!Number.isFinite(toleranceSec) || toleranceSec < 0) throw new GatewayError('GW_SETTINGS', `clockToleranceSec: expected a finite number of seconds of at least 0, got ${String(o.clockToleranceSec)}`);
    const maxAge = o.maxTokenAgeSec;
    if (maxAge !== undefined && (!Number.isFinite(maxAge) || maxAge <= 0)) throw new GatewayError('GW_SETTINGS', `maxTokenAgeSec: expected a finite number of seconds above 0, got ${String(maxAge)}`);
    const keys: JwtKey[] = [...(o.secret === undefined ? [] : [{ key: secretBytes(o.secret), algorithms: HS_ALGORITHMS }]), ...(o.keys ?? [])];
    if (keys.length === 0) throw new GatewayError('GW_SETTINGS', 'auth.jwt: no key to verify tokens with: set auth.jwt.secret or auth.jwt.jwks_file');
    const allowed = o.algorithms ?? (o.keys === undefined ? [ALG] : [...(o.secret === undefined ? [] : [ALG]), 'RS256', 'ES256']);
    for (const a of allowed) {
      if (!(JWT_ALGORITHMS as readonly string[]).includes(a)) throw new GatewayError('GW_SETTINGS', `auth.jwt.algorithms: ${String(a)} is not one of ${JWT_ALGORITHMS.join(', ')}`);
    }
    this.verifiers = [];
    for (const k of keys) {
      const algorithms = k.algorithms.filter((a) => allowed.includes(a));
      if (algorithms.length === 0) continue;
      const verify = createVerifier({
        key: typeof k.key === 'string' ? k.key : Buffer.from(k.key),
        algorithms,
        // allowedIss/allowedAud only check a claim that is there.
        requiredClaims: ['exp', ...(maxAge === undefined ? [] : ['iat']), ...(o.issuer === undefined ? [] : ['iss']), ...(o.audience === undefined ? [] : ['aud'])],
        clockTolerance: toleranceSec * 1000,
        ...(maxAge === undefined ? {} : { maxAge: maxAge * 1000 }),
        ...(o.issuer === undefined ? {} : { allowedIss: o.issuer }),
        ...(o.audience === undefined ? {} : { allowedAud: o.audience }),
      }) as Verify;
      this.verifiers.push({ kid: k.kid, algorithms, verify });
    }
    if (this.verifiers.length === 0) throw new GatewayError('GW_SETTINGS', `auth.jwt.algorithms: none of ${allowed.join(', ')} fits a configured key`);
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async turns a throw into a rejection
  async verify(token: string): Promise<{ workspaceId: string }> {
    return this.verifyNow(token);
  }

  verifyNow(token: string): { workspaceId: string } {
    checkTokenShape(token);
    const payload = this.claims(token);
    return { workspaceId: workspaceIdFromClaim(payload[this.claim], this.claim) };
  }

  /** The messages name the failed check and never the token. */
  private claims(token: string): Record<string, unknown> {
    let header: Record<string, unknown>;
    try {
      header = decodeHeader(token).header;
    } catch (err) {
      throw invalid(err);
    }
    const alg = header.alg;
    const kid = header.kid;
    if (typeof alg !== 'string' || !this.verifiers.some((v) => v.algorithms.includes(alg))) throw invalid('the token\'s algorithm is not allowed');
    const candidates = this.verifiers.filter((v) => v.algorithms.includes(alg) && (kid === undefined || v.kid === kid));
    if (candidates.length === 0) throw invalid('no key with the token\'s "kid"');
    let last: unknown;
    for (const v of candidates) {
      try {
        const payload = v.verify(token) as unknown;
        if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) throw invalid('the claims are not a JSON object');
        return payload as Record<string, unknown>;
      } catch (err) {
        last = err;
        // Another key can only help when this one's signature did not match.
        if ((err as { code?: unknown }).code !== 'FAST_JWT_INVALID_SIGNATURE') break;
      }
    }
    throw invalid(last);
  }
}

function invalid(reason: unknown): GatewayError {
  if (reason instanceof GatewayError) return reason;
  const text = reason instanceof Error ? reason.message : String(reason);
  return new GatewayError('GW_UNAUTHORIZED', `invalid bearer token: ${text}`);
}

export interface SignWorkspaceTokenOptions {
  secret: string | Uint8Array;
  workspaceId: string;
  issuer?: string;
  audience?: string;
  /** A jose time span (`'1h'`, `'30m'`) or seconds from now. Default `'1h'`. */
  expiresIn?: string | number;
  /** Default `workspace_id`. */
  claim?: string;
}

/** An HS256 token for one workspace, as JwtAuthenticator expects it. */
export async function signWorkspaceToken(o: SignWorkspaceTokenOptions): Promise<string> {
  const workspaceId = validateWorkspaceId(o.workspaceId);
  const expiresIn = o.expiresIn ?? '1h';
  const jwt = new SignJWT({ [o.claim ?? DEFAULT_WORKSPACE_CLAIM]: workspaceId })
    .setProtectedHeader({ alg: ALG, typ: 'JWT' })
    .setIssuedAt()
    // jose reads a number as an absolute time; ours is relative.
    .setExpirationTime(typeof expiresIn === 'number' ? Math.floor(Date.now() / 1000) + expiresIn : expiresIn);
  if (o.issuer !== undefined) jwt.setIssuer(o.issuer);
  if (o.audience !== undefined) jwt.setAudience(o.audience);
  return jwt.sign(secretBytes(o.secret));
}

function secretBytes(secret: string | Uint8Array): Uint8Array {
  const key = typeof secret === 'string' ? new TextEncoder().encode(secret) : secret;
  if (key.length === 0) throw new GatewayError('GW_SETTINGS', 'auth.jwt.secret: the JWT secret is empty');
  return key;
}
