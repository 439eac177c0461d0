/**
 * What clients see of an error: a stable code and a short fixed message.
 * Paths, store URLs, codex's stderr and a builder's error text stay in the
 * log, next to the connection id.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import type { SpawnConfig } from 'codex-app-gateway';
import { ERROR_CODES, GatewayError } from '../src/shared/errors.js';
import type { ErrorCode } from '../src/shared/errors.js';
import { publicError, publicReason } from '../src/shared/public-error.js';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { closeOf, openWs, refusedUpgrade, startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { tempDir } from './helpers.js';

const INTERNALS = [/\/[a-z0-9._-]+\/[a-z0-9._-]+/i, /s3:\/\//, /fake-codex/, /FAKE_CODEX/, /secret/i];

function expectNoInternals(text: string): void {
  for (const re of INTERNALS) expect(text).not.toMatch(re);
}

describe('publicError', () => {
  const codes = Object.keys(ERROR_CODES) as ErrorCode[];
  it.each(codes)('%s › the code and its fixed message, whatever the error says', (code) => {
    const err = new GatewayError(code, `upload s3://bucket/prefix/ws.tar.gz from /var/lib/gateway/homes/ws failed: secret stderr`, { cause: new Error('/etc/passwd') });
    const pub = publicError(err);
    expect(pub.code).toBe(code);
    expectNoInternals(pub.message);
    expect(Buffer.byteLength(publicReason(err))).toBeLessThanOrEqual(123);
  });

  it('anything that is not a GatewayError is GW_INTERNAL', () => {
    expect(publicError(new Error('ENOENT: /srv/x'))).toEqual({ code: 'GW_INTERNAL', message: ERROR_CODES.GW_INTERNAL });
  });

  it('a crash loop says when to retry, from its number alone', () => {
    const err = new GatewayError('GW_CRASH_LOOP', 'workspace /x failed', { details: { retryAfterMs: 4200 } });
    expect(publicReason(err)).toBe(`GW_CRASH_LOOP: ${ERROR_CODES.GW_CRASH_LOOP} in 5 s`);
  });
});

describe('close reasons and upgrade refusals (fake codex, in process)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({}, {
      configBuilder: (_tok, { workspaceId }): SpawnConfig => {
        throw new Error(`cannot read /srv/secrets/${workspaceId}.json from s3://config-bucket/${workspaceId}`);
      },
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a failing config builder closes the client with the code and fixed message only', async () => {
    const ws = await openWs(t.url, await t.token('ws-builder-fails'));
    const c = await closeOf(ws);
    expect(c.code).toBe(1011);
    expect(c.reason).toBe(`GW_BUILDER_FAILED: ${ERROR_CODES.GW_BUILDER_FAILED}`);
  });

  it('a refused upgrade answers the code and fixed message; why stays in the log', async () => {
    const expired = await signWorkspaceToken({ secret: 'another-secret-another-secret-another-secret', workspaceId: 'ws-x' });
    const r = await refusedUpgrade(t.url, { authorization: `Bearer ${expired}` });
    expect(r.status).toBe(401);
    expect(JSON.parse(r.body)).toEqual({ error: { code: 'GW_UNAUTHORIZED', message: ERROR_CODES.GW_UNAUTHORIZED } });
  });
});

describe('close reasons of a gateway process (fake codex)', () => {
  const SECRET = 'public-errors-secret-public-errors-secret';
  let dir: string;
  let gw: GatewayProcess | undefined;
  beforeAll(async () => {
    dir = await tempDir('cxg-public-errors-');
    const config = await writeConfig(path.join(dir, 'gateway.toml'), [
      'shards = 1',
      '[data]',
      `dir = ${JSON.stringify(dir)}`,
      '[listen]',
      'port = 0',
      '[auth.jwt]',
      `secret = ${JSON.stringify(SECRET)}`,
      '[codex]',
      `bin = ${JSON.stringify(fakeCodexBin())}`,
      '[spawn]',
      'extra_env = ["FAKE_CODEX_MODE=exit-before-banner"]',
      'ready_timeout = "20s"',
      '[log]',
      'level = "info"',
      '',
    ].join('\n'));
    gw = await startGatewayProcess(config);
  });
  afterAll(async () => {
    await gw?.stop('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('a child that exits before it is ready: the client gets the code; codex\'s stderr and the home path go to the log with the connection id', async () => {
    const p = gw as GatewayProcess;
    const ws = await openWs(p.url, await signWorkspaceToken({ secret: SECRET, workspaceId: 'ws-exits' }));
    const c = await closeOf(ws);
    expect(c.code).toBe(1011);
    expect(c.reason).toBe(`GW_SPAWN_EXITED: ${ERROR_CODES.GW_SPAWN_EXITED}`);
    const line = await p.waitForLog((l) => l.msg === 'client closed: workspace did not start' && l.workspaceId === 'ws-exits');
    expect(typeof line.connId).toBe('number');
    expect(String(line.err)).toContain('GW_SPAWN_EXITED');
    expect(String(line.err)).toContain('failing on purpose');
  });
});
