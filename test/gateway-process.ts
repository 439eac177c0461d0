/**
 * The gateway as a real process (`bin/codex-app-gateway.mjs serve`), for
 * end-to-end tests: started with a TOML config, its JSON log parsed for the
 * listening URL, stopped with a signal.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { descendantsOf, killGroups } from './faults/markers.js';

export const BIN = fileURLToPath(new URL('../bin/codex-app-gateway.mjs', import.meta.url));

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export interface GatewayProcess {
  proc: ChildProcess;
  url: string;
  internalUrl: string;
  logs: LogLine[];
  /** Non-JSON output, for diagnosis. */
  raw: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /**
   * Sends `signal` (SIGTERM by default) and waits for the exit. SIGKILL also
   * kills the process groups of everything the gateway had started: its
   * codex children are detached and would outlive it.
   */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The gateway variable holding the children's API key in the real-codex configs below. */
export const GATEWAY_KEY_ENV = 'CXG_TEST_GATEWAY_KEY';

/** A gateway.toml: data under `dir`, port 0, HS256 with `secret`, then `extra` lines (more sections). */
export function gatewayToml(o: { dir: string; secret: string; extra: string[] }): string {
  return ['shards = 2', '[data]', `dir = ${JSON.stringify(o.dir)}`, '[listen]', 'port = 0', '[auth.jwt]', `secret = ${JSON.stringify(o.secret)}`, ...o.extra, ''].join('\n');
}

/**
 * A gateway.toml for the real codex behind a Responses mock: data under
 * `dir`, port 0, HS256 with `secret`, the mock as model provider, plus
 * `extra` lines (more sections).
 */
export function realCodexToml(o: { dir: string; secret: string; mockBaseUrl: string; extra?: string[] }): string {
  return gatewayToml({
    dir: o.dir,
    secret: o.secret,
    extra: [
      '[model]',
      'provider = "mock"',
      'name = "gpt-test"',
      `base_url = ${JSON.stringify(o.mockBaseUrl)}`,
      'env_key = "CXG_TEST_API_KEY"',
      `api_key_env = "${GATEWAY_KEY_ENV}"`,
      ...(o.extra ?? []),
    ],
  });
}

export async function writeConfig(file: string, toml: string): Promise<string> {
  await writeFile(file, toml, { mode: 0o600 });
  return file;
}

/**
 * How the gateway's command line is run: as it is, or wrapped (a pod's
 * mount namespace, test/fixtures/pod.ts). The wrapper must exec the
 * command, so that the spawned pid is the gateway's own.
 */
export type Launcher = (argv: string[]) => { file: string; args: string[] };

const direct: Launcher = (argv) => ({ file: argv[0] as string, args: argv.slice(1) });

export async function startGatewayProcess(configFile: string, env: NodeJS.ProcessEnv = {}, timeoutMs = 20_000, launch: Launcher = direct): Promise<GatewayProcess> {
  const { file, args } = launch([process.execPath, BIN, 'serve', '--config', configFile]);
  const proc = spawn(file, args, {
    cwd: path.dirname(configFile),
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: LogLine[] = [];
  const raw: string[] = [];
  const waiters: Array<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];
  const onLine = (line: string): void => {
    let parsed: LogLine | undefined;
    try {
      parsed = JSON.parse(line) as LogLine;
    } catch {
      raw.push(line);
      return;
    }
    logs.push(parsed);
    for (const w of [...waiters]) {
      if (w.pred(parsed)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(parsed);
      }
    }
  };
  for (const stream of [proc.stdout, proc.stderr]) {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
  }
  // 'close', not 'exit': the process can be reaped before its last lines (`gateway stopped`,
  // `drain: done`) are read from the pipes, and tests look for them once it has exited.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('close', (code, signal) => resolve({ code, signal })));
  const waitForLog = (pred: (l: LogLine) => boolean, ms = timeoutMs): Promise<LogLine> => {
    const seen = logs.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`log line not seen within ${ms} ms; output: ${raw.slice(-10).join('\n')} ${JSON.stringify(logs.slice(-5))}`)), ms);
      waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`gateway exited before the log line; output: ${raw.slice(-10).join('\n')} ${JSON.stringify(logs.slice(-5))}`));
      });
    });
  };
  const running = (): boolean => proc.exitCode === null && proc.signalCode === null;
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> => {
    if (!running()) return exited;
    if (signal !== 'SIGKILL') {
      proc.kill(signal);
      return exited;
    }
    const family = await descendantsOf(proc.pid as number);
    proc.kill('SIGKILL');
    const exit = await exited;
    killGroups(family);
    return exit;
  };
  let listening: LogLine;
  try {
    listening = await waitForLog((l) => l.msg === 'gateway listening');
  } catch (err) {
    // Never listening: the caller gets no handle to stop it with, so it is stopped here.
    await stop('SIGKILL');
    throw err;
  }
  return {
    proc,
    url: listening.url as string,
    internalUrl: listening.internalUrl as string,
    logs,
    raw,
    exited,
    waitForLog,
    stop,
  };
}
