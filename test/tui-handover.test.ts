/**
 * A person's journey with the real codex TUI in remote mode across a
 * handover restart (restart.handover, docs/operations.md): a new gateway
 * starts on the same data dir and port while the old one runs, the old one
 * closes the TUI's connection with 1012 and hands its codex child over.
 * codex 0.169's TUI reconnects by itself (it shows "Reconnecting to
 * server…" and retries with backoff, then resumes the thread it showed):
 * the person stays in the same TUI, sees the conversation, and new prompts
 * are answered by the same codex process. Also with a turn running across
 * the handover, and with one that ends while no client is connected: its
 * answer is not lost.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { processEnded } from '../src/shared/proc.js';
import { CLUSTER_ADMIN_TOKEN, admin } from './cluster-helpers.js';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { freePort, tempDir, waitFor } from './helpers.js';
import { PROMPT_PLACEHOLDER, TmuxTui, count } from './tui-driver.js';

const SECRET = 'tui-handover-secret-tui-handover-secret-00';
const REPLY = 'Hello from the gateway mock.';
/** What the TUI shows while it has no connection. */
const OFFLINE = 'Reconnecting to server';
/** What it shows when a reconnect or a resume failed. */
const FAILED = /could not be restored|Reconnect failed|Failed to resume|no rollout found|unavailable/;

describe('the codex TUI through a handover restart (tmux)', () => {
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  let env: NodeJS.ProcessEnv;
  let tui: TmuxTui;
  const gateways: GatewayProcess[] = [];

  /** Set by holdTurn: the model request for this prompt waits for `released`. */
  let gate: { prompt: string; reached: () => void; released: Promise<void> } | undefined;
  const holds: Array<() => void> = [];

  /**
   * Holds the turn of `prompt` at the model (the mock sends nothing) until
   * `release`; `reached` once it is held. codex's own requests (a title
   * for a new thread) pass: they do not end with the prompt as the user's
   * message.
   */
  const holdTurn = (prompt: string): { reached: Promise<void>; release: () => void } => {
    let reached = (): void => {};
    let release = (): void => {};
    const isReached = new Promise<void>((resolve) => (reached = resolve));
    const released = new Promise<void>((resolve) => (release = resolve));
    holds.push(release);
    gate = { prompt, reached, released };
    return { reached: isReached, release };
  };
  const lastUserText = (body: unknown): string | undefined => {
    const last = (body as { input?: Array<{ role?: string; content?: Array<{ text?: string }> }> } | undefined)?.input?.at(-1);
    return last?.role === 'user' ? last.content?.map((c) => c.text ?? '').join('') : undefined;
  };

  beforeAll(async () => {
    mock = await startResponsesMock({
      deltas: ['Hello', ' from', ' the', ' gateway', ' mock.'],
      beforeOutput: (body) => {
        const g = gate;
        if (g === undefined || lastUserText(body) !== g.prompt) return Promise.resolve();
        gate = undefined;
        g.reached();
        return g.released;
      },
    });
    dir = await tempDir('cxg-tui-handover-');
    await mkdir(path.join(dir, 'client-home'));
    await mkdir(path.join(dir, 'cwd'));
    tui = new TmuxTui(path.join(dir, 'tmux.sock'));
    const extra = ['[internal]', `port = ${await freePort()}`, '[admin]', `token = "${CLUSTER_ADMIN_TOKEN}"`, '[restart]', 'handover = true', '[warm_restart]', 'max = 0'];
    config = await writeConfig(path.join(dir, 'gateway.toml'), realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl, extra }));
    // The TUI reconnects to the URL it was started with: both gateways listen on one port.
    env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info', CXG_LISTEN_PORT: String(await freePort()) };
  });
  afterAll(async () => {
    for (const release of holds) release();
    await tui?.destroy();
    for (const g of gateways) await g.stop('SIGKILL');
    // With restart.handover a child outlives a gateway killed before it handed the child over.
    const children = gateways.flatMap((g) => g.logs.filter((l) => l.msg === 'codex app-server ready' || l.msg === 'handover: child adopted').map((l) => l.pid as number));
    for (const pid of new Set(children)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Gone.
      }
    }
    await mock?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const start = async (): Promise<GatewayProcess> => {
    const g = await startGatewayProcess(config, env, 60_000);
    gateways.push(g);
    return g;
  };
  const readyPids = (g: GatewayProcess, workspaceId: string): number[] => g.logs.filter((l) => l.msg === 'codex app-server ready' && l.workspaceId === workspaceId).map((l) => l.pid as number);

  /** The workspace as the gateway sees it now (admin API): its child's pid and its clients. */
  const workspace = async (g: GatewayProcess, id: string): Promise<{ pid?: number; clients?: number }> => (await admin(g, `/admin/workspaces/${id}`)).body;

  /** Adoption may end after the new gateway listens (a client that comes first waits for it). */
  const adopted = (g: GatewayProcess, workspaceId: string): Promise<unknown> => g.waitForLog((l) => l.msg === 'handover: child adopted' && l.workspaceId === workspaceId, 60_000);

  /**
   * Starts a successor and waits until it has adopted the running child:
   * the old gateway closes its clients with 1012 and exits 0.
   */
  const handover = async (from: GatewayProcess, workspaceId: string, pid: number): Promise<GatewayProcess> => {
    const to = await start();
    expect((await from.exited).code).toBe(0);
    await adopted(to, workspaceId);
    expect(to.logs.filter((l) => l.msg === 'handover: child adopted').map((l) => [l.workspaceId, l.pid])).toEqual([[workspaceId, pid]]);
    return to;
  };

  /** The TUI is back: connected to `g` (the gateway counts its client) and no longer offline on screen. */
  const reconnected = async (g: GatewayProcess, workspaceId: string, shown: string): Promise<string> => {
    // Asked every quarter second: each answer is an admin request that asks every shard.
    const connected = async (): Promise<boolean> => {
      await sleep(250);
      return (await workspace(g, workspaceId)).clients === 1;
    };
    await waitFor(connected, 150_000, 'the TUI to reconnect to the new gateway');
    return await tui.waitForScreen(workspaceId, 'the conversation, online again', (s) => !s.includes(OFFLINE) && s.includes(shown), 150_000);
  };

  /** A person opens the TUI on a fresh gateway and gets an answer to a first prompt; the gateway and its child's pid. */
  const firstExchange = async (workspaceId: string): Promise<{ a: GatewayProcess; pid: number }> => {
    const token = await signWorkspaceToken({ secret: SECRET, workspaceId, expiresIn: '30m' });
    const a = await start();
    await tui.openAtPrompt(workspaceId, { url: a.url, token, cwd: path.join(dir, 'cwd'), codexHome: path.join(dir, 'client-home') });
    await tui.ask(workspaceId, 'say hello please', REPLY);
    const [pid] = readyPids(a, workspaceId) as [number];
    return { a, pid };
  };

  /**
   * The person goes on after the handover: a new prompt is answered below
   * the earlier ones (`replies` answers on screen in all), by the adopted
   * process; then the TUI is closed and the gateway drains, stopping it.
   */
  const goOn = async (b: GatewayProcess, workspaceId: string, pid: number, earlier: string, replies: number): Promise<void> => {
    const after = await tui.ask(workspaceId, 'and once more', REPLY, replies, 120_000);
    expect(after.indexOf(earlier)).toBeLessThan(after.indexOf('and once more'));
    // Each answer once: nothing lost, nothing shown twice.
    expect(count(after, REPLY)).toBe(replies);
    expect(after).not.toMatch(FAILED);
    // Answered by the adopted process: the new gateway started none, the child kept its pid.
    expect(readyPids(b, workspaceId)).toEqual([]);
    expect(await workspace(b, workspaceId)).toMatchObject({ pid, clients: 1 });
    expect(await processEnded(pid)).toBe(false);

    await tui.close(workspaceId);
    expect((await b.stop('SIGTERM')).code).toBe(0);
    expect(b.logs.find((l) => l.msg === 'codex app-server stopped' && l.workspaceId === workspaceId)).toMatchObject({ pid, reason: 'drain' });
    await waitFor(() => processEnded(pid), 20_000, 'the drained child to be gone');
  };

  it('a prompt is answered; after a handover restart the same TUI reconnects by itself, shows the conversation and a new prompt is answered by the same codex process', async () => {
    const workspaceId = 'tui-handover';
    const { a, pid } = await firstExchange(workspaceId);
    const b = await handover(a, workspaceId, pid);
    const back = await reconnected(b, workspaceId, 'say hello please');
    expect(back).toContain(PROMPT_PLACEHOLDER);
    expect(back).toContain(REPLY);
    expect(back).not.toMatch(FAILED);
    await goOn(b, workspaceId, pid, 'say hello please', 2);
  }, 300_000);

  it('a handover while the model is still answering: the TUI reconnects to the running turn, its answer arrives, and the next prompt is answered by the same codex process', async () => {
    const workspaceId = 'tui-handover-midturn';
    const { a, pid } = await firstExchange(workspaceId);
    // A second prompt whose answer the model holds back: the turn runs across the handover.
    const hold = holdTurn('answer across the restart');
    await tui.submit(workspaceId, 'answer across the restart');
    await hold.reached;
    const b = await handover(a, workspaceId, pid);
    // Back online, the TUI shows the turn still running (resumed with the thread).
    await reconnected(b, workspaceId, 'answer across the restart');
    const running = await tui.waitForScreen(workspaceId, 'the turn running', (s) => s.slice(s.indexOf('answer across the restart')).includes('Working'), 30_000);
    expect(running).not.toMatch(FAILED);
    hold.release();
    await tui.waitForScreen(workspaceId, 'the held answer', (s) => s.slice(s.indexOf('answer across the restart')).includes(REPLY), 120_000);
    await goOn(b, workspaceId, pid, 'answer across the restart', 3);
  }, 300_000);

  it('a turn that ends while the TUI is disconnected (the old gateway gone, the new one adopting) is not lost: the TUI shows its answer once reconnected', async () => {
    const workspaceId = 'tui-handover-gap';
    const { a, pid } = await firstExchange(workspaceId);
    const hold = holdTurn('answer across the restart');
    await tui.submit(workspaceId, 'answer across the restart');
    await hold.reached;
    // The answer is let go once the old gateway has closed the TUI's connection and exited: no client is connected.
    const next = start();
    expect((await a.exited).code).toBe(0);
    hold.release();
    const b = await next;
    await adopted(b, workspaceId);
    expect(b.logs.filter((l) => l.msg === 'handover: child adopted').map((l) => [l.workspaceId, l.pid])).toEqual([[workspaceId, pid]]);
    const back = await reconnected(b, workspaceId, 'answer across the restart');
    expect(back.slice(back.indexOf('answer across the restart'))).toContain(REPLY);
    expect(back).not.toMatch(FAILED);
    await goOn(b, workspaceId, pid, 'answer across the restart', 3);
  }, 300_000);
});
