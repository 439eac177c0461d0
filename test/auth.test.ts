import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignJWT, UnsecuredJWT } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GatewayError } from '../src/shared/errors.js';
import type { ErrorCode } from '../src/shared/errors.js';
import { bearerToken, createAuthenticator, JwtAuthenticator, MAX_TOKEN_LENGTH, RemoteAuthenticator, signWorkspaceToken } from '../src/main/auth/front-door.js';
import type { Authenticator } from '../src/main/auth/front-door.js';
import { ensureJwtSecret, loadSettings } from '../src/main/settings/load.js';
import { testTempRoot } from './temp-root.js';

const SECRET = 'an-hs256-key-of-at-least-32-characters';
const key = new TextEncoder().encode(SECRET);

async function failure(p: Promise<unknown>, code: ErrorCode): Promise<GatewayError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(GatewayError);
  expect((err as GatewayError).code).toBe(code);
  return err as GatewayError;
}

/** A token with any claims and header, for the cases signWorkspaceToken would refuse to make. */
function jwt(claims: Record<string, unknown>, o: { alg?: string; exp?: number | string | null; secret?: Uint8Array } = {}): Promise<string> {
  const t = new SignJWT(claims).setProtectedHeader({ alg: o.alg ?? 'HS256' }).setIssuedAt();
  if (o.exp !== null) t.setExpirationTime(o.exp ?? '1h');
  return t.sign(o.secret ?? key);
}

describe('bearerToken', () => {
  it.each([
    ['Bearer abc.def.ghi', 'abc.def.ghi'],
    ['bearer abc', 'abc'],
    ['BEARER   abc  ', 'abc'],
    ['  Bearer\tabc', 'abc'],
    ['Bearer', undefined],
    ['Bearer ', undefined],
    ['Bearer a b', undefined],
    ['Basic abc', undefined],
    ['Bearerabc', undefined],
    ['', undefined],
    [undefined, undefined],
  ])('%j → %j', (header, token) => {
    expect(bearerToken(header)).toBe(token);
  });
});

describe('JwtAuthenticator', () => {
  const auth = new JwtAuthenticator({ secret: SECRET });

  it('a valid token gives its workspace', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'ws-1' });
    await expect(auth.verify(token)).resolves.toEqual({ workspaceId: 'ws-1' });
  });

  it('checks issuer and audience when configured, and reads the configured claim', async () => {
    const strict = new JwtAuthenticator({ secret: SECRET, issuer: 'gw', audience: 'codex', workspaceClaim: 'ws' });
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'ws-2', issuer: 'gw', audience: 'codex', claim: 'ws', expiresIn: 60 });
    await expect(strict.verify(token)).resolves.toEqual({ workspaceId: 'ws-2' });
  });

  it('tolerates a little clock skew', async () => {
    const justExpired = await jwt({ workspace_id: 'ws' }, { exp: Math.floor(Date.now() / 1000) - 2 });
    await expect(auth.verify(justExpired)).resolves.toEqual({ workspaceId: 'ws' });
    await failure(new JwtAuthenticator({ secret: SECRET, clockToleranceSec: 0 }).verify(justExpired), 'GW_UNAUTHORIZED');
  });

  const now = () => Math.floor(Date.now() / 1000);
  const cases: Array<[string, () => Promise<string>, Authenticator, RegExp]> = [
    ['expired', () => signWorkspaceToken({ secret: SECRET, workspaceId: 'ws', expiresIn: -60 }), auth, /token has expired/],
    ['signed with another secret', () => signWorkspaceToken({ secret: 'another-key-that-is-32-characters-long', workspaceId: 'ws' }), auth, /signature is invalid/],
    ['wrong issuer', () => signWorkspaceToken({ secret: SECRET, workspaceId: 'ws', issuer: 'evil' }), new JwtAuthenticator({ secret: SECRET, issuer: 'gw' }), /iss claim value is not allowed/],
    ['no issuer when one is required', () => signWorkspaceToken({ secret: SECRET, workspaceId: 'ws' }), new JwtAuthenticator({ secret: SECRET, issuer: 'gw' }), /iss claim is required/],
    ['wrong audience', () => signWorkspaceToken({ secret: SECRET, workspaceId: 'ws', audience: 'other' }), new JwtAuthenticator({ secret: SECRET, audience: 'codex' }), /aud claim value is not allowed/],
    ['no workspace claim', () => jwt({ sub: 'ws' }), auth, /no "workspace_id" claim/],
    ['workspace claim "../x"', () => jwt({ workspace_id: '../x' }), auth, /workspace claim "workspace_id" is invalid/],
    ['workspace claim ".."', () => jwt({ workspace_id: '..' }), auth, /workspace claim "workspace_id" is invalid/],
    ['workspace claim not a string', () => jwt({ workspace_id: 42 }), auth, /workspace claim "workspace_id" is invalid/],
    ['alg none', () => Promise.resolve(new UnsecuredJWT({ workspace_id: 'ws' }).setExpirationTime('1h').encode()), auth, /invalid bearer token/],
    ['HS512 with the right secret', () => jwt({ workspace_id: 'ws' }, { alg: 'HS512' }), auth, /algorithm is not allowed/],
    ['no exp', () => jwt({ workspace_id: 'ws' }, { exp: null }), auth, /exp claim is required/],
    ['not yet valid (nbf)', () => new SignJWT({ workspace_id: 'ws' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('2h').setNotBefore(now() + 3600).sign(key), auth, /will be active/],
    ['garbage', () => Promise.resolve('not-a-jwt'), auth, /invalid bearer token/],
    ['empty', () => Promise.resolve(''), auth, /empty bearer token/],
    ['too long', () => Promise.resolve('a'.repeat(MAX_TOKEN_LENGTH + 1)), auth, /longer than/],
  ];

  it.each(cases)('%s → GW_UNAUTHORIZED', async (_name, make, verifier, message) => {
    const err = await failure(verifier.verify(await make()), 'GW_UNAUTHORIZED');
    expect(err.message).toMatch(message);
  });

  it('a clock tolerance that is not a finite number ≥ 0 is refused (NaN would pass every expiry check)', () => {
    for (const bad of [Number.NaN, -1, Number.POSITIVE_INFINITY]) {
      expect(() => new JwtAuthenticator({ secret: SECRET, clockToleranceSec: bad })).toThrow(/clockToleranceSec/);
    }
  });

  it('verifyNow answers without waiting, with the same verdicts as verify', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'ws-now' });
    expect(auth.verifyNow(token)).toEqual({ workspaceId: 'ws-now' });
    for (const [name, make, verifier, message] of cases) {
      const bad = await make();
      let thrown: unknown;
      try {
        (verifier as JwtAuthenticator).verifyNow(bad);
      } catch (err) {
        thrown = err;
      }
      expect(thrown, name).toBeInstanceOf(GatewayError);
      expect((thrown as GatewayError).code, name).toBe('GW_UNAUTHORIZED');
      expect((thrown as GatewayError).message, name).toMatch(message);
    }
  });

  it('an audience list containing ours is accepted; a tampered payload, a critical header, an array payload are not', async () => {
    const strict = new JwtAuthenticator({ secret: SECRET, audience: 'codex' });
    const listed = await new SignJWT({ workspace_id: 'ws-aud' }).setProtectedHeader({ alg: 'HS256' }).setAudience(['other', 'codex']).setExpirationTime('1h').sign(key);
    expect(strict.verifyNow(listed)).toEqual({ workspaceId: 'ws-aud' });

    const [h, , sig] = (await signWorkspaceToken({ secret: SECRET, workspaceId: 'ws-a' })).split('.');
    const forged = Buffer.from(JSON.stringify({ workspace_id: 'ws-b', exp: Math.floor(Date.now() / 1000) + 3600 })).toString('base64url');
    expect(() => auth.verifyNow(`${h}.${forged}.${sig}`)).toThrow(/signature is invalid/);

    const crit = await new SignJWT({ workspace_id: 'ws' }).setProtectedHeader({ alg: 'HS256', crit: ['b64'], b64: true }).setExpirationTime('1h').sign(key);
    expect(() => auth.verifyNow(crit)).toThrow(/Critical extension/);

    const enc = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
    const head = enc({ alg: 'HS256' });
    const body = enc([{ workspace_id: 'ws' }]);
    const mac = createHmac('sha256', key).update(`${head}.${body}`).digest('base64url');
    expect(() => auth.verifyNow(`${head}.${body}.${mac}`)).toThrow(/payload must be an object/);
    expect(() => auth.verifyNow(`${head}.${body}`)).toThrow(/token is malformed/);
  });

  it('signWorkspaceToken refuses a bad workspace id', async () => {
    await failure(signWorkspaceToken({ secret: SECRET, workspaceId: '../x' }), 'GW_BAD_WORKSPACE_ID');
  });
});

// ---- remote verifier -------------------------------------------------------

interface Verifier {
  url: string;
  hits: Map<string, number>;
  bodies: unknown[];
  server: Server;
}

/** A real verifier on loopback; the token decides the answer. */
async function startVerifier(): Promise<Verifier> {
  const hits = new Map<string, number>();
  const bodies: unknown[] = [];
  const answer = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let text = '';
    for await (const chunk of req) text += String(chunk);
    const body = JSON.parse(text) as { token: string };
    bodies.push(body);
    hits.set(body.token, (hits.get(body.token) ?? 0) + 1);
    const json = (status: number, value: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
    const [kind, arg] = body.token.split(':');
    switch (kind) {
      case 'good':
        return void json(200, { workspace_id: arg ?? 'ws-1' });
      case 'camel':
        return void json(200, { workspaceId: 'ws-camel' });
      case 'slow':
        await sleep(Number(arg));
        return void json(200, { workspace_id: 'ws-slow' });
      case 'deny':
        return void json(401, { error: 'no' });
      case 'forbid':
        return void json(403, { error: 'no' });
      case 'boom':
        return void json(500, { error: 'down' });
      case 'notjson':
        return void res.writeHead(200).end('<html>secret page</html>');
      case 'badws':
        return void json(200, { workspace_id: '../x' });
      case 'redirect':
        return void res.writeHead(307, { location: 'http://127.0.0.1:9/steal' }).end();
      default:
        return void json(400, {});
    }
  };
  const server = createServer((req, res) => {
    answer(req, res).catch(() => res.writeHead(500).end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/verify`, hits, bodies, server };
}

async function stopServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

describe('RemoteAuthenticator', () => {
  let v: Verifier;

  beforeEach(async () => {
    v = await startVerifier();
  });

  afterEach(async () => {
    await stopServer(v.server);
  });

  it('posts {"token"} and a 200 {"workspace_id"} is success; workspaceId is accepted too', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 0 });
    await expect(auth.verify('good:ws-7')).resolves.toEqual({ workspaceId: 'ws-7' });
    await expect(auth.verify('camel')).resolves.toEqual({ workspaceId: 'ws-camel' });
    expect(v.bodies[0]).toEqual({ token: 'good:ws-7' });
  });

  it('a positive answer is cached: two verifications, one request', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000 });
    await auth.verify('good');
    await expect(auth.verify('good')).resolves.toEqual({ workspaceId: 'ws-1' });
    expect(v.hits.get('good')).toBe(1);
  });

  it('the cache keys on a SHA-256 of the token, never the token', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000 });
    await auth.verify('good:ws-secret');
    const keys = [...(auth as unknown as { cache: Map<string, unknown> }).cache.keys()];
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a cached answer expires after cacheMs', async () => {
    let now = 1_000_000;
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 1000, now: () => now });
    await auth.verify('good');
    now += 999;
    await auth.verify('good');
    expect(v.hits.get('good')).toBe(1);
    now += 1;
    await auth.verify('good');
    expect(v.hits.get('good')).toBe(2);
  });

  it('verifyNow answers from the cache only: nothing before the first answer, the workspace after, nothing once expired', async () => {
    let now = 1_000_000;
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 1000, now: () => now });
    expect(auth.verifyNow('good:ws-now')).toBeUndefined();
    await auth.verify('good:ws-now');
    expect(auth.verifyNow('good:ws-now')).toEqual({ workspaceId: 'ws-now' });
    now += 1000;
    expect(auth.verifyNow('good:ws-now')).toBeUndefined();
    expect(() => auth.verifyNow('')).toThrow(/empty bearer token/);
    expect(v.hits.get('good:ws-now')).toBe(1);
  });

  it('the cache is bounded: the least recently used token goes first', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000, maxEntries: 2 });
    await auth.verify('good:a');
    await auth.verify('good:b');
    await auth.verify('good:a'); // a is now the most recent
    await auth.verify('good:c'); // evicts b
    await auth.verify('good:a');
    await auth.verify('good:b');
    expect([v.hits.get('good:a'), v.hits.get('good:b'), v.hits.get('good:c')]).toEqual([1, 2, 1]);
  });

  it('401 and 403 are GW_UNAUTHORIZED and cached for negativeCacheMs; verifyNow answers a cached refusal', async () => {
    let now = 1_000_000;
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000, negativeCacheMs: 5000, now: () => now });
    await failure(auth.verify('deny'), 'GW_UNAUTHORIZED');
    await failure(auth.verify('deny'), 'GW_UNAUTHORIZED');
    expect(v.hits.get('deny')).toBe(1);
    expect(() => auth.verifyNow('deny')).toThrow(/refused/);
    now += 5001;
    expect(auth.verifyNow('deny')).toBeUndefined();
    await failure(auth.verify('deny'), 'GW_UNAUTHORIZED');
    expect(v.hits.get('deny')).toBe(2);
    await failure(auth.verify('forbid'), 'GW_UNAUTHORIZED');
    // With negativeCacheMs 0, every refusal asks again.
    const uncached = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000, negativeCacheMs: 0 });
    await failure(uncached.verify('forbid'), 'GW_UNAUTHORIZED');
    await failure(uncached.verify('forbid'), 'GW_UNAUTHORIZED');
    expect(v.hits.get('forbid')).toBe(3);
  });

  it('an unknown answer (500) is never cached', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000, negativeCacheMs: 60_000 });
    await failure(auth.verify('boom'), 'GW_AUTH_UNAVAILABLE');
    await failure(auth.verify('boom'), 'GW_AUTH_UNAVAILABLE');
    expect(v.hits.get('boom')).toBe(2);
  });

  it('at most maxConcurrent requests are in flight; the rest wait their turn, within timeoutMs', async () => {
    let inFlight = 0;
    let most = 0;
    const counting: typeof fetch = async (input, init) => {
      inFlight++;
      most = Math.max(most, inFlight);
      try {
        return await fetch(input, init);
      } finally {
        inFlight--;
      }
    };
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 0, maxConcurrent: 3, fetch: counting });
    const results = await Promise.all(Array.from({ length: 12 }, (_, i) => auth.verify(`slow:${50 + i}`)));
    expect(results).toHaveLength(12);
    expect(most).toBe(3);
    // A queue that cannot drain within timeoutMs answers GW_AUTH_UNAVAILABLE, not a hang.
    // One slot, 1 s each: the first holds it 600 ms, the second 600 ms more, the third gives up waiting at 1 s.
    const busy = new RemoteAuthenticator({ url: v.url, cacheMs: 0, maxConcurrent: 1, timeoutMs: 1000 });
    const [first, , third] = await Promise.allSettled([busy.verify('slow:600'), busy.verify('slow:601'), busy.verify('slow:602')]);
    expect(first.status).toBe('fulfilled');
    expect(third.status === 'rejected' && (third.reason as GatewayError).message).toMatch(/busy/);
  });

  it('a 200 naming an invalid workspace is GW_UNAUTHORIZED', async () => {
    const err = await failure(new RemoteAuthenticator({ url: v.url, cacheMs: 0 }).verify('badws'), 'GW_UNAUTHORIZED');
    expect(err.message).toContain('workspace claim "workspace_id" is invalid');
  });

  it('500, a non-JSON body and a redirect are GW_AUTH_UNAVAILABLE, and the body is not passed on', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000 });
    expect((await failure(auth.verify('boom'), 'GW_AUTH_UNAVAILABLE')).message).toBe('auth verifier answered HTTP 500');
    expect((await failure(auth.verify('notjson'), 'GW_AUTH_UNAVAILABLE')).message).not.toContain('secret page');
    await failure(auth.verify('redirect'), 'GW_AUTH_UNAVAILABLE');
  });

  it('connection refused is GW_AUTH_UNAVAILABLE', async () => {
    const closed = await startVerifier();
    await stopServer(closed.server);
    const err = await failure(new RemoteAuthenticator({ url: closed.url, cacheMs: 0 }).verify('good'), 'GW_AUTH_UNAVAILABLE');
    expect(err.message).toContain('ECONNREFUSED');
    expect(err.message).not.toContain(closed.url);
  });

  it('a verifier slower than timeoutMs is GW_AUTH_UNAVAILABLE', async () => {
    const err = await failure(new RemoteAuthenticator({ url: v.url, cacheMs: 0, timeoutMs: 100 }).verify('slow:2000'), 'GW_AUTH_UNAVAILABLE');
    expect(err.message).toBe('auth verifier did not answer within 100ms');
  });

  it('concurrent verifications of one token share one request', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 0 });
    const results = await Promise.all(Array.from({ length: 10 }, () => auth.verify('slow:100')));
    expect(results).toEqual(Array.from({ length: 10 }, () => ({ workspaceId: 'ws-slow' })));
    expect(v.hits.get('slow:100')).toBe(1);
    // Once settled, the next verification asks again (cacheMs is 0).
    await auth.verify('slow:100');
    expect(v.hits.get('slow:100')).toBe(2);
  });

  it('concurrent failures are shared too', async () => {
    const auth = new RemoteAuthenticator({ url: v.url, cacheMs: 60_000 });
    const errors = await Promise.all([auth.verify('deny'), auth.verify('deny')].map((p) => failure(p, 'GW_UNAUTHORIZED')));
    expect(errors).toHaveLength(2);
    expect(v.hits.get('deny')).toBe(1);
  });
});

describe('createAuthenticator', () => {
  let dir: string;

  beforeEach(async () => {
    const base = testTempRoot();
    await mkdir(base, { recursive: true });
    dir = await mkdtemp(path.join(base, 'auth-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('without a secret or verify_url: HS256 with the generated key file, honouring the claim setting', async () => {
    const settings = await loadSettings({ argv: [], env: { CXG_AUTH_JWT_WORKSPACE_CLAIM: 'ws', CXG_AUTH_JWT_ISSUER: 'gw' }, cwd: dir });
    const auth = await createAuthenticator(settings);
    expect(auth).toBeInstanceOf(JwtAuthenticator);
    const token = await signWorkspaceToken({ secret: await ensureJwtSecret(settings), workspaceId: 'ws-9', claim: 'ws', issuer: 'gw' });
    await expect(auth.verify(token)).resolves.toEqual({ workspaceId: 'ws-9' });
    await failure(auth.verify(await signWorkspaceToken({ secret: await ensureJwtSecret(settings), workspaceId: 'ws-9', claim: 'ws' })), 'GW_UNAUTHORIZED');
  });

  it('with auth.verify_url: the remote verifier', async () => {
    const v = await startVerifier();
    try {
      const settings = await loadSettings({ argv: [], env: { CXG_AUTH_VERIFY_URL: v.url }, cwd: dir });
      const auth = await createAuthenticator(settings);
      expect(auth).toBeInstanceOf(RemoteAuthenticator);
      await expect(auth.verify('good:ws-r')).resolves.toEqual({ workspaceId: 'ws-r' });
    } finally {
      await stopServer(v.server);
    }
  });
});
