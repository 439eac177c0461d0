/**
 * A person's journey with the real codex TUI in remote mode, driven in tmux
 * (test/tui-driver.ts): one prompt and its answer through the gateway; the
 * gateway restarts (SIGTERM, start); `codex --remote … resume --last` shows
 * the conversation and answers a new prompt.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { tempDir } from './helpers.js';
import { PROMPT_PLACEHOLDER, TmuxTui } from './tui-driver.js';

const SECRET = 'tui-secret-tui-secret-tui-secret-tui-secret';
const REPLY = 'Hello from the gateway mock.';

describe('the codex TUI through the gateway (tmux)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  let gw: GatewayProcess | undefined;
  const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY };
  let tui: TmuxTui;

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Hello', ' from', ' the', ' gateway', ' mock.'] });
    dir = await tempDir('cxg-tui-');
    await mkdir(path.join(dir, 'client-home'));
    await mkdir(path.join(dir, 'cwd'));
    tui = new TmuxTui(path.join(dir, 'tmux.sock'));
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl }));
  });
  afterAll(async () => {
    await tui?.destroy();
    await gw?.stop('SIGTERM');
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const where = (): { cwd: string; codexHome: string } => ({ cwd: path.join(dir, 'cwd'), codexHome: path.join(dir, 'client-home') });

  it('a prompt is answered; after a gateway restart `resume --last` shows the conversation and answers a new prompt', async () => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'tui-journey', expiresIn: '30m' });
    gw = await startGatewayProcess(config, env, 30_000);
    tui.open('first', { url: gw.url, token, ...where() });
    await tui.waitForScreen('first', 'its prompt', (s) => s.includes(PROMPT_PLACEHOLDER));
    await tui.ask('first', 'say hello please', REPLY);
    await tui.close('first');

    expect((await gw.stop('SIGTERM')).code).toBe(0);
    expect(gw.logs.find((l) => l.msg === 'gateway stopped')).toMatchObject({ saved: 1, unsaved: 0 });
    gw = await startGatewayProcess(config, env, 30_000);

    tui.open('again', { url: gw.url, token, ...where(), extra: ['resume', '--last'] });
    const resumed = await tui.waitForScreen('again', 'the earlier conversation', (s) => s.includes('say hello please') && s.includes(REPLY));
    expect(resumed).not.toMatch(/Failed to resume|no rollout found/);
    const after = await tui.ask('again', 'and once more', REPLY, 2);
    expect(after.indexOf('say hello please')).toBeLessThan(after.indexOf('and once more'));
    await tui.close('again');
  }, 180_000);
});
