/**
 * /internal/connected with an upstream: a child asking about itself gets the
 * gateway's view plus what the upstream says; an upstream that fails is a
 * 502 GW_UPSTREAM, never a 200 without the upstream part.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openWs, rpc, startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import { recordingLogger } from './helpers.js';

type Answer = (res: http.ServerResponse) => void;

async function upstream(): Promise<{ url: string; queries: string[]; answer: Answer; close(): Promise<void> }> {
  const state = { queries: [] as string[], answer: ((res) => res.writeHead(500).end()) as Answer };
  const server = http.createServer((req, res) => {
    state.queries.push(req.url ?? '');
    req.resume();
    state.answer(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/`,
    queries: state.queries,
    set answer(a: Answer) {
      state.answer = a;
    },
    get answer() {
      return state.answer;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function connected(t: TestGateway, token: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`${t.internalUrl}/internal/connected`, { headers: { 'x-loopback-token': token } });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

describe('/internal/connected with an upstream', () => {
  let up: Awaited<ReturnType<typeof upstream>>;
  let t: TestGateway;
  let token = '';
  let pid = 0;
  const { log, lines } = recordingLogger('warn');
  beforeAll(async () => {
    up = await upstream();
    t = await startTestGateway({ log, internal: { host: '127.0.0.1', port: 0, upstreamUrl: up.url } });
    const ws = await openWs(t.url, await t.token('iu-ws'));
    const info = await rpc<{ pid: number; env: Record<string, string> }>(ws, 'fake/info');
    token = info.env.CXG_LOOPBACK_TOKEN as string;
    pid = info.pid;
    // The client stays connected for the whole file.
  });
  afterAll(async () => {
    await t?.close();
    await up?.close();
  });

  it('includes the upstream JSON next to the gateway status; asks upstream for this workspace', async () => {
    up.answer = (res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ users: ['ann'], connected: true }));
    const r = await connected(t, token);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({
      workspace_id: 'iu-ws',
      status: { state: 'running', pid, connected_clients: 1 },
      upstream: { users: ['ann'], connected: true },
    });
    // One slash between the configured URL and the path, whatever the configuration ends with.
    expect(up.queries.at(-1)).toBe('/api/connected?workspace_id=iu-ws');
  });

  const failures: Array<[string, Answer]> = [
    ['answers 500', (res) => res.writeHead(500).end('boom')],
    ['answers 404', (res) => res.writeHead(404).end()],
    ['answers 200 with a body that is not JSON', (res) => res.writeHead(200, { 'content-type': 'application/json' }).end('<html>')],
    ['drops the connection', (res) => res.socket?.destroy()],
  ];
  it.each(failures)('an upstream that %s › 502 GW_UPSTREAM, and a warning in the gateway log', async (_what, answer) => {
    up.answer = answer;
    lines.length = 0;
    const r = await connected(t, token);
    expect(r.status).toBe(502);
    expect(r.body).toMatchObject({ error: { code: 'GW_UPSTREAM' } });
    expect(lines.find((l) => l.msg === 'upstream /connected failed')).toMatchObject({ workspaceId: 'iu-ws' });
  });

  it('the token is checked before upstream is asked: an unknown token is 401 and upstream hears nothing', async () => {
    const before = up.queries.length;
    const r = await connected(t, 'f'.repeat(64));
    expect(r.status).toBe(401);
    expect(up.queries.length).toBe(before);
  });
});

describe('/internal/connected with an upstream that is down', () => {
  it('connection refused › 502 GW_UPSTREAM', async () => {
    const up = await upstream();
    const url = up.url;
    await up.close();
    const t = await startTestGateway({ internal: { host: '127.0.0.1', port: 0, upstreamUrl: url } });
    try {
      const ws = await openWs(t.url, await t.token('iu-down'));
      const info = await rpc<{ env: Record<string, string> }>(ws, 'fake/info');
      const r = await connected(t, info.env.CXG_LOOPBACK_TOKEN as string);
      expect(r.status).toBe(502);
      expect(r.body).toMatchObject({ error: { code: 'GW_UPSTREAM' } });
      ws.close();
    } finally {
      await t.close();
    }
  });
});
