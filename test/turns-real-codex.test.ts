/**
 * Turns without a WebSocket, end to end: the gateway as a real process, the
 * real codex binary behind it, the Responses mock as the model. A bot posts
 * turns to /api/turns; a WebSocket client of the same workspace sees them.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { killLeftovers } from './faults/markers.js';
import { tempDir } from './helpers.js';
import { agentText, httpUrlOf, postTurn, streamTurn, textInput } from './turn-client.js';

const SECRET = 'turns-secret-turns-secret-turns-secret-0000';
const DELTAS = ['Answered', ' without', ' a', ' socket.'];

describe('POST /api/turns (real codex)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  let gw: GatewayProcess | undefined;
  let base: string;
  let token: string;
  /** While set, the model holds every turn before its first output. */
  let holdModel = false;
  const held: Array<() => void> = [];
  const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
  let threadId: string;

  beforeAll(async () => {
    mock = await startResponsesMock({
      deltas: DELTAS,
      beforeOutput: () => (holdModel ? new Promise<void>((resolve) => held.push(resolve)) : Promise.resolve()),
    });
    dir = await tempDir('cxg-turns-');
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl, extra: ['[shutdown]', 'budget = "30s"'] }));
    gw = await startGatewayProcess(config, env);
    base = httpUrlOf(gw.url);
    token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'bots', expiresIn: '10m' });
  }, 60_000);
  afterAll(async () => {
    for (const release of held.splice(0)) release();
    // A drain stops the children; a SIGKILLed gateway would leave them running on their own.
    if (gw !== undefined) {
      const stopped = await Promise.race([gw.stop('SIGTERM').then(() => true), sleep(30_000).then(() => false)]);
      if (!stopped) await gw.stop('SIGKILL');
    }
    const left = await killLeftovers(dir);
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
    expect(left, 'processes left running under the test directory').toEqual([]);
  }, 60_000);

  it('a turn by HTTP returns the completed turn with the model\'s reply; a second one continues the thread', async () => {
    const first = await postTurn(base, token, { workspaceId: 'bots', params: { input: textInput('first question') }, timeoutMs: 60_000 });
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    threadId = first.body.threadId as string;
    expect(threadId).toMatch(/\S/);
    const turn = first.body.turn as { id: string; status: string };
    expect(turn.status).toBe('completed');
    expect(agentText(turn)).toBe(DELTAS.join(''));

    const second = await postTurn(base, token, { workspaceId: 'bots', threadId, params: { input: textInput('second question') }, timeoutMs: 60_000 });
    expect(second.status, JSON.stringify(second.body)).toBe(200);
    expect(second.body.threadId).toBe(threadId);
    expect((second.body.turn as { id: string }).id).not.toBe(turn.id);
    expect(agentText(second.body.turn)).toBe(DELTAS.join(''));
    // The model saw the first exchange in the second request: the same thread.
    expect(JSON.stringify(mock.requests.at(-1))).toContain('first question');
  }, 120_000);

  it('the streaming form delivers the deltas before the completed turn', async () => {
    const reply = await streamTurn(base, token, { workspaceId: 'bots', threadId, params: { input: textInput('stream it') }, timeoutMs: 60_000 });
    expect(reply.status).toBe(200);
    expect(reply.contentType).toContain('text/event-stream');
    const names = reply.events.map((e) => e.event);
    const deltas = reply.events.filter((e) => e.event === 'item/agentMessage/delta').map((e) => (e.data as { delta: string }).delta);
    expect(deltas).toEqual(DELTAS);
    expect(names).toContain('item/started');
    expect(names).toContain('item/completed');
    expect(names.at(-1)).toBe('result');
    const lastDelta = names.lastIndexOf('item/agentMessage/delta');
    expect(lastDelta).toBeLessThan(names.indexOf('turn/completed'));
    expect(names.indexOf('turn/completed')).toBeLessThan(names.indexOf('result'));
    const result = reply.events.at(-1)?.data as { threadId: string; turn: { status: string } };
    expect(result.threadId).toBe(threadId);
    expect(result.turn.status).toBe('completed');
    expect(agentText(result.turn)).toBe(DELTAS.join(''));
  }, 120_000);

  it('a WebSocket client of the workspace lists the thread and reads every HTTP turn', async () => {
    const c = await AppServerClient.connect((gw as GatewayProcess).url, { token });
    try {
      await c.initialize();
      expect((await c.listThreads()).map((th) => th.id)).toContain(threadId);
      const read = await c.request<{ thread: { id: string; turns: Array<{ status: string }> } }>('thread/read', { threadId, includeTurns: true });
      expect(read.thread.id).toBe(threadId);
      expect(read.thread.turns.map((t) => t.status)).toEqual(['completed', 'completed', 'completed']);
    } finally {
      await c.close();
    }
  }, 60_000);

  it('wrong workspace is 403, a malformed body 400, no token 401', async () => {
    const other = await postTurn(base, token, { workspaceId: 'someone-else', params: { input: textInput('x') } });
    expect(other.status).toBe(403);
    expect(other.body).toMatchObject({ error: { code: 'GW_FORBIDDEN' } });
    const malformed = await postTurn(base, token, undefined, { raw: '{"workspaceId": "bots", "params": ' });
    expect(malformed.status).toBe(400);
    expect(malformed.body).toMatchObject({ error: { code: 'GW_BAD_REQUEST' } });
    const anonymous = await postTurn(base, undefined, { workspaceId: 'bots', params: { input: textInput('x') } });
    expect(anonymous.status).toBe(401);
  }, 60_000);

  it('timeoutMs against a model that never answers: brokerTimeout in time, and the child stays usable', async () => {
    holdModel = true;
    const t0 = Date.now();
    const timedOut = await postTurn(base, token, { workspaceId: 'bots', threadId, params: { input: textInput('never answered') }, timeoutMs: 3000 });
    const took = Date.now() - t0;
    holdModel = false;
    for (const release of held.splice(0)) release();
    expect(timedOut.status, JSON.stringify(timedOut.body)).toBe(504);
    expect(timedOut.body).toMatchObject({ threadId, transport: { code: 'brokerTimeout' } });
    expect(String((timedOut.body.transport as { message: string }).message)).toContain('interrupted');
    // The deadline plus the interrupt's grace, with room for a loaded machine; a hang would take minutes.
    expect(took).toBeLessThan(3000 + 5000 + 10_000);

    const after = await postTurn(base, token, { workspaceId: 'bots', threadId, params: { input: textInput('after the timeout') }, timeoutMs: 60_000 });
    expect(after.status, JSON.stringify(after.body)).toBe(200);
    expect((after.body.turn as { status: string }).status).toBe('completed');
    expect(agentText(after.body.turn)).toBe(DELTAS.join(''));
  }, 120_000);

  // codex resumes a thread through the absolute paths it stored in CODEX_HOME,
  // so this needs the home at the same path after the restart (invariant 3).
  it('after a gateway restart the thread continues by HTTP', async () => {
    const exit = await (gw as GatewayProcess).stop('SIGTERM');
    expect(exit.code).toBe(0);
    gw = await startGatewayProcess(config, env);
    base = httpUrlOf(gw.url);
    const again = await postTurn(base, token, { workspaceId: 'bots', threadId, params: { input: textInput('after the restart') }, timeoutMs: 60_000 });
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    expect(again.body.threadId).toBe(threadId);
    expect((again.body.turn as { status: string }).status).toBe('completed');
    expect(agentText(again.body.turn)).toBe(DELTAS.join(''));
  }, 120_000);
});
