/**
 * Bearer tokens as HS256 JWTs signed with a shared secret. Only HS256 is
 * accepted: pinning the algorithm is what keeps `alg: none` and algorithm
 * confusion out, and an expiry is required so no token is valid forever.
 *
 * Verification is synchronous (node:crypto HMAC, timing-safe compare) so the
 * front can upgrade inside uWS's upgrade callback: an upgrade completed after
 * an await can be cut by uWS 20.30 (see Authenticator.verifyNow). The checks
 * and their messages follow jose's `jwtVerify` with `algorithms: ['HS256']`,
 * `requiredClaims: ['exp']`; jose signs the tokens (signWorkspaceToken).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { SignJWT } from 'jose';
import { GatewayError } from '../shared/errors.js';
import { validateWorkspaceId } from '../shared/workspace-id.js';
import type { Authenticator } from './authenticator.js';
import { checkTokenShape, workspaceIdFromClaim } from './authenticator.js';

const ALG = 'HS256';
export const DEFAULT_WORKSPACE_CLAIM = 'workspace_id';

export interface JwtAuthenticatorOptions {
  /** A string is used as its UTF-8 bytes. */
  secret: string | Uint8Array;
  /** When set, the `iss` claim must equal it. */
  issuer?: string;
  /** When set, the `aud` claim must contain it. */
  audience?: string;
  /** Default `workspace_id`. */
  workspaceClaim?: string;
  /** Allowed clock skew for exp/nbf/iat. Default 5 s. */
  clockToleranceSec?: number;
}

export class JwtAuthenticator implements Authenticator {
  private readonly key: Uint8Array;
  private readonly claim: string;
  private readonly issuer: string | undefined;
  private readonly audience: string | undefined;
  private readonly toleranceSec: number;

  constructor(o: JwtAuthenticatorOptions) {
    this.key = secretBytes(o.secret);
    this.claim = o.workspaceClaim ?? DEFAULT_WORKSPACE_CLAIM;
    this.issuer = o.issuer;
    this.audience = o.audience;
    this.toleranceSec = o.clockToleranceSec ?? 5;
    // NaN would pass every expiry check.
    if (!Number.isFinite(this.toleranceSec) || this.toleranceSec < 0) throw new GatewayError('GW_SETTINGS', `clockToleranceSec: expected a finite number of seconds of at least 0, got ${String(o.clockToleranceSec)}`);
  }

  // eslint-disable-next-line @typescript-eslint/require-await -- async turns a throw into a rejection
  async verify(token: string): Promise<{ workspaceId: string }> {
    return this.verifyNow(token);
  }

  verifyNow(token: string): { workspaceId: string } {
    checkTokenShape(token);
    // The messages name the failed check and never the token, so they are fit for the client.
    const payload = this.claims(token);
    return { workspaceId: workspaceIdFromClaim(payload[this.claim], this.claim) };
  }

  private claims(token: string): Record<string, unknown> {
    const parts = token.split('.');
    if (parts.length !== 3 || !parts.every((p) => BASE64URL.test(p))) throw invalid('Invalid Compact JWS');
    const [h, p, sig] = parts as [string, string, string];
    const header = jsonObject(h);
    if (header === undefined) throw invalid('JWS Protected Header is invalid');
    if (header.alg !== ALG) throw invalid('"alg" (Algorithm) Header Parameter value not allowed');
    // No extension is understood, so a critical one cannot be honoured (RFC 7515, 4.1.11).
    if (header.crit !== undefined) throw invalid('"crit" (Critical) Header Parameter is not supported');
    const expected = createHmac('sha256', this.key).update(`${h}.${p}`).digest();
    const given = Buffer.from(sig, 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid('signature verification failed');

    const claims = jsonObject(p);
    if (claims === undefined) throw invalid('JWT Claims Set must be a top-level JSON object');
    const now = Math.floor(Date.now() / 1000);
    for (const name of ['exp', 'nbf', 'iat'] as const) {
      if (claims[name] !== undefined && (typeof claims[name] !== 'number' || !Number.isFinite(claims[name]))) throw invalid(`"${name}" claim must be a number`);
    }
    const exp = claims.exp as number | undefined;
    const nbf = claims.nbf as number | undefined;
    if (exp === undefined) throw invalid('missing required "exp" claim');
    if (exp <= now - this.toleranceSec) throw invalid('"exp" claim timestamp check failed');
    if (nbf !== undefined && nbf > now + this.toleranceSec) throw invalid('"nbf" claim timestamp check failed');
    if (this.issuer !== undefined) {
      if (claims.iss === undefined) throw invalid('missing required "iss" claim');
      if (claims.iss !== this.issuer) throw invalid('unexpected "iss" claim value');
    }
    if (this.audience !== undefined) {
      if (claims.aud === undefined) throw invalid('missing required "aud" claim');
      const aud = Array.isArray(claims.aud) ? (claims.aud as unknown[]) : [claims.aud];
      if (!aud.includes(this.audience)) throw invalid('unexpected "aud" claim value');
    }
    return claims;
  }
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;

function invalid(reason: string): GatewayError {
  return new GatewayError('GW_UNAUTHORIZED', `invalid bearer token: ${reason}`);
}

/** A base64url segment holding a JSON object, or undefined. */
function jsonObject(segment: string): Record<string, unknown> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
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
