/**
 * A stop that lands while a turn is running (real codex, the gateway as a
 * process): a drain (gateway SIGTERM), the idle reaper (a client attached
 * but silent past `reaper.hard_idle_after`) and `reaper.max_age`. The model holds
 * its answer, so the turn is in flight when the stop comes. What the client
 * receives is a close with a stated code; the thread, with the interrupted
 * turn's prompt, is stored; after the restart it resumes and a new turn
 * completes.
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
import { tempDir, waitFor } from './helpers.js';

const SECRET = 'inflight-secret-inflight-secret-inflight';

interface Turn {
  status: string;
  items: Array<{ type: string; text?: string; content?: Array<{ type: string; text?: string }> }>;
}

describe('a stop during an in-flight turn (real codex)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let gw: GatewayProcess | undefined;
  /** Requests to the model; the ones named in `hold` wait until released. */
  let requests = 0;
  const hold = new Set<number>();
  let release: () => void = () => {};
  let held = new Promise<void>((r) => (release = r));
  const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };

  beforeAll(async () => {
    mock = await startResponsesMock({
      deltas: ['Answered', ' in', ' full.'],
      beforeOutput: () => (hold.has(++requests) ? held : Promise.resolve()),
    });
    dir = await tempDir('cxg-inflight-');
  });
  afterAll(async () => {
    release();
    await gw?.stop('SIGKILL');
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const config = (name: string, extra: string[]): Promise<string> =>
    writeConfig(path.join(dir, `${name}.toml`), realCodexToml({ dir: path.join(dir, name), secret: SECRET, mockBaseUrl: mock.baseUrl, extra: ['[spawn]', 'stop_grace = "3s"', ...extra] }));

  /** A thread with one finished turn, then a second turn left waiting for the model. */
  const turnInFlight = async (g: GatewayProcess, token: string): Promise<{ c: AppServerClient; threadId: string }> => {
    const c = await AppServerClient.connect(g.url, { token });
    await c.initialize();
    const threadId = await c.startThread();
    expect((await c.runTurn(threadId, 'first, answered', 60_000)).status).toBe('completed');
    hold.add(requests + 1);
    held = new Promise<void>((r) => (release = r));
    const before = requests;
    void c.request('turn/start', { threadId, input: [{ type: 'text', text: 'second, cut short', text_elements: [] }] }).catch(() => undefined);
    await waitFor(() => requests > before, 30_000, 'the second turn to reach the model');
    return { c, threadId };
  };

  /** After the stop: the thread resumes, holds both prompts, and takes a new turn. */
  const goesOn = async (g: GatewayProcess, token: string, threadId: string): Promise<Turn[]> => {
    const c = await AppServerClient.connect(g.url, { token });
    await c.initialize();
    await c.request('thread/resume', { threadId });
    const next = await c.runTurn(threadId, 'third, after the stop', 60_000);
    expect(next.status).toBe('completed');
    expect(next.text).toBe('Answered in full.');
    const read = await c.request<{ thread: { turns: Turn[] } }>('thread/read', { threadId, includeTurns: true });
    await c.close();
    const turns = read.thread.turns;
    const prompts = turns.map((t) => JSON.stringify(t.items.filter((i) => i.type === 'userMessage')));
    expect(turns[0]?.status).toBe('completed');
    expect(prompts.some((p) => p.includes('second, cut short')), 'the interrupted prompt is in the stored thread').toBe(true);
    expect(turns.at(-1)?.status).toBe('completed');
    return turns;
  };

  it('a drain (gateway SIGTERM) mid-turn: the client gets 1001, the home is stored; after the restart the thread resumes and a new turn completes', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'inflight-drain', expiresIn: '30m' });
    const cfg = await config('drain', []);
    gw = await startGatewayProcess(cfg, env, 30_000);
    const { c, threadId } = await turnInFlight(gw, token);
    const closed = c.whenClosed();
    const exit = await gw.stop('SIGTERM');
    expect(exit.code).toBe(0);
    expect((await closed).code).toBe(1001);
    expect(gw.logs.find((l) => l.msg === 'gateway stopped')).toMatchObject({ saved: 1, unsaved: 0 });
    release();

    gw = await startGatewayProcess(cfg, env, 30_000);
    const turns = await goesOn(gw, token, threadId);
    expect(turns.length).toBeGreaterThanOrEqual(3);
    expect((await gw.stop('SIGTERM')).code).toBe(0);
  }, 180_000);

  it('the reaper mid-turn, a client attached and nothing said for longer than reaper.hard_idle_after: the client gets 1001, the home is stored; a reconnect resumes the thread', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'inflight-idle', expiresIn: '30m' });
    const cfg = await config('idle', ['[reaper]', 'idle_after = "4s"', 'hard_idle_after = "8s"', 'interval = "1s"']);
    gw = await startGatewayProcess(cfg, env, 30_000);
    const { c, threadId } = await turnInFlight(gw, token);
    const g = gw;
    // A turn whose model is silent moves no frame: past the hard idle limit the child is stopped, turn or not.
    const close = await c.whenClosed();
    expect(close.code).toBe(1001);
    await g.waitForLog((l) => l.msg === 'codex app-server stopped' && l.workspaceId === 'inflight-idle' && l.reason === 'idle', 30_000);
    release();
    await goesOn(g, token, threadId);
    expect((await g.stop('SIGTERM')).code).toBe(0);
  }, 180_000);

  it('reaper.max_age mid-turn: the client is closed with a stated code, the home is stored; a reconnect resumes the thread and a new turn completes', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'inflight-maxage', expiresIn: '30m' });
    const cfg = await config('maxage', ['[reaper]', 'max_age = "20s"', 'interval = "1s"']);
    gw = await startGatewayProcess(cfg, env, 30_000);
    const { c, threadId } = await turnInFlight(gw, token);
    const g = gw;
    const close = await c.whenClosed();
    // An age limit is a planned stop: the client is told to come back (1001, going away).
    expect(close.code).toBe(1001);
    await g.waitForLog((l) => l.msg === 'codex app-server stopped' && l.workspaceId === 'inflight-maxage', 30_000);
    release();
    await goesOn(g, token, threadId);
    expect((await g.stop('SIGTERM')).code).toBe(0);
  }, 180_000);
});
