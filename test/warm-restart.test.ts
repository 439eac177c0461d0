/**
 * Warm restart on the fake codex, gateways in this process sharing one data
 * directory: a drain records the live workspaces; the next start pre-starts
 * them, most recently active first, bounded by the setting, before any client
 * connects; client starts go before pre-starts at the spawn gate (the order
 * is pinned by events: a pre-start held at /readyz until a file exists);
 * /readyz answers 200 while the warm restart runs; unclaimed pre-starts are
 * reaped by the idle rules.
 */
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_FRONT_LIMITS, FileObjectStore, Gateway, JwtAuthenticator, signWorkspaceToken } from 'codex-app-gateway';
import type { GatewayOptions, SpawnConfig } from 'codex-app-gateway';
import type WebSocket from 'ws';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { JWT_SECRET, openWs } from './gateway-helpers.js';
import { quietLogger, spawnConfig, tempDir, waitFor } from './helpers.js';

interface Harness {
  gw: Gateway;
  /** Admissions at the spawn gate, in order. */
  admitted: Array<{ workspaceId: string; priority: string }>;
  httpUrl: string;
}

/** Gateways, drains and fake children one after another: generous for a loaded two-core machine. */
const TEST_TIMEOUT_MS = 180_000;

const roots: string[] = [];
const running: Gateway[] = [];
const sockets: WebSocket[] = [];

afterEach(async () => {
  for (const ws of sockets.splice(0)) ws.terminate();
  for (const gw of running.splice(0)) await gw.drain();
  for (const r of roots.splice(0)) await rm(r, { recursive: true, force: true });
});

async function dataDir(): Promise<string> {
  const root = await tempDir('cxg-warm-');
  roots.push(root);
  return root;
}

/** A gateway on `root` (homes, store and the record in it). */
async function startGateway(root: string, o: { max: number; spawns?: number; env?: Map<string, string[]>; reaper?: GatewayOptions['reaper'] }): Promise<Harness> {
  const admitted: Harness['admitted'] = [];
  const gw = await Gateway.start({
    supervisor: {
      codexBin: fakeCodexBin(),
      homeRoot: path.join(root, 'homes'),
      store: new FileObjectStore(path.join(root, 'store')),
      shards: 2,
      stopGraceMs: 2000,
      readyTimeoutMs: 30_000,
      limits: { maxConcurrentSpawns: o.spawns ?? 1 },
      configBuilder: (_tok, { workspaceId }): SpawnConfig => {
        const cfg = spawnConfig();
        cfg.env = [...(cfg.env ?? []), ...(o.env?.get(workspaceId) ?? [])];
        return cfg;
      },
      observer: { spawnAdmitted: (e) => admitted.push({ workspaceId: e.workspaceId, priority: e.priority }) },
    },
    auth: new JwtAuthenticator({ secret: JWT_SECRET }),
    listen: { host: '127.0.0.1', port: 0 },
    internal: { host: '127.0.0.1', port: 0 },
    limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 1024 * 1024 },
    shutdownBudgetMs: 20_000,
    log: quietLogger,
    warmRestart: { file: path.join(root, 'warm-restart.json'), max: o.max },
    ...(o.reaper === undefined ? {} : { reaper: o.reaper }),
  });
  running.push(gw);
  return { gw, admitted, httpUrl: gw.url.replace(/^ws:/, 'http:') };
}

async function stop(h: Harness): Promise<void> {
  running.splice(running.indexOf(h.gw), 1);
  await h.gw.drain();
}

/** A client of `id` that has had one frame echoed by its child (so the child runs and saw activity). */
async function client(h: Harness, id: string): Promise<WebSocket> {
  const ws = await openWs(h.gw.url, await signWorkspaceToken({ secret: JWT_SECRET, workspaceId: id, expiresIn: '10m' }));
  sockets.push(ws);
  const echoed = new Promise<void>((resolve) => ws.once('message', () => resolve()));
  ws.send(JSON.stringify({ hello: id }));
  await echoed;
  return ws;
}

async function live(h: Harness): Promise<Array<{ workspaceId: string; state: string; prestarted: boolean }>> {
  const stats = await h.gw.sup.stats();
  return stats.flatMap((s) => s.workspaces.map((w) => ({ workspaceId: w.workspaceId, state: w.state, prestarted: w.prestarted !== undefined })));
}

async function readyz(h: Harness): Promise<{ status: number; body: { status: string; warmRestart: { state: string; total: number; started: number } } }> {
  const r = await fetch(`${h.httpUrl}/readyz`);
  return { status: r.status, body: (await r.json()) as never };
}

/** Clients of `ids`, one after another, so their last activity follows that order. */
async function liveThenDrain(root: string, ids: string[], max = 64): Promise<void> {
  const h = await startGateway(root, { max, spawns: 2 });
  for (const id of ids) {
    await client(h, id);
    // Distinct milliseconds of activity, so the recency order is strict.
    const t = Date.now();
    await waitFor(() => Date.now() > t, 1000);
  }
  await stop(h);
}

describe('warm restart', () => {
  it('a drain records the live workspaces, most recently active first; the next start pre-starts them in that order, bounded by warm_restart.max, before any client', async () => {
    const root = await dataDir();
    await liveThenDrain(root, ['w0', 'w1', 'w2', 'w3', 'w4']);
    const record = JSON.parse(await readFile(path.join(root, 'warm-restart.json'), 'utf8')) as { workspaces: Array<{ workspaceId: string }> };
    expect(record.workspaces.map((w) => w.workspaceId)).toEqual(['w4', 'w3', 'w2', 'w1', 'w0']);

    const h = await startGateway(root, { max: 3 });
    await h.gw.warm?.done;
    // The record is taken: a later crash does not bring back this set.
    expect(existsSync(path.join(root, 'warm-restart.json'))).toBe(false);
    expect(h.gw.front.connectionCount).toBe(0);
    const now = await live(h);
    expect(now.map((w) => w.workspaceId).sort()).toEqual(['w2', 'w3', 'w4']);
    expect(now.every((w) => w.state === 'running' && w.prestarted)).toBe(true);
    expect(h.admitted).toEqual(['w4', 'w3', 'w2'].map((workspaceId) => ({ workspaceId, priority: 'prestart' })));
    expect((await readyz(h)).body.warmRestart).toMatchObject({ state: 'done', total: 3, started: 3 });

    // A client claims a pre-started child: it is no longer marked pre-started.
    await client(h, 'w3');
    expect((await live(h)).find((w) => w.workspaceId === 'w3')?.prestarted).toBe(false);
  }, TEST_TIMEOUT_MS);

  it('a client waiting for its workspace starts before the queued pre-starts of others, and one arriving for a queued pre-start moves it ahead of the rest; /readyz answers 200 meanwhile', async () => {
    const root = await dataDir();
    await liveThenDrain(root, ['p3', 'p2', 'p1', 'p0']);
    // p0 (the most recent) is held at /readyz until `release` exists: the gate's only permit stays taken.
    const release = path.join(root, 'release');
    const env = new Map([['p0', [`FAKE_CODEX_READY_WHEN=${release}`]]]);
    const h = await startGateway(root, { max: 64, spawns: 1, env });
    await waitFor(() => h.gw.sup.spawnQueue.prestart === 3, 20_000, 'p1..p3 queued behind p0');
    expect(h.admitted).toEqual([{ workspaceId: 'p0', priority: 'prestart' }]);

    // Ready while the warm restart is under way: clients are let in, and go first.
    const ready = await readyz(h);
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ status: 'ready', warmRestart: { state: 'running', total: 4 } });

    const fresh = client(h, 'fresh');
    await waitFor(() => h.gw.sup.spawnQueue.client === 1, 20_000, 'the client start queued');
    const claimed = client(h, 'p3');
    await waitFor(() => h.gw.sup.spawnQueue.client === 2, 20_000, 'p3 promoted');
    expect(h.gw.sup.spawnQueue).toEqual({ client: 2, prestart: 2 });

    await writeFile(release, '');
    await Promise.all([fresh, claimed]);
    await h.gw.warm?.done;
    expect(h.admitted.map((a) => `${a.workspaceId}:${a.priority}`)).toEqual(['p0:prestart', 'fresh:client', 'p3:client', 'p1:prestart', 'p2:prestart']);
    expect((await live(h)).length).toBe(5);
  }, TEST_TIMEOUT_MS);

  it('pre-started children no client claims are stopped by the idle reaper; a claimed one stays', async () => {
    const root = await dataDir();
    await liveThenDrain(root, ['idle1', 'kept', 'idle2']);
    const h = await startGateway(root, { max: 64, spawns: 2, reaper: { intervalMs: 100, idleAfterMs: 1500, hardIdleAfterMs: 3_600_000 } });
    await h.gw.warm?.done;
    await client(h, 'kept');
    await waitFor(async () => (await live(h)).length === 1, 20_000, 'unclaimed pre-starts reaped');
    expect(await live(h)).toEqual([{ workspaceId: 'kept', state: 'running', prestarted: false }]);
  }, TEST_TIMEOUT_MS);

  it('warm_restart.max = 0 is off: a start with it neither uses nor keeps the record; a drain with it still writes one for the next start', async () => {
    const root = await dataDir();
    const file = path.join(root, 'warm-restart.json');
    // A gateway with it off drains: the next start, with it on, still comes back warm (a deploy that turns it on).
    await liveThenDrain(root, ['a', 'b'], 0);
    expect(existsSync(file)).toBe(true);
    const on = await startGateway(root, { max: 64 });
    await on.gw.warm?.done;
    expect((await live(on)).map((w) => w.workspaceId).sort()).toEqual(['a', 'b']);
    await stop(on);

    expect(existsSync(file)).toBe(true);
    const h = await startGateway(root, { max: 0 });
    expect(existsSync(file)).toBe(false);
    expect(await live(h)).toEqual([]);
    expect(h.admitted).toEqual([]);
    expect((await readyz(h)).body.warmRestart.state).toBe('off');
  }, TEST_TIMEOUT_MS);

  it('a malformed record is ignored: the gateway starts cold', async () => {
    const root = await dataDir();
    await writeFile(path.join(root, 'warm-restart.json'), '{"version":1,"workspaces":[{"workspaceId":"../x","lastActivity":1}');
    const h = await startGateway(root, { max: 64 });
    expect(await live(h)).toEqual([]);
    expect(h.gw.warm?.progress.state).toBe('done');
  }, TEST_TIMEOUT_MS);
});
