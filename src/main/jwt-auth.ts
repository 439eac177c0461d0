/**
 * Bearer tokens as HS256 JWTs signed with a shared secret. Only HS256 is
 * accepted: pinning the algorithm is what keeps `alg: none` and algorithm
 * confusion out, and an expiry is required so no token is valid forever.
 */
import { errors as joseErrors, jwtVerify, SignJWT } from 'jose';
import type { JWTPayload, JWTVerifyOptions } from 'jose';
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
  private readonly options: JWTVerifyOptions;

  constructor(o: JwtAuthenticatorOptions) {
    this.key = secretBytes(o.secret);
    this.claim = o.workspaceClaim ?? DEFAULT_WORKSPACE_CLAIM;
    this.options = {
      algorithms: [ALG],
      requiredClaims: ['exp'],
      clockTolerance: o.clockToleranceSec ?? 5,
      ...(o.issuer === undefined ? {} : { issuer: o.issuer }),
      ...(o.audience === undefined ? {} : { audience: o.audience }),
    };
  }

  async verify(token: string): Promise<{ workspaceId: string }> {
    checkTokenShape(token);
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.key, this.options));
    } catch (err) {
      // jose's messages name the failed check ('"exp" claim timestamp check
      // failed') and never the token, so they are fit for the client.
      const reason = err instanceof joseErrors.JOSEError ? err.message : 'malformed token';
      throw new GatewayError('GW_UNAUTHORIZED', `invalid bearer token: ${reason}`, { cause: err });
    }
    return { workspaceId: workspaceIdFromClaim(payload[this.claim], this.claim) };
  }
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
