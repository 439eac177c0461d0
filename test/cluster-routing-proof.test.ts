/**
 * The proof a forwarded connection carries (forward-token.ts), the secret it
 * is made with (secret.ts) and the hop's URL: table-driven, no processes.
 */
import { createHmac } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { forwardUrl } from '../src/main/cluster/forward-link.js';
import { FRESH_MS, ForwardVerifier, signForward } from '../src/main/cluster/forward-token.js';
import type { ForwardClaim } from '../src/main/cluster/forward-token.js';
import { clusterSecret } from '../src/main/cluster/secret.js';
import { tempDir } from './helpers.js';

const SECRET = Buffer.from('proof-secret-proof-secret-proof-secret-01');
const NOW = 1_800_000_000_000;

function claim(over: Partial<ForwardClaim> = {}): ForwardClaim {
  return { from: 'a', to: 'b', workspaceId: 'ws-1', client: '10.0.0.9', conn: 7, at: NOW, ...over };
}

/** A proof whose payload is `payload`, signed correctly: what a peer with the secret but a bug would send. */
function signedRaw(payload: unknown): string {
  return signedText(JSON.stringify(payload));
}

/** A proof whose payload is `text`, signed correctly. */
function signedText(text: string): string {
  const p = Buffer.from(text).toString('base64url');
  return `${p}.${createHmac('sha256', SECRET).update(p).digest('base64url')}`;
}

describe('forward proof', () => {
  it('a good proof gives its claim, once', () => {
    const v = new ForwardVerifier(SECRET, 'b', () => NOW);
    const proof = signForward(SECRET, claim());
    expect(v.verify(proof)).toEqual(claim());
    expect(() => v.verify(proof)).toThrow(/already used/);
  });

  it.each([
    ['no dot', () => 'abc', /malformed/],
    ['another secret', () => signForward(Buffer.from('x'.repeat(40)), claim()), /bad signature/],
    ['a payload changed after signing', () => `${Buffer.from(JSON.stringify({ v: 1, ...claim({ workspaceId: 'ws-2' }) })).toString('base64url')}.${signForward(SECRET, claim()).split('.')[1] as string}`, /bad signature/],
    ['a truncated mac', () => signForward(SECRET, claim()).slice(0, -4), /bad signature/],
    ['another node', () => signForward(SECRET, claim({ to: 'c' })), /meant for node c/],
    ['too old', () => signForward(SECRET, claim({ at: NOW - FRESH_MS - 1 })), /made 120 s from/],
    ['from the future', () => signForward(SECRET, claim({ at: NOW + FRESH_MS + 1000 })), /s from this node's clock/],
    ['a bad workspace id', () => signForward(SECRET, claim({ workspaceId: '../x' })), /bad workspace id/],
    ['an unknown version', () => signedRaw({ v: 2, ...claim() }), /unknown version/],
    ['not JSON', () => signedText('not json'), /not JSON/],
  ])('refuses %s (GW_UNAUTHORIZED)', (_what, make, message) => {
    const v = new ForwardVerifier(SECRET, 'b', () => NOW);
    let err: (Error & { code?: string }) | undefined;
    try {
      v.verify(make());
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err?.code).toBe('GW_UNAUTHORIZED');
    expect(err?.message).toMatch(message);
    expect(err?.message).not.toContain(SECRET.toString());
  });

  it('forgets used proofs once they could no longer be fresh', () => {
    let now = NOW;
    const v = new ForwardVerifier(SECRET, 'b', () => now);
    v.verify(signForward(SECRET, claim({ conn: 1 })));
    now += FRESH_MS + 1;
    v.verify(signForward(SECRET, claim({ conn: 2, at: now })));
    expect((v as unknown as { seen: Map<string, number> }).seen.size).toBe(1);
  });
});

describe('cluster.secret', () => {
  it.each([
    ['nothing, no advertised URL', {}, undefined],
    ['a secret', { secret: 's'.repeat(32) }, 's'.repeat(32)],
  ])('%s', async (_what, c, want) => {
    expect((await clusterSecret(c))?.toString()).toBe(want);
  });

  it.each([
    ['an advertised URL and no secret', { advertiseUrl: 'ws://10.0.0.5:8080' }, /cluster\.advertise_url is set/],
    ['a short secret', { secret: 'short' }, /at least 32 characters, got 5/],
    ['both a secret and a file', { secret: 's'.repeat(32), secretFile: '/nonexistent' }, /not both/],
    ['a file that cannot be read', { secretFile: '/nonexistent/cluster.secret' }, /cannot read it \(ENOENT\)/],
  ])('refuses %s (GW_CLUSTER_SECRET)', async (_what, c, message) => {
    await expect(clusterSecret(c)).rejects.toMatchObject({ code: 'GW_CLUSTER_SECRET', message: expect.stringMatching(message) as unknown });
  });

  it('reads a file without its surrounding whitespace', async () => {
    const dir = await tempDir('cxg-secret-');
    try {
      const file = path.join(dir, 'cluster.secret');
      await writeFile(file, `${'f'.repeat(40)}\n`);
      expect((await clusterSecret({ secretFile: file, advertiseUrl: 'ws://x:1' }))?.toString()).toBe('f'.repeat(40));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('the hop\'s URL', () => {
  it.each([
    ['ws://10.0.0.5:8080', 'ws://10.0.0.5:8080/cluster/forward'],
    ['wss://gw-1.example:443/', 'wss://gw-1.example/cluster/forward'],
    ['ws://proxy:80/gateways/gw-1/?x=1', 'ws://proxy/gateways/gw-1/cluster/forward'],
  ])('%s → %s', (advertised, want) => {
    expect(forwardUrl(advertised)).toBe(want);
  });
});
