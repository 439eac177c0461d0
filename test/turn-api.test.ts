/**
 * POST /api/turns on the fake codex (FAKE_CODEX_APP_SERVER=1): refusals,
 * deadlines, failures, clients that go away, and the approval policies of
 * headless and WebSocket turns.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CODES } from '../src/shared/errors.js';
import { AppServerClient } from './fixtures/app-server-client.js';
import { startTestGateway } from './gateway-helpers.js';
import { quietLogger } from './helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { agentText, postTurn, streamTurn, textInput } from './turn-client.js';

const APP_SERVER = ['FAKE_CODEX_APP_SERVER=1'];
const REJECTION = 'declined by the gateway (approvals policy)';

async function gatewayFor(workspaces: string[], approvals?: { headless: 'accept' | 'decline'; websocket: 'client' | 'accept' | 'decline' }): Promise<TestGateway> {
  const t = await startTestGateway({ turns: { maxBodyBytes: 64 * 1024 } }, approvals === undefined ? {} : { approvals });
  for (const w of workspaces) t.childEnv.set(w, APP_SERVER);
  return t;
}

async function metricsText(t: TestGateway): Promise<string> {
  return (await fetch(`${t.httpUrl}/metrics`)).text();
}

/** The turn of a thread, read over a WebSocket client of the same workspace. */
async function readTurns(t: TestGateway, workspaceId: string, threadId: string): Promise<Array<{ id: string; status: string }>> {
  const c = await AppServerClient.connect(t.url, { token: await t.token(workspaceId) });
  try {
    await c.initialize();
    const r = await c.request<{ thread: { turns: Array<{ id: string; status: string }> } }>('thread/read', { threadId, includeTurns: true });
    return r.thread.turns;
  } finally {
    await c.close();
  }
}

describe('POST /api/turns: refusals', () => {
  let t: TestGateway;
  let token: string;
  beforeAll(async () => {
    t = await gatewayFor(['refusals']);
    token = await t.token('refusals');
  });
  afterAll(async () => t?.close());

  const cases: Array<[string, string, number, string]> = [
    ['an empty body', '', 400, 'GW_BAD_REQUEST'],
    ['not JSON', '{"workspaceId": ', 400, 'GW_BAD_REQUEST'],
    ['not an object', '[1, 2]', 400, 'GW_BAD_REQUEST'],
    ['no workspaceId', JSON.stringify({ params: { input: [] } }), 400, 'GW_BAD_WORKSPACE_ID'],
    ['a bad workspaceId', JSON.stringify({ workspaceId: '../etc', params: { input: [] } }), 400, 'GW_BAD_WORKSPACE_ID'],
    ['no params', JSON.stringify({ workspaceId: 'refusals' }), 400, 'GW_BAD_REQUEST'],
    ['params without input', JSON.stringify({ workspaceId: 'refusals', params: {} }), 400, 'GW_BAD_REQUEST'],
    ['a numeric threadId', JSON.stringify({ workspaceId: 'refusals', threadId: 7, params: { input: [] } }), 400, 'GW_BAD_REQUEST'],
    ['two threadIds that differ', JSON.stringify({ workspaceId: 'refusals', threadId: 'a', params: { threadId: 'b', input: [] } }), 400, 'GW_BAD_REQUEST'],
    ['a zero timeoutMs', JSON.stringify({ workspaceId: 'refusals', params: { input: [] }, timeoutMs: 0 }), 400, 'GW_BAD_REQUEST'],
    ['a timeoutMs above turns.max_timeout', JSON.stringify({ workspaceId: 'refusals', params: { input: [] }, timeoutMs: 2 * 3_600_000 }), 400, 'GW_BAD_REQUEST'],
    ['a string interruptOnDisconnect', JSON.stringify({ workspaceId: 'refusals', params: { input: [] }, interruptOnDisconnect: 'yes' }), 400, 'GW_BAD_REQUEST'],
    ['another workspace than the token\'s', JSON.stringify({ workspaceId: 'someone-else', params: { input: [] } }), 403, 'GW_FORBIDDEN'],
    ['a body above turns.max_body', JSON.stringify({ workspaceId: 'refusals', params: { input: textInput('x'.repeat(70 * 1024)) } }), 413, 'GW_TOO_LARGE'],
  ];
  it.each(cases)('a request with %s is refused', async (_name, raw, status, code) => {
    const r = await postTurn(t.httpUrl, token, undefined, { raw });
    expect(r.status).toBe(status);
    expect(r.body).toMatchObject({ error: { code } });
  });

  it('no token is 401, a bad token 401', async () => {
    const body = { workspaceId: 'refusals', params: { input: textInput('x') } };
    expect((await postTurn(t.httpUrl, undefined, body)).status).toBe(401);
    const bad = await postTurn(t.httpUrl, 'not-a-jwt', body);
    expect(bad.status).toBe(401);
    expect(bad.body).toMatchObject({ error: { code: 'GW_UNAUTHORIZED' } });
  });

  it('refused requests are counted by code, and no turn was started', async () => {
    const m = await metricsText(t);
    expect(m).toMatch(/cxg_turn_requests_refused_total\{code="GW_FORBIDDEN"\} [1-9]/);
    expect(m).toMatch(/cxg_turn_requests_refused_total\{code="GW_BAD_REQUEST"\} [1-9]/);
    expect(m).toContain('cxg_turns_started_total 0');
  });
});

describe('POST /api/turns: deadlines, failures and clients that go away (fake codex)', () => {
  let t: TestGateway;
  const W = 'turns-fake';
  let token: string;
  beforeAll(async () => {
    t = await gatewayFor([W, 'turns-crash']);
    token = await t.token(W);
  });
  afterAll(async () => t?.close());

  it('a turn completes with its items; the thread continues with its threadId', async () => {
    const first = await postTurn(t.httpUrl, token, { workspaceId: W, params: { input: textInput('hello') } });
    expect(first.status).toBe(200);
    expect(agentText(first.body.turn)).toBe('fake reply to: hello');
    const threadId = first.body.threadId as string;
    const second = await postTurn(t.httpUrl, token, { workspaceId: W, params: { threadId, input: textInput('again') } });
    expect(second.status).toBe(200);
    expect(second.body.threadId).toBe(threadId);
    expect((await readTurns(t, W, threadId)).map((x) => x.status)).toEqual(['completed', 'completed']);
  });

  it('timeoutMs interrupts a turn that does not end: 504 brokerTimeout in time, and the child stays usable', async () => {
    const t0 = Date.now();
    const r = await postTurn(t.httpUrl, token, { workspaceId: W, params: { input: textInput('fake:hang') }, timeoutMs: 500 });
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r.status).toBe(504);
    expect(r.body).toMatchObject({ transport: { code: 'brokerTimeout' } });
    expect((r.body.transport as { message: string }).message).toContain('interrupted');
    const threadId = r.body.threadId as string;
    expect((await readTurns(t, W, threadId)).map((x) => x.status)).toEqual(['interrupted']);
    const next = await postTurn(t.httpUrl, token, { workspaceId: W, threadId, params: { input: textInput('still there?') } });
    expect(next.status).toBe(200);
    expect(agentText(next.body.turn)).toBe('fake reply to: still there?');
  });

  it('an unknown threadId is codexRPCError with codex\'s code', async () => {
    const r = await postTurn(t.httpUrl, token, { workspaceId: W, threadId: 'no-such-thread', params: { input: textInput('x') } });
    expect(r.status).toBe(502);
    expect(r.body).toMatchObject({ threadId: 'no-such-thread', transport: { code: 'codexRPCError', rpcCode: -32600 } });
  });

  it('a child that exits mid-turn is subprocessCrash', async () => {
    const crashToken = await t.token('turns-crash');
    const r = await postTurn(t.httpUrl, crashToken, { workspaceId: 'turns-crash', params: { input: textInput('fake:exit') } });
    expect(r.status).toBe(502);
    expect(r.body).toMatchObject({ transport: { code: 'subprocessCrash' } });
  });

  it('a workspace that cannot start answers with the start\'s code', async () => {
    t.childEnv.set('turns-broken', ['FAKE_CODEX_MODE=exit-before-banner']);
    const r = await postTurn(t.httpUrl, await t.token('turns-broken'), { workspaceId: 'turns-broken', params: { input: textInput('x') } });
    expect(r.status).toBe(502);
    expect(r.body).toMatchObject({ threadId: null, transport: { code: 'GW_SPAWN_EXITED' } });
    // The code's fixed message, never codex's stderr or a host path (those go to the log).
    expect((r.body as { transport: { message: string } }).transport.message).toBe(ERROR_CODES.GW_SPAWN_EXITED);
  });

  it('a streaming client that goes away does not stop the turn', async () => {
    let threadId = '';
    const reply = await streamTurn(t.httpUrl, token, { workspaceId: W, params: { input: textInput('fake:hold') } }, (e) => {
      if (e.event !== 'turn/started') return false;
      threadId = (e.data as { threadId: string }).threadId;
      return true;
    });
    expect(reply.status).toBe(200);
    expect(threadId).not.toBe('');
    // Whatever the gateway did with the abort has reached the child before this release.
    const c = await AppServerClient.connect(t.url, { token });
    try {
      await c.request('fake/release', { threadId });
    } finally {
      await c.close();
    }
    expect((await readTurns(t, W, threadId)).map((x) => x.status)).toEqual(['completed']);
  });

  it('a streaming client that goes away with interruptOnDisconnect interrupts the turn', async () => {
    let threadId = '';
    await streamTurn(t.httpUrl, token, { workspaceId: W, params: { input: textInput('fake:hold') }, interruptOnDisconnect: true }, (e) => {
      if (e.event !== 'turn/started') return false;
      threadId = (e.data as { threadId: string }).threadId;
      return true;
    });
    const deadline = Date.now() + 15_000;
    let statuses: string[] = [];
    while (Date.now() < deadline) {
      statuses = (await readTurns(t, W, threadId)).map((x) => x.status);
      if (statuses[0] !== 'inProgress') break;
      await sleep(50);
    }
    expect(statuses).toEqual(['interrupted']);
  });

  it('turns are counted: started, completed by status, failed by code', async () => {
    const m = await metricsText(t);
    expect(m).toMatch(/cxg_turns_started_total [1-9]/);
    expect(m).toMatch(/cxg_turns_completed_total\{status="completed"\} [1-9]/);
    expect(m).toMatch(/cxg_turns_failed_total\{code="brokerTimeout"\} 1/);
    expect(m).toMatch(/cxg_turns_failed_total\{code="subprocessCrash"\} 1/);
    expect(m).toMatch(/cxg_turns_failed_total\{code="GW_SPAWN_EXITED"\} 1/);
    expect(m).toMatch(/cxg_turn_duration_seconds_count\{result="ok"\} [1-9]/);
  });
});

describe('POST /api/turns during a drain', () => {
  it('a turn in flight is answered (the stream ends with its result), not left hanging', async () => {
    const t = await gatewayFor(['turns-drain']);
    try {
      let drained: Promise<unknown> | undefined;
      const reply = await streamTurn(t.httpUrl, await t.token('turns-drain'), { workspaceId: 'turns-drain', params: { input: textInput('fake:hold') } }, (e) => {
        if (e.event === 'turn/started') drained = t.gw.drain();
      });
      const last = reply.events.at(-1);
      expect(last?.event).toBe('result');
      const code = (last?.data as { transport?: { code: string } }).transport?.code;
      // The drain stops the child: the shard says so before the process is gone.
      expect(code).toBe('wsDisconnect');
      expect((last?.data as { transport: { message: string } }).transport.message).toContain('(drain)');
      expect(drained).toBeDefined();
      await drained;
    } finally {
      await t.close();
    }
  });
});

describe('approval policies', () => {
  const declined: Array<[string, unknown]> = [
    ['item/commandExecution/requestApproval', { decision: 'decline' }],
    ['item/fileChange/requestApproval', { decision: 'decline' }],
    ['item/permissions/requestApproval', { permissions: {}, scope: 'turn' }],
    ['applyPatchApproval', { decision: { denied: { rejection: REJECTION } } }],
    ['execCommandApproval', { decision: { denied: { rejection: REJECTION } } }],
  ];
  const accepted: Array<[string, unknown]> = [
    ['item/commandExecution/requestApproval', { decision: 'accept' }],
    ['item/fileChange/requestApproval', { decision: 'accept' }],
    ['item/permissions/requestApproval', { permissions: { network: { enabled: true } }, scope: 'turn' }],
    ['applyPatchApproval', { decision: 'approved' }],
    ['execCommandApproval', { decision: 'approved' }],
  ];

  describe('defaults (approvals.headless = decline, approvals.websocket = client)', () => {
    let t: TestGateway;
    beforeAll(async () => {
      t = await gatewayFor(['approvals-default']);
    });
    afterAll(async () => t?.close());

    it.each(declined)('an HTTP turn gets %s declined and completes', async (method, answer) => {
      const r = await postTurn(t.httpUrl, await t.token('approvals-default'), { workspaceId: 'approvals-default', params: { input: textInput(`fake:approval ${method}`) } });
      expect(r.status).toBe(200);
      expect((r.body.turn as { status: string }).status).toBe('completed');
      expect(agentText(r.body.turn)).toBe(`decision: ${JSON.stringify(answer)}`);
    });

    it('requests that need a person are refused in an HTTP turn', async () => {
      const token = await t.token('approvals-default');
      const input = await postTurn(t.httpUrl, token, { workspaceId: 'approvals-default', params: { input: textInput('fake:approval item/tool/requestUserInput') } });
      expect(agentText(input.body.turn)).toBe('decision: {"answers":{}}');
      const refresh = await postTurn(t.httpUrl, token, { workspaceId: 'approvals-default', params: { input: textInput('fake:approval account/chatgptAuthTokens/refresh') } });
      expect(agentText(refresh.body.turn)).toContain('"code":-32601');
    });

    it('the streamed form shows the answered approval', async () => {
      const reply = await streamTurn(t.httpUrl, await t.token('approvals-default'), { workspaceId: 'approvals-default', params: { input: textInput('fake:approval item/fileChange/requestApproval') } });
      const answered = reply.events.find((e) => e.event === 'gateway/approvalAnswered');
      expect(answered?.data).toMatchObject({ method: 'item/fileChange/requestApproval', decision: 'decline' });
      const names = reply.events.map((e) => e.event);
      expect(names.indexOf('gateway/approvalAnswered')).toBeLessThan(names.indexOf('item/agentMessage/delta'));
      expect(names.at(-1)).toBe('result');
    });

    it('on a WebSocket the client answers (it sees the request)', async () => {
      const c = await AppServerClient.connect(t.url, { token: await t.token('approvals-default') });
      try {
        await c.initialize();
        const threadId = await c.startThread();
        const turn = await c.runTurn(threadId, 'fake:approval item/commandExecution/requestApproval');
        expect(c.serverRequests.map((r) => r.method)).toEqual(['item/commandExecution/requestApproval']);
        expect(turn.text).toBe('decision: {"decision":"decline"}');
      } finally {
        await c.close();
      }
    });

    it('applied policies are counted by path, method and decision', async () => {
      const m = await metricsText(t);
      expect(m).toContain('cxg_approvals_answered_total{path="http",method="item/commandExecution/requestApproval",decision="decline"} 1');
      expect(m).toContain('cxg_approvals_answered_total{path="http",method="item/fileChange/requestApproval",decision="decline"} 2');
      expect(m).not.toContain('path="websocket"');
    });
  });

  describe('approvals.headless = accept, approvals.websocket = accept', () => {
    let t: TestGateway;
    beforeAll(async () => {
      t = await gatewayFor(['approvals-accept'], { headless: 'accept', websocket: 'accept' });
    });
    afterAll(async () => t?.close());

    it.each(accepted)('an HTTP turn gets %s accepted and completes', async (method, answer) => {
      const r = await postTurn(t.httpUrl, await t.token('approvals-accept'), { workspaceId: 'approvals-accept', params: { input: textInput(`fake:approval ${method}`) } });
      expect(r.status).toBe(200);
      expect(agentText(r.body.turn)).toBe(`decision: ${JSON.stringify(answer)}`);
    });

    it('on a WebSocket the gateway answers and the client never sees the request', async () => {
      const c = await AppServerClient.connect(t.url, { token: await t.token('approvals-accept') });
      try {
        await c.initialize();
        const threadId = await c.startThread();
        const turn = await c.runTurn(threadId, 'fake:approval item/commandExecution/requestApproval');
        expect(c.serverRequests).toEqual([]);
        expect(turn.text).toBe('decision: {"decision":"accept"}');
      } finally {
        await c.close();
      }
      expect(await metricsText(t)).toContain('cxg_approvals_answered_total{path="websocket",method="item/commandExecution/requestApproval",decision="accept"} 1');
    });
  });
});

describe('turn and approval settings reach the gateway', () => {
  it('approvals.* and turns.* from the environment become the gateway\'s options; bad values are refused', async () => {
    const { loadSettings } = await import('../src/main/settings/load.js');
    const { gatewayOptions } = await import('../src/main/cli/serve.js');
    const env = {
      CXG_AUTH_JWT_SECRET: 'x'.repeat(40),
      CXG_APPROVALS_HEADLESS: 'accept',
      CXG_APPROVALS_WEBSOCKET: 'decline',
      CXG_TURNS_TIMEOUT: '2m',
      CXG_TURNS_MAX_TIMEOUT: '30m',
      CXG_TURNS_MAX_BODY: '256KiB',
    };
    const settings = await loadSettings({ env, cwd: '/' });
    const o = await gatewayOptions(settings, quietLogger, () => undefined);
    expect(o.supervisor.approvals).toEqual({ headless: 'accept', websocket: 'decline' });
    expect(o.turns).toEqual({ defaultTimeoutMs: 120_000, maxTimeoutMs: 1_800_000, maxBodyBytes: 256 * 1024 });
    const defaults = await loadSettings({ env: { CXG_AUTH_JWT_SECRET: 'x'.repeat(40) }, cwd: '/' });
    expect(defaults.approvals).toEqual({ headless: 'decline', websocket: 'client' });
    await expect(loadSettings({ env: { ...env, CXG_APPROVALS_HEADLESS: 'client' }, cwd: '/' })).rejects.toMatchObject({ code: 'GW_SETTINGS' });
  });
});
