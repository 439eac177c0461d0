/**
 * A burst of 1,000 upgrades whose tokens the remote verifier has not seen:
 * every one takes the asynchronous path (answered after an await). uWS
 * 20.30's `res.cork(() => res.upgrade())` after an await could read the
 * freed HTTP state of the socket it had just upgraded and close it (a 101,
 * then a bare TCP close: 1006). Every client must get its 101 and an answer.
 */
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { RemoteAuthenticator } from 'codex-app-gateway';
import { startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';

const CLIENTS = Number(process.env.CXG_TEST_BURST_CLIENTS ?? 1000);

interface Outcome {
  ok: boolean;
  code?: number;
  error?: string;
}

function client(url: string, token: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    let done = false;
    const finish = (o: Outcome): void => {
      if (done) return;
      done = true;
      resolve(o);
      ws.terminate();
    };
    ws.on('open', () => ws.send(JSON.stringify({ id: 1, method: 'fake/info', params: {} })));
    ws.on('message', () => finish({ ok: true }));
    ws.on('close', (code) => finish({ ok: false, code }));
    ws.on('unexpected-response', (_req, res) => finish({ ok: false, error: `HTTP ${res.statusCode}` }));
    ws.on('error', (err) => finish({ ok: false, error: err.message }));
  });
}

describe('a burst of upgrades on the asynchronous auth path (fake codex)', () => {
  let t: TestGateway;
  let verifier: Server;
  beforeAll(async () => {
    verifier = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        // Every token is new to the gateway and grants one shared workspace.
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ workspace_id: 'ws-burst' }));
      });
    });
    await new Promise<void>((r) => verifier.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(verifier.address() as AddressInfo).port}/verify`;
    t = await startTestGateway({ auth: new RemoteAuthenticator({ url, cacheMs: 60_000, timeoutMs: 60_000 }) });
    // Start the workspace's child first, so the burst measures upgrades, not a start.
    expect(await client(t.url, 'warm-up')).toEqual({ ok: true });
  });
  afterAll(async () => {
    await t?.close();
    await new Promise((r) => verifier?.close(r));
  });

  it(`${CLIENTS} clients, each with a token not yet cached: every one is upgraded and answered`, async () => {
    const outcomes = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(t.url, `burst-${i}-${Math.random()}`)));
    const failed = outcomes.filter((o) => !o.ok);
    const byKind = new Map<string, number>();
    for (const f of failed) byKind.set(f.error ?? `close ${f.code}`, (byKind.get(f.error ?? `close ${f.code}`) ?? 0) + 1);
    console.log(`upgrade burst: ${CLIENTS} clients, ${failed.length} failed ${JSON.stringify(Object.fromEntries(byKind))}`);
    expect(failed).toEqual([]);
  }, 180_000);
});
