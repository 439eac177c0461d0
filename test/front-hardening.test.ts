/**
 * Hardening of the front thread: connection ids that survive the u32 wrap,
 * client-facing errors without internals, the admin API's order of checks,
 * and loop-delay figures that readers do not reset.
 */
import { createServer, request } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConnectionIds, MAX_CONNECTION_ID } from '../src/main/front/connection-ids.js';
import { DEFAULT_DATA_PLANE, DEFAULT_FRONT_LIMITS, ERROR_CODES, RemoteAuthenticator } from 'codex-app-gateway';
import { closeOf, collect, openWs, refusedUpgrade, rpc, startTestGateway } from './gateway-helpers.js';
import { waitFor } from './helpers.js';
import type { TestGateway } from './gateway-helpers.js';

interface FakeInfo {
  pid: number;
  codexHome: string;
}

describe('connection ids', () => {
  it('wrap from 2^32-1 to 1, never 0 and never past the u32 the frame path carries', () => {
    const ids = new ConnectionIds(MAX_CONNECTION_ID - 1);
    expect([ids.take(() => false), ids.take(() => false), ids.take(() => false)]).toEqual([MAX_CONNECTION_ID - 1, MAX_CONNECTION_ID, 1]);
  });

  it('skip ids held by live connections after the wrap', () => {
    const live = new Set([MAX_CONNECTION_ID, 1, 2]);
    const ids = new ConnectionIds(MAX_CONNECTION_ID);
    expect(ids.take((id) => live.has(id))).toBe(3);
    expect(ids.take((id) => live.has(id))).toBe(4);
  });

  it('refuse a first id outside 1..2^32-1', () => {
    for (const bad of [0, -1, MAX_CONNECTION_ID + 1, 1.5]) expect(() => new ConnectionIds(bad)).toThrow(RangeError);
  });
});

describe('connection ids across the u32 wrap (fake codex)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    // The counter starts two ids below the wrap: the third client gets the first id after it.
    t = await startTestGateway({ firstConnectionId: MAX_CONNECTION_ID - 1 });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('every client past 2^32 connections reaches its own workspace, and a live id is never shared', async () => {
    const names = ['ws-wrap-a', 'ws-wrap-b', 'ws-wrap-c', 'ws-wrap-d'];
    const sockets = [];
    for (const name of names) sockets.push(await openWs(t.url, await t.token(name)));
    try {
      for (const [i, ws] of sockets.entries()) {
        const info = await rpc<FakeInfo>(ws, 'fake/info');
        expect(info.codexHome).toContain(names[i]);
      }
    } finally {
      for (const ws of sockets) ws.close();
    }
  });
});

describe('loop-delay figures', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway();
  });
  afterAll(async () => {
    await t?.close();
  });

  const mainP99 = async (): Promise<number> => {
    const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    const m = /^cxg_event_loop_delay_p99_seconds\{thread="main"\} (\S+)$/m.exec(text);
    return Number(m?.[1]);
  };

  it('a scrape does not reset what the next scrape reports', async () => {
    // This test shares the gateway's main thread: stall it 20 times for 150 ms,
    // enough samples (one per stall) to set the window's p99.
    for (let i = 0; i < 20; i++) {
      const until = Date.now() + 150;
      while (Date.now() < until);
      await new Promise((r) => setImmediate(r));
    }
    expect(await mainP99()).toBeGreaterThanOrEqual(0.12);
    expect(await mainP99()).toBeGreaterThanOrEqual(0.12);
  });

  it('reading shard stats (admin listing, metrics) does not reset the shards\' figures', async () => {
    // An idle loop's samples are its 10 ms timer's period plus any lateness;
    // a histogram reset by the previous read reports about 0.
    await waitFor(async () => (await t.gw.sup.stats()).every((s) => s.eventLoopDelayP99Ms >= 5), 20_000, 'a first loop-delay sample in every shard');
    for (let i = 0; i < 3; i++) {
      for (const s of await t.gw.sup.stats()) expect(s.eventLoopDelayP99Ms).toBeGreaterThanOrEqual(5);
    }
  });
});

describe('operator endpoints check their token first', () => {
  const ADMIN = 'admin-token-for-tests-0123456789';
  const METRICS = 'metrics-token-for-tests-0123456789';
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({ adminToken: ADMIN, metricsToken: METRICS });
  });
  afterAll(async () => {
    await t?.close();
  });

  /** Sends the headers and `sent` bytes of a `declared`-byte body, then waits for the answer without finishing it. */
  const partialPost = (url: string, declared: number, sent: number, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const req = request(url, { method: 'POST', headers: { 'content-length': String(declared), ...headers } }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.write(Buffer.alloc(sent, 0x61));
    });

  it('an admin POST without the token is refused before its body is read: no 413 for a large body, no wait for a body that never ends', async () => {
    const big = await partialPost(`${t.internalUrl}/admin/workspaces/ws-x/shutdown`, 2 * 1024 * 1024, 2 * 1024 * 1024);
    expect(big.status).toBe(401);
    expect(big.body).toContain('GW_UNAUTHORIZED');
    const stalled = await partialPost(`${t.internalUrl}/admin/workspaces/ws-x/shutdown`, 1000, 10, { authorization: 'Bearer wrong' });
    expect(stalled.status).toBe(401);
  });

  it('an admin POST with the token still reads its body and answers', async () => {
    const r = await fetch(`${t.internalUrl}/admin/workspaces/ws-none/shutdown`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` }, body: '{}' });
    expect(r.status).toBe(404);
  });

  it('/metrics needs the metrics token when one is set', async () => {
    expect((await fetch(`${t.httpUrl}/metrics`)).status).toBe(401);
    expect((await fetch(`${t.httpUrl}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } })).status).toBe(401);
    const ok = await fetch(`${t.httpUrl}/metrics`, { headers: { authorization: `Bearer ${METRICS}` } });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain('cxg_clients_connected');
  });
});

describe('limits.max_connections (fake codex)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({ limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 1024 * 1024, maxConnections: 2 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('an upgrade past the limit gets 503 GW_TOO_MANY_CONNECTIONS; once one closes, a new client gets in', async () => {
    const a = await openWs(t.url, await t.token('ws-max-a'));
    const b = await openWs(t.url, await t.token('ws-max-b'));
    const refused = await refusedUpgrade(t.url, { authorization: `Bearer ${await t.token('ws-max-c')}` });
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.body)).toEqual({ error: { code: 'GW_TOO_MANY_CONNECTIONS', message: ERROR_CODES.GW_TOO_MANY_CONNECTIONS } });
    a.close();
    await waitFor(() => t.gw.front.connectionCount === 1, 10_000, 'the closed client to be gone');
    const c = await openWs(t.url, await t.token('ws-max-c'));
    expect((await rpc<FakeInfo>(c, 'fake/info')).codexHome).toContain('ws-max-c');
    b.close();
    c.close();
  });
});

describe('verification after the upgrade (remote verifier cache miss, fake codex)', () => {
  let t: TestGateway;
  let verifier: Server;
  beforeAll(async () => {
    // Answers after 300 ms, so the client's first frames arrive before the verdict.
    verifier = createServer((req, res) => {
      req.resume();
      req.on('end', () => setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ workspace_id: 'ws-late-auth' })), 300));
    });
    await new Promise<void>((r) => verifier.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(verifier.address() as AddressInfo).port}/verify`;
    t = await startTestGateway({ auth: new RemoteAuthenticator({ url, cacheMs: 60_000 }) });
  });
  afterAll(async () => {
    await t?.close();
    await new Promise((r) => verifier?.close(r));
  });

  it('frames sent before the verdict wait for it and reach the child in order', async () => {
    const ws = await openWs(t.url, 'not-yet-known');
    const got = collect(ws);
    for (let i = 0; i < 20; i++) ws.send(`{"seq":${i}}`);
    await waitFor(() => got.length >= 20, 15_000, 'echoes');
    expect(got.map((f) => f.data.toString())).toEqual(Array.from({ length: 20 }, (_, i) => `{"seq":${i}}`));
    ws.close();
  });
});

describe('handshake timeout toward the child (fake codex)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({}, { dataPlane: { ...DEFAULT_DATA_PLANE, childHandshakeTimeoutMs: 1000 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a child that accepts the connection and never answers its upgrade: the client is closed with 1011 GW_CHILD_CONNECT', async () => {
    t.childEnv.set('ws-stall', ['FAKE_CODEX_MODE=stall-upgrade']);
    const ws = await openWs(t.url, await t.token('ws-stall'));
    ws.send('{"id":1,"method":"initialize"}');
    expect(await closeOf(ws)).toEqual({ code: 1011, reason: `GW_CHILD_CONNECT: ${ERROR_CODES.GW_CHILD_CONNECT}` });
  });
});
