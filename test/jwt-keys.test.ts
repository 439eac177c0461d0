/**
 * JWTs signed by an identity provider: RS256 and ES256 with keys from a JWKS
 * file, `kid` for rotation, the algorithm allowlist, and a maximum age.
 */
import { createPublicKey } from 'node:crypto';
import type { JsonWebKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import type { CryptoKey, JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JwtAuthenticator, createAuthenticator, keysFromJwks, loadJwksFile } from '../src/main/auth/front-door.js';
import { GatewayError } from '../src/shared/errors.js';
import { loadSettings } from '../src/main/settings/load.js';
import { tempDir } from './helpers.js';

interface Pair {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: CryptoKey;
  jwk: JWK;
}

async function pair(kid: string, alg: 'RS256' | 'ES256'): Promise<Pair> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  return { kid, alg, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, use: 'sig' } };
}

function sign(p: Pair, o: { workspaceId?: string; kid?: string | null; iatAgoSec?: number; exp?: string } = {}): Promise<string> {
  const t = new SignJWT({ workspace_id: o.workspaceId ?? 'ws-idp' })
    .setProtectedHeader({ alg: p.alg, ...(o.kid === null ? {} : { kid: o.kid ?? p.kid }) })
    .setIssuedAt(Math.floor(Date.now() / 1000) - (o.iatAgoSec ?? 0))
    .setExpirationTime(o.exp ?? '1h');
  return t.sign(p.privateKey);
}

function refusal(f: () => unknown): string {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(GatewayError);
    expect((err as GatewayError).code).toBe('GW_UNAUTHORIZED');
    return (err as GatewayError).message;
  }
  throw new Error('accepted');
}

describe('JwtAuthenticator with JWKS keys', () => {
  let rsaOld: Pair;
  let rsaNew: Pair;
  let ec: Pair;
  beforeAll(async () => {
    [rsaOld, rsaNew, ec] = await Promise.all([pair('2026-old', 'RS256'), pair('2026-new', 'RS256'), pair('ec-1', 'ES256')]);
  });

  it('RS256 and ES256 tokens verify with their JWKS keys, synchronously', async () => {
    const auth = new JwtAuthenticator({ keys: keysFromJwks({ keys: [rsaOld.jwk, ec.jwk] }, 'test') });
    expect(auth.verifyNow(await sign(rsaOld))).toEqual({ workspaceId: 'ws-idp' });
    expect(auth.verifyNow(await sign(ec, { workspaceId: 'ws-ec' }))).toEqual({ workspaceId: 'ws-ec' });
  });

  it('kid picks the key: during a rotation old and new keys both work; a kid not in the set, or a token signed by another key under a known kid, does not', async () => {
    const auth = new JwtAuthenticator({ keys: keysFromJwks({ keys: [rsaOld.jwk, rsaNew.jwk] }, 'test') });
    expect(auth.verifyNow(await sign(rsaOld))).toEqual({ workspaceId: 'ws-idp' });
    expect(auth.verifyNow(await sign(rsaNew))).toEqual({ workspaceId: 'ws-idp' });
    expect(refusal(() => auth.verifyNow('x'))).toMatch(/malformed/);
    const unknownKid = await sign(rsaNew, { kid: 'retired' });
    expect(refusal(() => auth.verifyNow(unknownKid))).toMatch(/"kid"/);
    const wrongKid = await sign(rsaNew, { kid: rsaOld.kid });
    expect(refusal(() => auth.verifyNow(wrongKid))).toMatch(/signature is invalid/);
    // Without a kid, every key that fits the algorithm is tried.
    expect(auth.verifyNow(await sign(rsaNew, { kid: null }))).toEqual({ workspaceId: 'ws-idp' });
  });

  it('the allowlist is enforced: an ES256 token is refused when only RS256 is allowed', async () => {
    const auth = new JwtAuthenticator({ keys: keysFromJwks({ keys: [rsaOld.jwk, ec.jwk] }, 'test'), algorithms: ['RS256'] });
    expect(auth.verifyNow(await sign(rsaOld))).toEqual({ workspaceId: 'ws-idp' });
    const esToken = await sign(ec);
    expect(refusal(() => auth.verifyNow(esToken))).toMatch(/algorithm is not allowed/);
  });

  it('algorithm confusion: an HS256 token keyed with the RSA public key (PEM) is refused', async () => {
    const auth = new JwtAuthenticator({ keys: keysFromJwks({ keys: [rsaOld.jwk] }, 'test'), algorithms: ['RS256', 'HS256'] });
    const pem = createPublicKey({ key: rsaOld.jwk as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString();
    const forged = await new SignJWT({ workspace_id: 'ws-evil' }).setProtectedHeader({ alg: 'HS256', kid: rsaOld.kid }).setExpirationTime('1h').sign(new TextEncoder().encode(pem));
    expect(refusal(() => auth.verifyNow(forged))).toMatch(/algorithm is not allowed|"kid"/);
  });

  it('a maximum token age refuses an old token whatever its exp, and requires iat', async () => {
    const auth = new JwtAuthenticator({ keys: keysFromJwks({ keys: [rsaOld.jwk] }, 'test'), maxTokenAgeSec: 600, clockToleranceSec: 0 });
    expect(auth.verifyNow(await sign(rsaOld, { iatAgoSec: 60 }))).toEqual({ workspaceId: 'ws-idp' });
    const old = await sign(rsaOld, { iatAgoSec: 3600, exp: '10h' });
    expect(refusal(() => auth.verifyNow(old))).toMatch(/iat|expired|age/i);
    const noIat = await new SignJWT({ workspace_id: 'ws' }).setProtectedHeader({ alg: 'RS256', kid: rsaOld.kid }).setExpirationTime('1h').sign(rsaOld.privateKey);
    expect(refusal(() => auth.verifyNow(noIat))).toMatch(/iat claim is required/);
  });

  it('bad JWKS documents are GW_SETTINGS errors naming the key', () => {
    for (const [doc, re] of [
      [{}, /JWKS document/],
      [{ keys: [{ kty: 'oct', k: 'c2hvcnQ' }] }, /key 0: an HMAC key needs at least 32 bytes/],
      [{ keys: [{ kty: 'EC', crv: 'secp256k1', x: 'a', y: 'b' }] }, /key 0: unsupported/],
      [{ keys: [{ kty: 'RSA', n: 'AQAB', e: 'AQAB', use: 'enc' }] }, /no signing key/],
    ] as const) {
      expect(() => keysFromJwks(doc, 'jwks.json')).toThrow(re);
    }
  });
});

describe('createAuthenticator with auth.jwt.jwks_file', () => {
  let dir: string;
  let rsa: Pair;
  beforeAll(async () => {
    dir = await tempDir('cxg-jwks-');
    rsa = await pair('k1', 'RS256');
    await writeFile(path.join(dir, 'jwks.json'), JSON.stringify({ keys: [rsa.jwk] }));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('verifies the provider\'s RS256 tokens, honours max_age, and makes up no secret file', async () => {
    const settings = await loadSettings({ argv: [], env: { CXG_AUTH_JWT_JWKS_FILE: path.join(dir, 'jwks.json'), CXG_AUTH_JWT_MAX_AGE: '10m' }, cwd: dir });
    const auth = await createAuthenticator(settings);
    await expect(auth.verify(await sign(rsa))).resolves.toEqual({ workspaceId: 'ws-idp' });
    await expect(auth.verify(await sign(rsa, { iatAgoSec: 3600, exp: '10h' }))).rejects.toMatchObject({ code: 'GW_UNAUTHORIZED' });
    expect(existsSync(path.join(dir, 'data', 'jwt.secret'))).toBe(false);
    await expect(loadJwksFile(path.join(dir, 'missing.json'))).rejects.toMatchObject({ code: 'GW_SETTINGS' });
  });

  it('auth.jwt.algorithms refuses unknown names and none', async () => {
    for (const bad of ['none', 'HS1']) {
      await expect(loadSettings({ argv: [], env: { CXG_AUTH_JWT_ALGORITHMS: bad }, cwd: dir })).rejects.toMatchObject({ code: 'GW_SETTINGS' });
    }
  });
});
