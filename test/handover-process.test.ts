/**
 * Handover restart across real gateway processes and the real codex: a new
 * gateway started with the same data.dir takes the running one's children
 * over (restart.handover), and clients find their codex process, and their
 * thread, where they left them. Also: a successor killed half-way loses
 * nothing and leaves no process; adopted children are reaped when idle and
 * their homes stored; SIGTERM still drains and stores everything.
 */
import { rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess, LogLine } from './gateway-process.js';
import { processEnded } from '../src/shared/proc.js';
import { freePort, homeState, tempDir, waitFor } from './helpers.js';

const SECRET = 'handover-secret-handover-secret-handover-00';
const DELTAS = ['Same', ' process', ' after', ' the', ' restart.'];


/** The handover exchange of a successor that exits as soon as it has the records (handover.ts). */
async function askAndDie(socketPath: string): Promise<Array<{ workspaceId: string; pid: number }>> {
  const text = await new Promise<string>((resolve, reject) => {
    const sock = net.connect(socketPath, () => sock.write(`${JSON.stringify({ type: 'handover', pid: process.pid })}\n`));
    let got = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => (got += chunk));
    sock.on('error', reject);
    sock.on('close', () => resolve(got));
  });
  return (JSON.parse(text) as { records: Array<{ workspaceId: string; pid: number }> }).records;
}

describe('handover restart (real codex)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  const env: NodeJS.ProcessEnv = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
  const gateways: GatewayProcess[] = [];
  const children = new Set<number>();

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: DELTAS });
    dir = await tempDir('cxg-handover-');
    const extra = ['[internal]', `port = ${await freePort()}`, '[restart]', 'handover = true', '[warm_restart]', 'max = 0', '[reaper]', 'idle_after = "30s"', 'interval = "1s"', '[limits]', 'max_children = 1', '[shutdown]', 'budget = "60s"'];
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl, extra }));
  });
  afterAll(async () => {
    for (const g of gateways) await g.stop('SIGKILL');
    for (const pid of children) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
  });

  // A test that broke must not hand its gateway's children to the next test's first gateway.
  beforeEach(async () => {
    for (const g of gateways) await g.stop('SIGKILL');
  });

  const start = async (): Promise<GatewayProcess> => {
    const g = await startGatewayProcess(config, env, 60_000);
    gateways.push(g);
    return g;
  };
  const readyPids = (g: GatewayProcess): number[] => g.logs.filter((l) => l.msg === 'codex app-server ready').map((l) => l.pid as number);
  const adopted = (g: GatewayProcess): LogLine[] => g.logs.filter((l) => l.msg === 'handover: child adopted');

  /** Connects, resumes the thread by id, runs a turn. */
  const continueThread = async (g: GatewayProcess, token: string, threadId: string, prompt: string): Promise<AppServerClient> => {
    const c = await AppServerClient.connect(g.url, { token });
    await c.initialize();
    const resumed = await c.request<{ thread: { id: string } }>('thread/resume', { threadId });
    expect(resumed.thread.id).toBe(threadId);
    const turn = await c.runTurn(threadId, prompt, 60_000);
    expect(turn.status).toBe('completed');
    expect(turn.deltas).toEqual(DELTAS);
    return c;
  };

  it('the successor adopts the child: same pid, the thread resumes and a turn streams, no new spawn; then it is reaped when idle and its home stored', async () => {
    const workspaceId = 'handover-kept';
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId, expiresIn: '30m' });
    const a = await start();
    const c = await AppServerClient.connect(a.url, { token });
    await c.initialize();
    const threadId = (await c.request<{ thread: { id: string } }>('thread/start', {})).thread.id;
    expect((await c.runTurn(threadId, 'turn 1', 60_000)).status).toBe('completed');
    const pid = readyPids(a)[0] as number;
    children.add(pid);

    // The successor asks; the old gateway closes its client with 1012, hands over and exits 0.
    const closed = c.whenClosed();
    const b = await start();
    expect((await closed).code).toBe(1012);
    expect((await a.exited).code).toBe(0);
    // Adoption runs in the shards before their recovery; a client that came first would wait for it.
    await b.waitForLog((l) => l.msg === 'handover: children adopted', 60_000);
    expect(adopted(b).map((l) => [l.workspaceId, l.pid])).toEqual([[workspaceId, pid]]);
    expect(await processEnded(pid)).toBe(false);

    // The client comes back: its initialize answer without a spawn, the same process, the same thread.
    const again = await continueThread(b, token, threadId, 'turn 2 after the handover');
    expect(readyPids(b)).toEqual([]);
    expect(await processEnded(pid)).toBe(false);
    await again.close();

    // Idle: the adopted child is stopped like one of the gateway's own, and its home stored.
    const stopped = await b.waitForLog((l) => l.msg === 'codex app-server stopped' && l.workspaceId === workspaceId, 150_000);
    expect(stopped).toMatchObject({ pid, reason: 'idle' });
    await waitFor(async () => (await homeState(path.join(dir, 'homes'), workspaceId))?.stored === true, 60_000, 'the adopted child\'s home to be stored');
    await waitFor(() => processEnded(pid), 20_000, 'the adopted child to be gone');

    // SIGTERM keeps the safe path: a new child, a turn, then a drain that stops it and stores the home.
    const d = await continueThread(b, token, threadId, 'turn 3 after the idle stop');
    const fresh = readyPids(b)[0] as number;
    children.add(fresh);
    expect(fresh).not.toBe(pid);
    const drained = d.whenClosed();
    expect((await b.stop('SIGTERM')).code).toBe(0);
    expect((await drained).code).toBe(1001);
    expect(b.logs.find((l) => l.msg === 'drain: done')).toMatchObject({ saved: 1, unsaved: 0 });
    expect((await homeState(path.join(dir, 'homes'), workspaceId))?.stored).toBe(true);
    await waitFor(() => processEnded(fresh), 20_000, 'the drained child to be gone');
  }, 400_000);

  it('a successor killed half-way loses nothing and leaves no process: the next start stops the child and stores its home', async () => {
    const workspaceId = 'handover-orphan';
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId, expiresIn: '30m' });
    const a = await start();
    const c = await AppServerClient.connect(a.url, { token });
    await c.initialize();
    const threadId = (await c.request<{ thread: { id: string } }>('thread/start', {})).thread.id;
    expect((await c.runTurn(threadId, 'turn 1', 60_000)).status).toBe('completed');
    const pid = readyPids(a)[0] as number;
    children.add(pid);

    // A successor that asks, gets the records and dies before it adopts anything: this test speaks for it.
    const records = await askAndDie(path.join(dir, 'handover.sock'));
    expect(records.map((r) => [r.workspaceId, r.pid])).toEqual([[workspaceId, pid]]);
    expect((await a.exited).code).toBe(0);
    expect(await processEnded(pid)).toBe(false);
    void c.close();

    // The next start has no predecessor: its recovery stops the child and stores the home.
    const n = await start();
    await waitFor(() => processEnded(pid), 60_000, 'the left child to be stopped');
    await waitFor(async () => (await homeState(path.join(dir, 'homes'), workspaceId))?.stored === true, 60_000, 'the left home to be stored');
    const d = await continueThread(n, token, threadId, 'turn 2 after the failed handover');
    for (const p of readyPids(n)) children.add(p);
    await d.close();
    expect((await n.stop('SIGTERM')).code).toBe(0);
  }, 400_000);

  it('an adopted child holds a child slot (limits.max_children = 1) and is evicted for another workspace like one started here; its home is stored', async () => {
    const first = 'handover-evicted';
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: first, expiresIn: '30m' });
    const a = await start();
    const c = await AppServerClient.connect(a.url, { token });
    await c.initialize();
    const threadId = (await c.request<{ thread: { id: string } }>('thread/start', {})).thread.id;
    expect((await c.runTurn(threadId, 'turn 1', 60_000)).status).toBe('completed');
    const pid = readyPids(a).at(-1) as number;
    children.add(pid);
    const b = await start();
    expect((await a.exited).code).toBe(0);
    await b.waitForLog((l) => l.msg === 'handover: children adopted', 60_000);
    expect(adopted(b).map((l) => l.pid)).toEqual([pid]);

    // Another workspace: the one slot is the adopted child's, which has no client: it is stopped to make room.
    const other = await AppServerClient.connect(b.url, { token: await signWorkspaceToken({ secret: SECRET, workspaceId: 'handover-newcomer', expiresIn: '30m' }) });
    await other.initialize();
    for (const p of readyPids(b)) children.add(p);
    expect(b.logs.find((l) => l.msg === 'stopping the least recently active child to make room')).toMatchObject({ workspaceId: first });
    // The slot is free once the child has exited; the stop's own log line may come a moment later.
    expect(await b.waitForLog((l) => l.msg === 'codex app-server stopped' && l.workspaceId === first, 30_000)).toMatchObject({ pid, reason: 'evict' });
    await waitFor(async () => (await homeState(path.join(dir, 'homes'), first))?.stored === true, 60_000, 'the evicted child\'s home to be stored');
    await waitFor(() => processEnded(pid), 20_000, 'the evicted child to be gone');
    await other.close();
    expect((await b.stop('SIGTERM')).code).toBe(0);
  }, 300_000);

  it('SIGTERM drains adopted children like its own: stopped, the home stored, the process gone', async () => {
    const workspaceId = 'handover-drained';
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId, expiresIn: '30m' });
    const a = await start();
    const c = await AppServerClient.connect(a.url, { token });
    await c.initialize();
    const threadId = (await c.request<{ thread: { id: string } }>('thread/start', {})).thread.id;
    expect((await c.runTurn(threadId, 'turn 1', 60_000)).status).toBe('completed');
    const pid = readyPids(a).at(-1) as number;
    children.add(pid);
    const b = await start();
    expect((await a.exited).code).toBe(0);
    await b.waitForLog((l) => l.msg === 'handover: children adopted', 60_000);
    expect(adopted(b).map((l) => l.pid)).toEqual([pid]);
    const exitB = await b.stop('SIGTERM');
    expect(exitB, JSON.stringify(b.logs.slice(-6).map((l) => l.msg))).toEqual({ code: 0, signal: null });
    expect(b.logs.find((l) => l.msg === 'codex app-server stopped' && l.workspaceId === workspaceId)).toMatchObject({ pid, reason: 'drain' });
    // Homes earlier tests left to recovery may still be in the spool: only this workspace's home is judged.
    expect(b.logs.filter((l) => l.msg === 'drain: home not uploaded; kept on disk' && l.workspaceId === workspaceId)).toEqual([]);
    expect((await homeState(path.join(dir, 'homes'), workspaceId))?.stored).toBe(true);
    await waitFor(() => processEnded(pid), 20_000, 'the drained adopted child to be gone');
  }, 300_000);
});

