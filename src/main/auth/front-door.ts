/**
 * Authentication at the front door: the bearer token of an upgrade request
 * becomes a workspace id, or the upgrade is refused. `createAuthenticator`
 * picks the remote verifier when auth.verify_url is set, else HS256 JWTs.
 */
import type { Authenticator } from './authenticator.js';
import { ensureJwtSecret } from './jwt-secret.js';
import { loadJwksFile } from './jwks.js';
import type { JwtAlgorithm } from './jwks.js';
import { JwtAuthenticator } from './jwt.js';
import { RemoteAuthenticator } from './remote.js';
import type { Settings } from '../settings/spec.js';

export type { Authenticator } from './authenticator.js';
export { MAX_TOKEN_LENGTH } from './authenticator.js';
export { JwtAuthenticator, signWorkspaceToken } from './jwt.js';
export type { JwtAuthenticatorOptions, SignWorkspaceTokenOptions } from './jwt.js';
export { keysFromJwks, loadJwksFile } from './jwks.js';
export type { JwtAlgorithm, JwtKey } from './jwks.js';
export { RemoteAuthenticator } from './remote.js';
export type { RemoteAuthenticatorOptions } from './remote.js';

/** The token of `Authorization: Bearer <token>` (scheme in any case), else undefined. */
export function bearerToken(headerValue: string | undefined): string | undefined {
  const m = /^Bearer[ \t]+(\S+)$/i.exec(headerValue?.trim() ?? '');
  return m?.[1];
}

/**
 * The authenticator the settings describe. Async because the JWT secret may
 * live in a file that is created on first use (see ensureJwtSecret).
 */
export async function createAuthenticator(settings: Settings): Promise<Authenticator> {
  const { auth } = settings;
  if (auth.verifyUrl !== undefined) {
    return new RemoteAuthenticator({ url: auth.verifyUrl, cacheMs: auth.verifyCacheMs, negativeCacheMs: auth.verifyNegativeCacheMs, maxConcurrent: auth.verifyConcurrency });
  }
  const { jwksFile, secret, algorithms, maxAgeMs } = auth.jwt;
  // With a JWKS file, tokens come from an identity provider: no key file is made up.
  const hmac = jwksFile !== undefined ? secret : await ensureJwtSecret(settings);
  return new JwtAuthenticator({
    ...(hmac === undefined ? {} : { secret: hmac }),
    ...(jwksFile === undefined ? {} : { keys: await loadJwksFile(jwksFile) }),
    ...(algorithms === undefined ? {} : { algorithms: algorithms as JwtAlgorithm[] }),
    ...(maxAgeMs === undefined ? {} : { maxTokenAgeSec: maxAgeMs / 1000 }),
    issuer: auth.jwt.issuer,
    audience: auth.jwt.audience,
    workspaceClaim: auth.jwt.workspaceClaim,
  });
}
