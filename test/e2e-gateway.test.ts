/**
 * End to end: the gateway as a real process, the real codex binary behind
 * it, a client that speaks to it the way codex's remote TUI does (a bearer
 * JWT on `/`). A turn streams through the proxy; SIGTERM saves the
 * workspace; a restarted gateway resumes the thread and a new turn streams.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { processAlive, tempDir } from './helpers.js';

const SECRET = 'e2e-secret-e2e-secret-e2e-secret-e2e-secret';

describe('gateway process end to end (real codex)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  let gw: GatewayProcess | undefined;

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Streamed', ' through', ' the', ' gateway.'] });
    dir = await tempDir('cxg-e2e-gw-');
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl, extra: ['[shutdown]', 'budget = "30s"'] }));
  });
  afterAll(async () => {
    await gw?.stop('SIGKILL');
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('a turn streams through the proxy; SIGTERM saves it; after a restart the thread is listed, resumes and takes a turn', async () => {
    const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
    gw = await startGatewayProcess(config, env);
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'team-alpha', expiresIn: '10m' });

    const c = await AppServerClient.connect(gw.url, { token });
    const init = await c.initialize();
    expect(init.codexHome).toContain(path.join(dir, 'homes', 'team-alpha'));
    const threadId = await c.startThread();
    const turn = await c.runTurn(threadId, 'hello through the gateway');
    expect(turn.status).toBe('completed');
    expect(turn.deltas).toEqual(['Streamed', ' through', ' the', ' gateway.']);
    // The child got the static key under model.env_key, and nothing else of the gateway's.
    expect(mock.log.at(-1)?.authorization).toBe(`Bearer ${TEST_API_KEY}`);
    const started = gw.logs.find((l) => l.msg === 'codex app-server ready');
    const childPid = started?.pid as number;
    expect(processAlive(childPid)).toBe(true);

    const closed = c.whenClosed();
    const exit = await gw.stop('SIGTERM');
    expect(exit.code).toBe(0);
    expect((await closed).code).toBe(1001);
    expect(gw.logs.find((l) => l.msg === 'gateway stopped')).toMatchObject({ saved: 1, unsaved: 0 });
    expect(processAlive(childPid)).toBe(false);

    gw = await startGatewayProcess(config, env);
    const c2 = await AppServerClient.connect(gw.url, { token });
    await c2.initialize();
    const threads = await c2.listThreads();
    expect(threads.map((th) => th.id)).toContain(threadId);
    // Listed is not enough: the thread resumes and a new turn streams.
    await c2.request('thread/resume', { threadId });
    const again = await c2.runTurn(threadId, 'and on after the restart');
    expect(again.status).toBe('completed');
    expect(again.deltas).toEqual(['Streamed', ' through', ' the', ' gateway.']);
    await c2.close();
    expect((await gw.stop('SIGTERM')).code).toBe(0);
  }, 90_000);
});
