/**
 * Verification keys from a JWKS file (RFC 7517 `{"keys":[…]}`), as identity
 * providers publish them. Each key gets the algorithms its type allows, so
 * an RSA public key can never be taken for an HMAC secret (algorithm
 * confusion), and its `kid`, which picks it for tokens that name it.
 */
import { createPublicKey } from 'node:crypto';
import type { JsonWebKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { GatewayError } from '../../shared/errors.js';

export const HS_ALGORITHMS = ['HS256', 'HS384', 'HS512'] as const;
export const JWT_ALGORITHMS = [...HS_ALGORITHMS, 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];

export interface JwtKey {
  /** Tokens whose header names this `kid` are checked with this key only. */
  kid?: string;
  /** An HMAC secret, or a public key as PEM (SPKI). */
  key: Uint8Array | string;
  /** What this key can verify; intersected with the configured allowlist. */
  algorithms: readonly JwtAlgorithm[];
}

const EC_ALGORITHM: Record<string, JwtAlgorithm> = { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' };

function algorithmsFor(jwk: JsonWebKey & { alg?: string }): readonly JwtAlgorithm[] {
  let fit: readonly JwtAlgorithm[];
  if (jwk.kty === 'RSA') fit = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
  else if (jwk.kty === 'EC') fit = EC_ALGORITHM[jwk.crv ?? ''] === undefined ? [] : [EC_ALGORITHM[jwk.crv ?? ''] as JwtAlgorithm];
  else if (jwk.kty === 'OKP') fit = jwk.crv === 'Ed25519' ? ['EdDSA'] : [];
  else if (jwk.kty === 'oct') fit = HS_ALGORITHMS;
  else fit = [];
  // A key that names its algorithm is used for that one only (RFC 7517, 4.4).
  return jwk.alg === undefined ? fit : fit.filter((a) => a === jwk.alg);
}

/** The keys of a parsed JWKS document. Throws GW_SETTINGS naming the bad entry. */
export function keysFromJwks(doc: unknown, source: string): JwtKey[] {
  const list = (doc as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(list) || list.length === 0) throw new GatewayError('GW_SETTINGS', `${source}: expected a JWKS document {"keys": [...]} with at least one key`);
  const keys: JwtKey[] = [];
  for (const [i, raw] of list.entries()) {
    const jwk = raw as JsonWebKey & { kid?: unknown; alg?: string; use?: string };
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    const algorithms = algorithmsFor(jwk);
    if (algorithms.length === 0) throw new GatewayError('GW_SETTINGS', `${source}: key ${i}: unsupported key type or algorithm (kty ${String(jwk.kty)}, crv ${String(jwk.crv)}, alg ${String(jwk.alg)})`);
    if (jwk.kid !== undefined && typeof jwk.kid !== 'string') throw new GatewayError('GW_SETTINGS', `${source}: key ${i}: "kid" must be a string`);
    let key: Uint8Array | string;
    try {
      if (jwk.kty === 'oct') {
        key = Buffer.from(String(jwk.k ?? ''), 'base64url');
        if (key.length < 32) throw new Error('an HMAC key needs at least 32 bytes');
      } else {
        // A private JWK works too: only its public half is kept.
        key = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString();
      }
    } catch (err) {
      throw new GatewayError('GW_SETTINGS', `${source}: key ${i}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    keys.push({ ...(jwk.kid === undefined ? {} : { kid: jwk.kid }), key, algorithms });
  }
  if (keys.length === 0) throw new GatewayError('GW_SETTINGS', `${source}: no signing key (every key has "use" other than "sig")`);
  return keys;
}

export async function loadJwksFile(file: string): Promise<JwtKey[]> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new GatewayError('GW_SETTINGS', `auth.jwt.jwks_file ${file}: cannot read it as JSON (${(err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err))})`, { cause: err });
  }
  return keysFromJwks(doc, `auth.jwt.jwks_file ${file}`);
}
