/**
 * The front door and data plane, in process, on the fake codex.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { DEFAULT_FRONT_LIMITS, RemoteAuthenticator } from 'codex-app-gateway';
import { SignJWT } from 'jose';
import { JWT_SECRET, closeOf, collect, openWs, refusedUpgrade, rpc, startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { processAlive, waitFor } from './helpers.js';

interface FakeInfo {
  pid: number;
  codexHome: string;
  env: Record<string, string>;
  connections: number;
}

describe('gateway front door (fake codex)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('health › /healthz and /readyz answer 200 while running', async () => {
    expect((await fetch(`${t.httpUrl}/healthz`)).status).toBe(200);
    expect((await fetch(`${t.httpUrl}/readyz`)).status).toBe(200);
    expect((await fetch(`${t.httpUrl}/nope`)).status).toBe(404);
  });

  it.each(['/', '/codex-app/ws'])('upgrade at %s › a valid JWT reaches the workspace child and frames echo in order', async (p) => {
    const ws = await openWs(`${t.url}${p === '/' ? '' : p}`, await t.token('ws-echo'));
    const got = collect(ws);
    const sent: Array<{ data: Buffer; binary: boolean }> = [];
    for (let i = 0; i < 500; i++) {
      const binary = i % 3 === 0;
      const data = binary ? Buffer.from([i & 0xff, (i >> 8) & 0xff, 0, 1, 2]) : Buffer.from(`{"seq":${i},"text":"héllo ✓"}`);
      sent.push({ data, binary });
      ws.send(data, { binary });
    }
    await waitFor(() => got.length >= sent.length, 10_000, 'echoes');
    expect(got.map((f) => f.binary)).toEqual(sent.map((f) => f.binary));
    expect(got.map((f) => f.data.toString('hex'))).toEqual(sent.map((f) => f.data.toString('hex')));
    ws.close();
  });

  it.each([
    ['no Authorization header', {}],
    ['not a bearer token', { authorization: 'Basic dXNlcjpwYXNz' }],
    ['a garbage token', { authorization: 'Bearer not.a.jwt' }],
  ])('auth › %s is 401 before upgrading', async (_name, headers) => {
    const r = await refusedUpgrade(t.url, headers);
    expect(r.status).toBe(401);
    expect(JSON.parse(r.body)).toMatchObject({ error: { code: 'GW_UNAUTHORIZED' } });
  });

  it('auth › expired, wrongly signed, and bad workspace claims are 401', async () => {
    const key = new TextEncoder().encode(JWT_SECRET);
    const expired = await new SignJWT({ workspace_id: 'ws-x' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime(Math.floor(Date.now() / 1000) - 60).sign(key);
    const wrongKey = await new SignJWT({ workspace_id: 'ws-x' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(new TextEncoder().encode('another-secret-another-secret-another-secret'));
    const badClaims = await Promise.all(
      ['../etc', '', 'a/b', 'x'.repeat(200)].map((id) => new SignJWT({ workspace_id: id }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(key)),
    );
    const noClaim = await new SignJWT({ sub: 'someone' }).setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(key);
    for (const tok of [expired, wrongKey, noClaim, ...badClaims]) {
      const r = await refusedUpgrade(t.url, { authorization: `Bearer ${tok}` });
      expect(r.status).toBe(401);
    }
  });

  it('frames sent before the child is ready are queued and delivered in order', async () => {
    t.childEnv.set('ws-slow-start', ['FAKE_CODEX_MODE=slow-ready', 'FAKE_CODEX_READY_AFTER_MS=600']);
    const ws = await openWs(t.url, await t.token('ws-slow-start'));
    const got = collect(ws);
    let closed = '';
    ws.once('close', (code, reason) => (closed = `${code} ${reason.toString()}`));
    for (let i = 0; i < 100; i++) ws.send(`early-${i}`);
    await waitFor(() => got.length >= 100 || closed !== '', 20_000, 'queued frames');
    expect(closed).toBe('');
    expect(got.map((f) => f.data.toString())).toEqual(Array.from({ length: 100 }, (_, i) => `early-${i}`));
    ws.close();
  });

  it('two clients of one workspace share its child; other workspaces get other children', async () => {
    const a = await openWs(t.url, await t.token('ws-shared'));
    const b = await openWs(t.url, await t.token('ws-shared'));
    const c = await openWs(t.url, await t.token('ws-other'));
    const ia = await rpc<FakeInfo>(a, 'fake/info');
    const ib = await rpc<FakeInfo>(b, 'fake/info');
    const ic = await rpc<FakeInfo>(c, 'fake/info');
    expect(ia.pid).toBe(ib.pid);
    // Each client has its own child connection.
    expect(ib.connections).toBe(2);
    expect(ic.pid).not.toBe(ia.pid);
    // The child never sees the client's Origin or token: it accepted the gateway's capability secret.
    expect(ia.env.CXG_LOOPBACK_TOKEN).toMatch(/^[0-9a-f]{64}$/);
    for (const ws of [a, b, c]) ws.close();
  });

  it('a client close closes its child connection', async () => {
    const a = await openWs(t.url, await t.token('ws-close'));
    const b = await openWs(t.url, await t.token('ws-close'));
    expect((await rpc<FakeInfo>(b, 'fake/info')).connections).toBe(2);
    a.close();
    await closeOf(a);
    await waitFor(async () => (await rpc<FakeInfo>(b, 'fake/info')).connections === 1, 5000, 'child connection to close');
    b.close();
  });

  it('a child that dies mid-session closes its clients with 1011; a reconnect gets the workspace with its state', async () => {
    const ws = await openWs(t.url, await t.token('ws-dies'));
    await rpc(ws, 'fake/writeFile', { path: 'marker.txt', content: 'kept' });
    const info = await rpc<FakeInfo>(ws, 'fake/info');
    const closed = closeOf(ws);
    process.kill(info.pid, 'SIGKILL');
    const c = await closed;
    expect(c.code).toBe(1011);
    expect(c.reason.length).toBeGreaterThan(0);
    const again = await openWs(t.url, await t.token('ws-dies'));
    const info2 = await rpc<FakeInfo>(again, 'fake/info');
    expect(info2.pid).not.toBe(info.pid);
    expect(await readFile(path.join(info2.codexHome, 'marker.txt'), 'utf8')).toBe('kept');
    again.close();
  });

  it('a reconnect that reaches a child whose sockets are gone before its exit is seen gets the next child, with its state and its first request answered', async () => {
    const ws = await openWs(t.url, await t.token('ws-dying'));
    await rpc(ws, 'fake/writeFile', { path: 'marker.txt', content: 'kept' });
    const info = await rpc<FakeInfo>(ws, 'fake/info');
    const closed = closeOf(ws);
    // The child stops listening and drops its connections now, and exits a second later.
    await rpc(ws, 'fake/dying', { exitAfterMs: 1000 });
    expect((await closed).code).toBe(1011);
    expect(processAlive(info.pid)).toBe(true);
    const again = await openWs(t.url, await t.token('ws-dying'));
    const info2 = await rpc<FakeInfo>(again, 'fake/info');
    expect(info2.pid).not.toBe(info.pid);
    expect(processAlive(info.pid)).toBe(false);
    expect(await readFile(path.join(info2.codexHome, 'marker.txt'), 'utf8')).toBe('kept');
    again.close();
  });

  it('a child that lives but cannot be reached closes a new client with 1011 GW_CHILD_CONNECT', async () => {
    const ws = await openWs(t.url, await t.token('ws-unreachable'));
    const info = await rpc<FakeInfo>(ws, 'fake/info');
    const closed = closeOf(ws);
    await rpc(ws, 'fake/dying', { exitAfterMs: -1 });
    await closed;
    const again = await openWs(t.url, await t.token('ws-unreachable'));
    const c = await closeOf(again);
    expect(c.code).toBe(1011);
    expect(c.reason).toContain('GW_CHILD_CONNECT');
    expect(processAlive(info.pid)).toBe(true);
    process.kill(info.pid, 'SIGKILL');
  });

  it('a child that fails to start closes the client with 1011 naming the error code', async () => {
    t.childEnv.set('ws-broken', ['FAKE_CODEX_MODE=exit-before-banner']);
    const ws = await openWs(t.url, await t.token('ws-broken'));
    const c = await closeOf(ws);
    expect(c.code).toBe(1011);
    expect(c.reason).toContain('GW_SPAWN_EXITED');
  });

  it('/internal/connected › 401 without or with an unknown token; 200 with the child token', async () => {
    expect((await fetch(`${t.internalUrl}/internal/connected`)).status).toBe(401);
    expect((await fetch(`${t.internalUrl}/internal/connected`, { headers: { 'x-loopback-token': 'f'.repeat(64) } })).status).toBe(401);
    const ws = await openWs(t.url, await t.token('ws-internal'));
    const info = await rpc<FakeInfo>(ws, 'fake/info');
    const r = await fetch(`${t.internalUrl}/internal/connected`, { headers: { 'x-loopback-token': info.env.CXG_LOOPBACK_TOKEN as string } });
    expect(r.status).toBe(200);
    const body = (await r.json()) as { workspace_id: string; status: { pid: number; connected_clients: number; state: string } };
    expect(body.workspace_id).toBe('ws-internal');
    expect(body.status).toMatchObject({ pid: info.pid, connected_clients: 1, state: 'running' });
    ws.close();
  });
});

describe('gateway with a remote auth verifier (fake codex)', () => {
  let t: TestGateway;
  let verifier: Server;
  let verifierUp = true;
  const asked: string[] = [];

  beforeAll(async () => {
    // A real verifier on loopback: "good:<id>" grants <id>, anything else is refused.
    verifier = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const { token } = JSON.parse(body) as { token: string };
        asked.push(token);
        if (!verifierUp) return void res.writeHead(500).end();
        const [kind, id] = token.split(':');
        if (kind === 'good') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ workspace_id: id }));
        res.writeHead(401).end();
      });
    });
    await new Promise<void>((r) => verifier.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(verifier.address() as AddressInfo).port}/verify`;
    t = await startTestGateway({ auth: new RemoteAuthenticator({ url, cacheMs: 60_000 }) });
  });
  afterAll(async () => {
    await t?.close();
    await new Promise((r) => verifier?.close(r));
  });

  it('a first token is upgraded at once and verified after; a refused one is closed with 1008, then (cached) gets 401; a verifier that is down closes with 1013', async () => {
    // First sight: the upgrade waits for the verifier. Second: answered from the cache, no request.
    for (let i = 0; i < 2; i++) {
      const ws = await openWs(t.url, 'good:ws-remote');
      expect((await rpc<FakeInfo>(ws, 'fake/info')).codexHome).toContain('ws-remote');
      ws.close();
    }
    expect(asked.filter((x) => x === 'good:ws-remote')).toHaveLength(1);

    // Not yet known: upgraded, then closed once the verifier says no.
    const refused = await openWs(t.url, 'nope');
    expect(await closeOf(refused)).toEqual({ code: 1008, reason: 'GW_UNAUTHORIZED: missing or invalid bearer token' });
    // The refusal is cached: the next attempt is answered before any upgrade.
    expect((await refusedUpgrade(t.url, { authorization: 'Bearer nope' })).status).toBe(401);
    verifierUp = false;
    const down = await openWs(t.url, 'good:ws-other');
    const downClose = await closeOf(down);
    expect(downClose.code).toBe(1013);
    expect(downClose.reason).toContain('GW_AUTH_UNAVAILABLE');
    // A cached token does not need the verifier.
    const cached = await openWs(t.url, 'good:ws-remote');
    cached.close();
    verifierUp = true;
  });
});

describe('gateway frame limits and backpressure (fake codex)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({
      limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 1024 * 1024, clientHighWaterBytes: 256 * 1024, clientLowWaterBytes: 64 * 1024, clientMaxBufferedBytes: 4 * 1024 * 1024, slowClientTimeoutMs: 1500 },
    }, { dataPlane: { maxFrameBytes: 1024 * 1024, maxPendingToChildBytes: 8 * 1024 * 1024 } });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a frame above the limit closes the client with 1009', async () => {
    const ws = await openWs(t.url, await t.token('ws-big'));
    const ok = collect(ws);
    ws.send(Buffer.alloc(1024 * 1024 - 16, 1), { binary: true });
    await waitFor(() => ok.length === 1, 5000, 'a frame at the limit to echo');
    const closed = closeOf(ws);
    ws.send(Buffer.alloc(1024 * 1024 + 1, 2), { binary: true });
    expect((await closed).code).toBe(1009);
    // A frame far above the limit is cut off too (uWS drops the connection).
    const ws2 = await openWs(t.url, await t.token('ws-big'));
    const closed2 = closeOf(ws2);
    ws2.send(Buffer.alloc(3 * 1024 * 1024, 3), { binary: true });
    expect([1006, 1009]).toContain((await closed2).code);
  });

  it('a client that reads slowly gets every frame, in order, with gateway memory bounded', async () => {
    const ws = await openWs(t.url, await t.token('ws-slow-reader'));
    const got: number[] = [];
    let done = false;
    ws.on('message', (data: Buffer, binary: boolean) => {
      if (!binary) {
        if (data.toString().includes('fake/floodDone')) done = true;
        return;
      }
      got.push(parseInt(data.subarray(0, 12).toString('latin1'), 10));
    });
    // 64 MiB of 64 KiB frames; the client stops reading for a while mid-way.
    const count = 1024;
    const rss0 = process.memoryUsage().rss;
    ws.send(JSON.stringify({ id: 1, method: 'fake/flood', params: { count, size: 64 * 1024, binary: true } }));
    await waitFor(() => got.length > 10, 5000, 'first frames');
    ws.pause();
    await sleep(800);
    const rssPaused = process.memoryUsage().rss;
    ws.resume();
    await waitFor(() => done, 30_000, 'flood to finish');
    expect(got).toHaveLength(count);
    expect(got).toEqual(Array.from({ length: count }, (_, i) => i));
    // Paused for 800 ms while the child could send 64 MiB: the gateway held far less.
    expect(rssPaused - rss0).toBeLessThan(48 * 1024 * 1024);
    ws.close();
  });

  it('a child slow to read gets every client frame intact and in order while the frames behind them keep coming', async () => {
    const ws = await openWs(t.url, await t.token('ws-slow-child'));
    await rpc(ws, 'fake/pauseReading', { ms: 700 });
    // Sizes that share batches and that fill them; ~10 MiB in all, under the client's 16 MiB in flight.
    const sizes = [64 * 1024, 300, 20 * 1024, 100 * 1024, 7];
    const sent = Array.from({ length: 150 }, (_, i) => randomBytes(sizes[i % sizes.length] as number));
    const got: Buffer[] = [];
    ws.on('message', (data: Buffer, binary: boolean) => {
      if (binary) got.push(data);
    });
    for (const f of sent) ws.send(f, { binary: true });
    await waitFor(() => got.length === sent.length, 30_000, 'every frame echoed');
    for (let i = 0; i < sent.length; i++) expect(got[i]?.equals(sent[i] as Buffer), `frame ${i}`).toBe(true);
    ws.close();
  });

  it('a client that stops reading for longer than the limit is closed with 1008', async () => {
    const ws = await openWs(t.url, await t.token('ws-stuck-reader'));
    const info = await rpc<FakeInfo>(ws, 'fake/info');
    ws.pause();
    ws.send(JSON.stringify({ id: 2, method: 'fake/flood', params: { count: 2048, size: 64 * 1024, binary: true } }));
    const c = await new Promise<{ code: number; reason: string }>((resolve) => {
      ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
      // Read again only after the gateway has had time to give up on us.
      setTimeout(() => ws.resume(), 4000);
    });
    expect(c.code).toBe(1008);
    expect(c.reason).toContain('GW_SLOW_CLIENT');
    expect(processAlive(info.pid)).toBe(true);
  });
});

describe('gateway drain', () => {
  it('drain › /readyz turns 503, clients get 1001, every home is uploaded', async () => {
    const t = await startTestGateway();
    try {
      const ws = await openWs(t.url, await t.token('ws-drain'));
      await rpc(ws, 'fake/writeFile', { path: 'drained.txt', content: 'yes' });
      const closed = closeOf(ws);
      const draining = t.gw.drain();
      const c = await closed;
      expect(c.code).toBe(1001);
      const report = await draining;
      expect(report.saved).toBe(1);
      expect(report.unsaved).toEqual([]);
    } finally {
      await t.close();
    }
  });

  it('drain › while a drain is held open by a child slow to stop, an upgrade gets 503 GW_CLOSED and /readyz says draining', async () => {
    // The child ignores SIGTERM, so the drain waits out the whole grace period before its SIGKILL:
    // a window far longer than the checks below need, closed by the drain itself, not by the test.
    const t = await startTestGateway({ shutdownBudgetMs: 60_000 }, { stopGraceMs: 15_000 });
    try {
      t.childEnv.set('ws-drain-slow', ['FAKE_CODEX_MODE=ignore-sigterm']);
      const ws = await openWs(t.url, await t.token('ws-drain-slow'));
      const info = await rpc<FakeInfo>(ws, 'fake/info');
      const closed = closeOf(ws);
      const draining = t.gw.drain();
      // Clients are closed once the drain has begun; the child is still being stopped after that.
      expect((await closed).code).toBe(1001);
      const ready = await fetch(`${t.httpUrl}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toEqual({ status: 'draining' });
      const r = await refusedUpgrade(t.url, { authorization: `Bearer ${await t.token('ws-late')}` });
      expect(r.status).toBe(503);
      expect(JSON.parse(r.body)).toMatchObject({ error: { code: 'GW_CLOSED' } });
      expect(processAlive(info.pid), 'the drain was still stopping the child when the upgrade was refused').toBe(true);

      const report = await draining;
      expect(report.timedOut).toBe(false);
      expect(report.saved).toBe(1);
      expect(processAlive(info.pid)).toBe(false);
    } finally {
      await t.close();
    }
  }, 60_000);
});

describe('internal API peer check', () => {
  it('a peer that is not loopback gets 403 even when the listener is bound wide', async (ctx) => {
    const external = Object.values(networkInterfaces())
      .flat()
      .find((a) => a !== undefined && a.family === 'IPv4' && !a.internal);
    // Without one, no request can come from anywhere but loopback: there is nothing to check.
    if (external === undefined) return ctx.skip('this machine has no non-loopback IPv4 address to connect from');
    const t = await startTestGateway({ internal: { host: '0.0.0.0', port: 0 } });
    try {
      const r = await fetch(`http://${external.address}:${t.gw.internal.port}/internal/connected`, { headers: { 'x-loopback-token': 'x' } });
      expect(r.status).toBe(403);
      const local = await fetch(`http://127.0.0.1:${t.gw.internal.port}/internal/connected`, { headers: { 'x-loopback-token': 'x' } });
      expect(local.status).toBe(401);
    } finally {
      await t.close();
    }
  });
});

void WebSocket;
