/**
 * What an operator sees: /metrics after a real session, the admin API, the
 * drain command with its progress, and the logs.
 */
import { rm } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultCodexBin } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { closeOf, openWs, refusedUpgrade, rpc, startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { BIN, startGatewayProcess, writeConfig } from './gateway-process.js';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { spawnConfig, tempDir, waitFor } from './helpers.js';
import { createThreadLogger } from '../src/shared/logger.js';
import { progressBar } from '../src/main/cli/drain.js';

const ADMIN = 'admin-token-admin-token-0123456789';

/** The value of one sample in Prometheus text format, or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return undefined;
}

describe('/metrics after a real session (real codex)', () => {
  let mock: ResponsesMock;
  let t: TestGateway;
  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['metrics', ' ok'] });
    t = await startTestGateway({}, { codexBin: defaultCodexBin(), configBuilder: () => spawnConfig({}, mock.baseUrl) });
  });
  afterAll(async () => {
    await t?.close();
    await mock?.close();
  });

  it('counts the spawn, the frames both ways, the download and the upload, and reports every thread', async () => {
    const c = await AppServerClient.connect(t.url, { token: await t.token('metrics-ws') });
    await c.initialize();
    const thread = await c.startThread();
    const turn = await c.runTurn(thread, 'count me');
    expect(turn.text).toBe('metrics ok');
    let text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(sample(text, 'cxg_clients_connected')).toBe(1);
    expect(sample(text, 'cxg_children', { state: 'running' })).toBeDefined();
    const running = text.split('\n').filter((l) => l.startsWith('cxg_children{') && l.includes('state="running"')).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
    expect(running).toBe(1);
    expect(sample(text, 'cxg_child_processes')).toBe(1);
    expect(sample(text, 'cxg_spawns_total', { result: 'ok' })).toBe(1);
    expect(sample(text, 'cxg_spawn_duration_seconds_count', { result: 'ok' })).toBe(1);
    expect(sample(text, 'cxg_frames_total', { direction: 'in' })).toBeGreaterThanOrEqual(3);
    expect(sample(text, 'cxg_frames_total', { direction: 'out' })).toBeGreaterThan(5);
    expect(sample(text, 'cxg_frame_bytes_total', { direction: 'out' })).toBeGreaterThan(100);
    expect(sample(text, 'cxg_archive_transfers_total', { op: 'download', result: 'ok' })).toBe(1);
    expect(sample(text, 'cxg_event_loop_delay_p99_seconds', { thread: 'main' })).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'cxg_event_loop_delay_p99_seconds', { thread: 'shard-0' })).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'cxg_event_loop_delay_p99_seconds', { thread: 'shard-1' })).toBeGreaterThanOrEqual(0);
    expect(sample(text, 'process_resident_memory_bytes')).toBeGreaterThan(10 * 1024 * 1024);
    expect(sample(text, 'cxg_spool_homes')).toBe(0);

    await c.close();
    await t.gw.sup.shutdown({ workspaceId: 'metrics-ws' });
    await waitFor(async () => sample(await (await fetch(`${t.httpUrl}/metrics`)).text(), 'cxg_archive_transfers_total', { op: 'upload', result: 'ok' }) === 1, 5000, 'upload to be counted');
    text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(sample(text, 'cxg_clients_connected')).toBe(0);
    expect(sample(text, 'cxg_child_processes')).toBe(0);
    expect(sample(text, 'cxg_workspace_stops_total', { reason: 'shutdown', saved: 'true' })).toBe(1);
    expect(sample(text, 'cxg_archive_bytes_total', { op: 'upload' })).toBeGreaterThan(1000);
  });

  it('counts refused upgrades by code', async () => {
    expect((await refusedUpgrade(t.url, { authorization: 'Bearer nope' })).status).toBe(401);
    expect((await refusedUpgrade(t.url, {})).status).toBe(401);
    const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(sample(text, 'cxg_auth_failures_total', { code: 'GW_UNAUTHORIZED' })).toBe(2);
  });
});

describe('admin API', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway({ adminToken: ADMIN });
  });
  afterAll(async () => {
    await t?.close();
  });
  const admin = (p: string, init: RequestInit = {}, token = ADMIN) => fetch(`${t.internalUrl}${p}`, { ...init, headers: { authorization: `Bearer ${token}`, ...(init.headers ?? {}) } });

  it('refuses requests without or with a wrong token', async () => {
    expect((await fetch(`${t.internalUrl}/admin/workspaces`)).status).toBe(401);
    const wrong = await admin('/admin/workspaces', {}, 'x'.repeat(ADMIN.length));
    expect(wrong.status).toBe(401);
    expect(await wrong.json()).toMatchObject({ error: { code: 'GW_UNAUTHORIZED' } });
    expect((await admin('/admin/drain', { method: 'POST' }, 'wrong')).status).toBe(401);
  });

  it('GET /admin/workspaces lists live workspaces with pid, rss, clients and activity; GET one; 404 and 400', async () => {
    const ws = await openWs(t.url, await t.token('admin-a'));
    const info = await rpc<{ pid: number }>(ws, 'fake/info');
    const list = (await (await admin('/admin/workspaces')).json()) as { workspaces: Array<Record<string, unknown>>; spool: unknown[] };
    const a = list.workspaces.find((w) => w.workspace_id === 'admin-a');
    expect(a).toMatchObject({ state: 'running', pid: info.pid, clients: 1, shard: t.gw.sup.shardFor('admin-a') });
    expect(a?.rss_bytes).toBeGreaterThan(1024 * 1024);
    expect(Date.parse(a?.last_activity as string)).toBeGreaterThan(Date.now() - 60_000);
    expect(Date.parse(a?.started_at as string)).toBeGreaterThan(Date.now() - 60_000);
    expect(list.spool).toEqual([]);
    const one = await admin('/admin/workspaces/admin-a');
    expect(one.status).toBe(200);
    expect(await one.json()).toMatchObject({ workspace_id: 'admin-a', pid: info.pid });
    const missing = await admin('/admin/workspaces/nobody');
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ error: { code: 'GW_NOT_FOUND' } });
    const bad = await admin('/admin/workspaces/..');
    expect([400, 404]).toContain(bad.status);
    const bad2 = await admin(`/admin/workspaces/${'%20'.repeat(3)}`);
    expect(bad2.status).toBe(400);
    expect(await bad2.json()).toMatchObject({ error: { code: 'GW_BAD_WORKSPACE_ID' } });
    expect((await admin('/admin/nothing-here')).status).toBe(404);
    ws.close();
  });

  it('POST /admin/workspaces/:id/shutdown uploads and stops; its clients get 1001', async () => {
    const ws = await openWs(t.url, await t.token('admin-b'));
    await rpc(ws, 'fake/writeFile', { path: 'kept.txt', content: 'yes' });
    const closed = closeOf(ws);
    const r = await admin('/admin/workspaces/admin-b/shutdown', { method: 'POST' });
    expect(r.status).toBe(200);
    expect(await r.json()).toMatchObject({ workspace_id: 'admin-b', stopped: true, saved: true });
    expect((await closed).code).toBe(1001);
    expect((await admin('/admin/workspaces/admin-b')).status).toBe(404);
    expect((await admin('/admin/workspaces/admin-b/shutdown', { method: 'POST' })).status).toBe(404);
  });

  it('failed starts are counted by error code in /metrics', async () => {
    t.childEnv.set('admin-broken', ['FAKE_CODEX_MODE=exit-before-banner']);
    const ws = await openWs(t.url, await t.token('admin-broken'));
    expect((await closeOf(ws)).code).toBe(1011);
    const text = await (await fetch(`${t.httpUrl}/metrics`)).text();
    expect(sample(text, 'cxg_spawns_total', { result: 'failed', code: 'GW_SPAWN_EXITED' })).toBe(1);
  });
});

describe('admin API off', () => {
  it('answers 403 without admin.token', async () => {
    const t = await startTestGateway();
    try {
      const r = await fetch(`${t.internalUrl}/admin/workspaces`, { headers: { authorization: `Bearer ${ADMIN}` } });
      expect(r.status).toBe(403);
      expect(await r.json()).toMatchObject({ error: { code: 'GW_FORBIDDEN' } });
    } finally {
      await t.close();
    }
  });
});

describe('drain with progress', () => {
  it('POST /admin/drain streams one line per stopped workspace and ends with the totals', async () => {
    const t = await startTestGateway({ adminToken: ADMIN });
    try {
      const sockets = [];
      for (const id of ['drain-a', 'drain-b', 'drain-c']) {
        const ws = await openWs(t.url, await t.token(id));
        await rpc(ws, 'fake/info');
        sockets.push(ws);
      }
      const r = await fetch(`${t.internalUrl}/admin/drain`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } });
      expect(r.status).toBe(200);
      expect(r.headers.get('content-type')).toBe('application/x-ndjson');
      const lines = (await r.text()).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(lines[0]).toMatchObject({ event: 'start', total: 3 });
      const progress = lines.filter((l) => l.event === 'progress');
      expect(progress.map((p) => p.saved)).toEqual([1, 2, 3]);
      expect(new Set(progress.map((p) => p.workspace_id))).toEqual(new Set(['drain-a', 'drain-b', 'drain-c']));
      expect(lines.at(-1)).toMatchObject({ event: 'done', saved: 3, unsaved: 0, timed_out: false });
      expect((await t.gw.drained)?.saved).toBe(3);
    } finally {
      await t.close();
    }
  });

  it('codex-app-gateway drain follows a real gateway process to the end and exits 0', async () => {
    const dir = await tempDir('cxg-drain-cli-');
    const config = await writeConfig(
      path.join(dir, 'gw.toml'),
      ['shards = 2', '[data]', `dir = ${JSON.stringify(dir)}`, '[listen]', 'port = 0', '[codex]', `bin = ${JSON.stringify(fakeCodexBin())}`, '[admin]', `token = ${JSON.stringify(ADMIN)}`, ''].join('\n'),
    );
    const gw = await startGatewayProcess(config);
    try {
      const token = await runCli(['token', '--workspace', 'cli-drain', '--config', config]);
      const ws = await openWs(gw.url, token.stdout.trim());
      await rpc(ws, 'fake/writeFile', { path: 'x.txt', content: 'x' });
      const out = await runCli(['drain', '--url', gw.internalUrl, '--token', ADMIN]);
      expect(out.code).toBe(0);
      expect(out.stderr).toContain('drain: 1 workspace(s) to stop and upload');
      expect(out.stderr).toContain('drain: 1 of 1 uploaded (cli-drain)');
      expect(out.stdout).toContain('drain done: 1 uploaded, 0 kept on disk');
      expect((await gw.exited).code).toBe(0);
    } finally {
      await gw.stop('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the progress bar fills as homes are uploaded', () => {
    expect(progressBar(0, 4)).toBe(`[${'-'.repeat(30)}] 0/4 uploaded`);
    expect(progressBar(2, 4)).toBe(`[${'#'.repeat(15)}${'-'.repeat(15)}] 2/4 uploaded`);
    expect(progressBar(0, 0)).toBe(`[${'#'.repeat(30)}] 0/0 uploaded`);
  });
});

describe('logs', () => {
  it('redact tokens, secrets and Authorization headers', () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const log = createThreadLogger({ level: 'info', pretty: false, base: { thread: 'test' }, destination: sink });
    log.info({ token: 'T0K3N', headers: { authorization: 'Bearer SECRET1' }, req: { headers: { authorization: 'Bearer SECRET2' } }, env: { OPENAI_API_KEY: 'sk-x' }, workspaceId: 'ws-1' }, 'hello');
    log.info({ child: { wsToken: 'WS-TOKEN', loopbackToken: 'LB' } }, 'nested');
    const text = lines.join('');
    for (const secret of ['T0K3N', 'SECRET1', 'SECRET2', 'sk-x', 'WS-TOKEN', 'LB"']) expect(text).not.toContain(secret);
    expect(text).toContain('"workspaceId":"ws-1"');
    expect(text).toContain('[redacted]');
  });

  it('attribute child output to its workspace, and carry shard and thread', async () => {
    const dir = await tempDir('cxg-logs-');
    const config = await writeConfig(path.join(dir, 'gw.toml'), ['shards = 2', '[data]', `dir = ${JSON.stringify(dir)}`, '[listen]', 'port = 0', '[codex]', `bin = ${JSON.stringify(fakeCodexBin())}`, ''].join('\n'));
    const gw = await startGatewayProcess(config);
    try {
      const token = (await runCli(['token', '--workspace', 'log-ws', '--config', config])).stdout.trim();
      const ws = await openWs(gw.url, token);
      const info = await rpc<{ pid: number }>(ws, 'fake/info');
      const line = await gw.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('fake-codex started'));
      expect(line).toMatchObject({ workspaceId: 'log-ws', pid: info.pid, stream: 'stdout' });
      expect(line.msg).toContain('[codex log-ws]');
      expect(line.thread).toMatch(/^shard-\d$/);
      expect(typeof line.shard).toBe('number');
      ws.close();
    } finally {
      await gw.stop('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    }
  });
});

function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // 'close', not 'exit': what it printed last (a token, the drain's summary) may not be read by its exit.
    p.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
