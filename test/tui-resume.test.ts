/**
 * A person's journey with the real codex TUI in remote mode, driven in tmux
 * (send-keys, capture-pane): one prompt and its answer through the gateway;
 * the gateway restarts (SIGTERM, start); `codex --remote … resume --last`
 * shows the conversation and answers a new prompt.
 *
 * tmux runs on a server of its own (`-L`), so nothing of a person's tmux is
 * touched; `.ci/run` installs tmux where it is missing.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { TEST_API_KEY, realCodexBin } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { tempDir } from './helpers.js';

const SECRET = 'tui-secret-tui-secret-tui-secret-tui-secret';
const REPLY = 'Hello from the gateway mock.';
const SOCKET = `cxg-tui-${process.pid}`;

function tmux(...args: string[]): string {
  return execFileSync('tmux', ['-L', SOCKET, ...args], { encoding: 'utf8' });
}

function screen(session: string): string {
  return tmux('capture-pane', '-p', '-t', session);
}

/** Polls the screen (a terminal shows no events) until `pred` holds; the screen on timeout. */
async function waitForScreen(session: string, what: string, pred: (s: string) => boolean, timeoutMs = 60_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < until) {
    last = screen(session);
    if (pred(last)) return last;
    await sleep(200);
  }
  throw new Error(`the TUI did not show ${what} within ${timeoutMs} ms; screen:\n${last}`);
}

/**
 * Types `text` and submits it. The TUI takes keys that arrive in a burst
 * for a paste, where Enter is a newline: so the text is shown first, and
 * Enter comes after a pause (again, if the composer still holds the text).
 */
async function submit(session: string, text: string): Promise<void> {
  tmux('send-keys', '-t', session, '-l', text);
  await waitForScreen(session, `the typed ${JSON.stringify(text)}`, (s) => s.includes(text), 10_000);
  for (let i = 0; i < 5; i++) {
    await sleep(1000);
    tmux('send-keys', '-t', session, 'Enter');
    await sleep(1000);
    // Submitted: the composer is empty again (its placeholder shows) or the turn is running.
    const s = screen(session);
    if (/Ask Codex to do anything|Working|esc to interrupt/.test(s)) return;
  }
}

function count(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

describe('the codex TUI through the gateway (tmux)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  let gw: GatewayProcess | undefined;
  const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY };

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Hello', ' from', ' the', ' gateway', ' mock.'] });
    dir = await tempDir('cxg-tui-');
    await mkdir(path.join(dir, 'client-home'));
    await mkdir(path.join(dir, 'cwd'));
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl }));
  });
  afterAll(async () => {
    try {
      tmux('kill-server');
    } catch {
      // No server left.
    }
    await gw?.stop('SIGTERM');
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const openTui = (session: string, url: string, token: string, extra: string[]): void => {
    const argv = [realCodexBin(), '--remote', url, '--remote-auth-token-env', 'CODEX_GATEWAY_TOKEN', ...extra];
    tmux(
      'new-session', '-d', '-s', session, '-x', '140', '-y', '45', '-c', path.join(dir, 'cwd'),
      '-e', `CODEX_HOME=${path.join(dir, 'client-home')}`,
      '-e', `CODEX_GATEWAY_TOKEN=${token}`,
      ...argv,
    );
  };

  it('a prompt is answered; after a gateway restart `resume --last` shows the conversation and answers a new prompt', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'tui-journey', expiresIn: '30m' });
    gw = await startGatewayProcess(config, env, 30_000);
    openTui('first', gw.url, token, []);
    await waitForScreen('first', 'its prompt', (s) => s.includes('Ask Codex to do anything'));
    await submit('first', 'say hello please');
    await waitForScreen('first', 'the reply', (s) => s.includes(REPLY));
    tmux('kill-session', '-t', 'first');

    expect((await gw.stop('SIGTERM')).code).toBe(0);
    expect(gw.logs.find((l) => l.msg === 'gateway stopped')).toMatchObject({ saved: 1, unsaved: 0 });
    gw = await startGatewayProcess(config, env, 30_000);

    openTui('again', gw.url, token, ['resume', '--last']);
    const resumed = await waitForScreen('again', 'the earlier conversation', (s) => s.includes('say hello please') && s.includes(REPLY));
    expect(resumed).not.toMatch(/Failed to resume|no rollout found/);
    await submit('again', 'and once more');
    const after = await waitForScreen('again', 'a second reply', (s) => s.includes('and once more') && count(s, REPLY) >= 2);
    expect(after.indexOf('say hello please')).toBeLessThan(after.indexOf('and once more'));
    tmux('kill-session', '-t', 'again');
  }, 180_000);
});
