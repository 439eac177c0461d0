/**
 * Warm restart across real gateway processes (fake codex): the record is
 * written by a SIGTERM drain and by a SIGHUP drain, and the next process has
 * the recorded workspaces running, pre-started, before any client connects
 * (admin API), in recency order.
 */
import { existsSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import type WebSocket from 'ws';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { openWs } from './gateway-helpers.js';
import { startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { tempDir } from './helpers.js';

const SECRET = 'warm-restart-secret-warm-restart-secret-0000';
const ADMIN = 'warm-restart-admin-token-0000';

describe('warm restart across gateway processes', () => {
  const gateways: GatewayProcess[] = [];
  const sockets: WebSocket[] = [];
  let dir: string | undefined;

  afterAll(async () => {
    for (const ws of sockets) ws.terminate();
    for (const gw of gateways) await gw.stop('SIGKILL');
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  async function start(config: string): Promise<GatewayProcess> {
    const gw = await startGatewayProcess(config, { CXG_LOG_LEVEL: 'info' });
    gateways.push(gw);
    return gw;
  }

  async function connect(gw: GatewayProcess, id: string): Promise<void> {
    const ws = await openWs(gw.url, await signWorkspaceToken({ secret: SECRET, workspaceId: id, expiresIn: '10m' }));
    sockets.push(ws);
    const echoed = new Promise<void>((resolve) => ws.once('message', () => resolve()));
    ws.send('{"hello":1}');
    await echoed;
  }

  async function workspaces(gw: GatewayProcess): Promise<Array<{ workspace_id: string; state: string; prestarted: boolean; clients: number }>> {
    const r = await fetch(`${gw.internalUrl}/admin/workspaces`, { headers: { authorization: `Bearer ${ADMIN}` } });
    return ((await r.json()) as { workspaces: Array<{ workspace_id: string; state: string; prestarted: boolean; clients: number }> }).workspaces;
  }

  it('SIGTERM and SIGHUP drains record the live workspaces; each next process runs them before any client connects', async () => {
    dir = await tempDir('cxg-warm-proc-');
    const data = path.join(dir, 'data');
    const record = path.join(data, 'warm-restart.json');
    const config = await writeConfig(
      path.join(dir, 'gw.toml'),
      ['shards = 2', '[data]', `dir = ${JSON.stringify(data)}`, '[listen]', 'port = 0', '[codex]', `bin = ${JSON.stringify(fakeCodexBin())}`, '[auth.jwt]', `secret = ${JSON.stringify(SECRET)}`, '[admin]', `token = ${JSON.stringify(ADMIN)}`, '[spawn]', 'ready_timeout = "30s"', '[limits]', 'max_concurrent_spawns = 1', ''].join('\n'),
    );

    const first = await start(config);
    await connect(first, 'older');
    await connect(first, 'newer');
    expect((await first.stop('SIGTERM')).code).toBe(0);
    const written = JSON.parse(await readFile(record, 'utf8')) as { workspaces: Array<{ workspaceId: string }> };
    expect(written.workspaces.map((w) => w.workspaceId)).toEqual(['newer', 'older']);

    const second = await start(config);
    const done = await second.waitForLog((l) => l.msg === 'warm restart: done', 30_000);
    expect(done).toMatchObject({ started: 2, failed: 0 });
    // One start at a time (limits.max_concurrent_spawns = 1): they become ready in rank order.
    const ready = second.logs.filter((l) => l.msg === 'codex app-server ready').map((l) => [l.workspaceId, l.priority]);
    expect(ready).toEqual([['newer', 'prestart'], ['older', 'prestart']]);
    const running = await workspaces(second);
    expect(running.map((w) => w.workspace_id).sort()).toEqual(['newer', 'older']);
    expect(running.every((w) => w.state === 'running' && w.prestarted && w.clients === 0)).toBe(true);
    expect(existsSync(record)).toBe(false);

    // A client for a third workspace; then a hang-up drains like SIGTERM and records all three.
    await connect(second, 'third');
    expect((await second.stop('SIGHUP')).code).toBe(0);
    const again = JSON.parse(await readFile(record, 'utf8')) as { workspaces: Array<{ workspaceId: string }> };
    // The unclaimed pre-starts keep the activity of the first record.
    expect(again.workspaces.map((w) => w.workspaceId)).toEqual(['third', 'newer', 'older']);

    const third = await start(config);
    await third.waitForLog((l) => l.msg === 'warm restart: done', 30_000);
    expect((await workspaces(third)).map((w) => w.workspace_id).sort()).toEqual(['newer', 'older', 'third']);
    expect((await third.stop('SIGTERM')).code).toBe(0);
    // Three gateway processes one after another: generous for a loaded two-core machine.
  }, 240_000);
});
