/**
 * The product's promise, end to end with the real codex: a conversation goes
 * on after every kind of stop. One thread, one turn per stop: a gateway
 * SIGTERM and start, an idle reap, a child SIGKILL, a gateway SIGKILL (the
 * next start's recovery). After each, a client resumes the thread by id and
 * a new turn streams the model's reply; at the end `thread/read` holds every
 * turn. Once with the file store and once with S3 (s3rver). The gateway
 * SIGKILL leaves codex's sqlite files with unflushed write-ahead logs: the
 * restored database must work, not only list.
 *
 * The gateway's data directory is a git repository, as a checkout of the
 * gateway would be: the thread must not record it as its own.
 */
import { execFileSync } from 'node:child_process';
import { rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { startS3rver } from './fixtures/s3rver.js';
import type { S3rverHandle } from './fixtures/s3rver.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess, LogLine } from './gateway-process.js';
import { processAlive, tempDir, waitFor } from './helpers.js';

const SECRET = 'resume-secret-resume-secret-resume-secret';
const DELTAS = ['Still', ' here', ' after', ' the', ' stop.'];

interface Turn {
  id: string;
  status: string;
  items: Array<{ type: string; text?: string }>;
}

describe.each(['file', 's3'] as const)('a thread goes on after every stop (real codex, %s store)', (kind) => {
  let mock: ResponsesMock;
  let s3: S3rverHandle | undefined;
  let dir: string;
  let config: string;
  let env: NodeJS.ProcessEnv;
  let gw: GatewayProcess | undefined;
  const children = new Set<number>();

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: DELTAS });
    dir = await tempDir(`cxg-resume-${kind}-`);
    execFileSync('git', ['init', '-q', dir]);
    execFileSync('git', ['-C', dir, 'remote', 'add', 'origin', 'https://example.invalid/gateway.git']);
    const extra = ['[reaper]', 'idle_after = "2s"', 'interval = "1s"', '[shutdown]', 'budget = "60s"'];
    env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
    if (kind === 's3') {
      s3 = await startS3rver();
      extra.push('[store]', `url = "s3://${s3.bucket}/resume"`, '[store.s3]', `endpoint = ${JSON.stringify(s3.endpoint)}`, 'force_path_style = true');
      env = { ...env, AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey };
    }
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl, extra }));
  });
  afterAll(async () => {
    await gw?.stop('SIGKILL');
    for (const pid of children) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await mock?.close();
    await s3?.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  const start = async (): Promise<GatewayProcess> => {
    gw = await startGatewayProcess(config, env, 30_000);
    return gw;
  };
  const readyLines = (g: GatewayProcess): LogLine[] => g.logs.filter((l) => l.msg === 'codex app-server ready');

  /** Connects, resumes the thread by id, runs a turn; returns the client (open). */
  const continueThread = async (g: GatewayProcess, token: string, threadId: string, prompt: string): Promise<AppServerClient> => {
    const c = await AppServerClient.connect(g.url, { token });
    await c.initialize();
    const resumed = await c.request<{ thread: { id: string } }>('thread/resume', { threadId });
    expect(resumed.thread.id).toBe(threadId);
    const turn = await c.runTurn(threadId, prompt, 60_000);
    expect(turn.status).toBe('completed');
    expect(turn.deltas).toEqual(DELTAS);
    for (const l of readyLines(g)) children.add(l.pid as number);
    return c;
  };

  it('gateway SIGTERM, idle reap, child SIGKILL, gateway SIGKILL: each time the thread resumes and a new turn streams', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: `resume-${kind}`, expiresIn: '30m' });
    let g = await start();

    // A first turn.
    let c = await AppServerClient.connect(g.url, { token });
    const init = await c.initialize();
    expect(init.codexHome).toBe(path.join(dir, 'homes', `resume-${kind}`, 'codex-home'));
    const started = await c.request<{ thread: { id: string; gitInfo: unknown; cwd: string } }>('thread/start', {});
    const threadId = started.thread.id;
    // The gateway's repository above homes.root is not the thread's.
    expect(started.thread.gitInfo).toBeNull();
    expect(started.thread.cwd).toBe(path.join(init.codexHome, 'workspace'));
    expect((await c.runTurn(threadId, 'turn 1', 60_000)).status).toBe('completed');
    await c.close();

    // 1. Gateway SIGTERM: it drains and stores the home; a new gateway resumes.
    expect((await g.stop('SIGTERM')).code).toBe(0);
    // The operator's terminal shows log lines only: no runtime warnings (the
    // AWS SDK warns about Node 20, which this gateway requires).
    expect(g.raw.filter((l) => /warning/i.test(l)), 'warnings printed by the gateway').toEqual([]);
    g = await start();
    c = await continueThread(g, token, threadId, 'turn 2 after a gateway restart');
    await c.close();

    // 2. Idle reap: no client for longer than reaper.idle_after.
    await g.waitForLog((l) => l.msg === 'codex app-server stopped' && l.reason === 'idle', 30_000);
    c = await continueThread(g, token, threadId, 'turn 3 after an idle reap');

    // 3. Child SIGKILL while a client is attached.
    const pid = readyLines(g).at(-1)?.pid as number;
    const closed = c.whenClosed();
    process.kill(pid, 'SIGKILL');
    await closed;
    c = await continueThread(g, token, threadId, 'turn 4 after the child was killed');
    const lastChild = readyLines(g).at(-1)?.pid as number;
    expect(lastChild).not.toBe(pid);

    // 4. Gateway SIGKILL: nothing drains; the next start's recovery stores the home.
    // codex's sqlite state is then still in its write-ahead logs, not checkpointed.
    expect((await stat(path.join(init.codexHome, 'state_5.sqlite-wal'))).size).toBeGreaterThan(0);
    await g.stop('SIGKILL');
    await c.whenClosed();
    g = await start();
    c = await continueThread(g, token, threadId, 'turn 5 after the gateway was killed');
    await waitFor(() => !processAlive(lastChild), 20_000, 'the killed gateway\'s child to be gone');

    // Every turn is in the thread, each with the model's reply.
    const read = await c.request<{ thread: { turns: Turn[] } }>('thread/read', { threadId, includeTurns: true });
    const turns = read.thread.turns;
    expect(turns).toHaveLength(5);
    for (const t of turns) {
      expect(t.status).toBe('completed');
      expect(t.items.filter((i) => i.type === 'agentMessage').map((i) => i.text)).toEqual([DELTAS.join('')]);
    }
    await c.close();
    expect((await g.stop('SIGTERM')).code).toBe(0);
    expect(g.logs.find((l) => l.msg === 'gateway stopped')).toMatchObject({ unsaved: 0 });
  }, 300_000);
});
