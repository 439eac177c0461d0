/**
 * The real codex TUI in remote mode (`codex --remote URL`), driven as a
 * person would: typed keys in, the screen read back (tmux send-keys,
 * capture-pane).
 *
 * tmux runs on a server of its own, on a socket in the test's temp dir
 * (`-S`), so nothing of a person's tmux is touched and no socket file is
 * left in /tmp; `.ci/run` installs tmux where it is missing. Each TUI is started
 * as the session's command, not through a shell, so neither SHELL nor TERM
 * need be set (CI has neither): tmux gives the pane its own TERM.
 */
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { processEnded } from '../src/shared/proc.js';
import { realCodexBin } from './fixtures/codex-home.js';
import { waitFor } from './helpers.js';

/** The composer's placeholder: the TUI is waiting for a prompt. */
export const PROMPT_PLACEHOLDER = 'Ask Codex to do anything';

export function count(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

export interface TuiOptions {
  /** The gateway's WebSocket URL. */
  url: string;
  /** The bearer token, passed through the environment (`--remote-auth-token-env`). */
  token: string;
  /** The TUI's working directory. */
  cwd: string;
  /** The TUI's own CODEX_HOME (the client side; the workspace's home is the gateway's). */
  codexHome: string;
  /** More arguments after the remote ones, e.g. `resume --last`. */
  extra?: string[];
}

export class TmuxTui {
  /** The tmux server's socket: a path (at most ~100 bytes) in a temp dir the test removes. */
  private readonly socket: string;
  private readonly panes = new Map<string, number>();
  private serverPid: number | undefined;

  constructor(socket: string) {
    this.socket = socket;
  }

  private tmux(...args: string[]): string {
    return execFileSync('tmux', ['-S', this.socket, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** Starts the TUI in a detached session named `session`; remembers its pid. */
  open(session: string, o: TuiOptions): number {
    const argv = [realCodexBin(), '--remote', o.url, '--remote-auth-token-env', 'CODEX_GATEWAY_TOKEN', ...(o.extra ?? [])];
    this.tmux(
      'new-session', '-d', '-s', session, '-x', '140', '-y', '45', '-c', o.cwd,
      '-e', `CODEX_HOME=${o.codexHome}`,
      '-e', `CODEX_GATEWAY_TOKEN=${o.token}`,
      ...argv,
    );
    const [pane, server] = this.tmux('display-message', '-p', '-t', session, '#{pane_pid} #{pid}').trim().split(' ').map(Number);
    this.panes.set(session, pane as number);
    this.serverPid ??= server;
    return pane as number;
  }

  /** Starts the TUI and waits until its composer takes a prompt; its pid. */
  async openAtPrompt(session: string, o: TuiOptions): Promise<number> {
    const pid = this.open(session, o);
    await this.waitForScreen(session, 'its prompt', (s) => s.includes(PROMPT_PLACEHOLDER));
    return pid;
  }

  screen(session: string): string {
    return this.tmux('capture-pane', '-p', '-t', session);
  }

  /** Polls the screen (a terminal shows no events) until `pred` holds; the screen on timeout. */
  async waitForScreen(session: string, what: string, pred: (s: string) => boolean, timeoutMs = 60_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < until) {
      last = this.screen(session);
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
  async submit(session: string, text: string): Promise<void> {
    this.tmux('send-keys', '-t', session, '-l', text);
    await this.waitForScreen(session, `the typed ${JSON.stringify(text)}`, (s) => s.includes(text), 10_000);
    for (let i = 0; i < 5; i++) {
      await sleep(1000);
      this.tmux('send-keys', '-t', session, 'Enter');
      await sleep(1000);
      // Submitted: the composer is empty again (its placeholder shows) or the turn is running.
      const s = this.screen(session);
      if (s.includes(PROMPT_PLACEHOLDER) || /Working|esc to interrupt/.test(s)) return;
    }
  }

  /** Submits `prompt` and waits until `replies` answers `reply` show below it; the screen. */
  async ask(session: string, prompt: string, reply: string, replies = 1, timeoutMs = 60_000): Promise<string> {
    await this.submit(session, prompt);
    const s = await this.waitForScreen(session, `answer ${replies} to ${JSON.stringify(prompt)}`, (t) => t.includes(prompt) && count(t.slice(t.indexOf(prompt)), reply) >= 1 && count(t, reply) >= replies, timeoutMs);
    return s;
  }

  /** Ends the session and waits until its TUI process is gone. */
  async close(session: string): Promise<void> {
    this.tmux('kill-session', '-t', session);
    const pid = this.panes.get(session);
    this.panes.delete(session);
    if (pid !== undefined) await waitFor(() => processEnded(pid), 20_000, `the TUI of session ${session} (pid ${pid}) to end`);
  }

  /** Ends the tmux server and every TUI still open, and waits until they are gone; idempotent. */
  async destroy(): Promise<void> {
    const pids = [...this.panes.values()];
    if (this.serverPid !== undefined) pids.push(this.serverPid);
    this.panes.clear();
    this.serverPid = undefined;
    try {
      this.tmux('kill-server');
    } catch {
      // No server left.
    }
    for (const pid of pids) {
      if (await processEnded(pid)) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone meanwhile.
      }
      await waitFor(() => processEnded(pid), 20_000, `process ${pid} of the tmux server to end`);
    }
  }
}
