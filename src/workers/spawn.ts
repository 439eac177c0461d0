/**
 * Starting and stopping one `codex app-server` process. This module is the
 * only place that knows the transport: the argv, the banner, the readiness
 * probe. The real binary (0.169.0) prints on stderr:
 *
 *     codex app-server (WebSockets)
 *       listening on: ws://127.0.0.1:PORT
 *       readyz: http://127.0.0.1:PORT/readyz
 *
 * A stand-in may print a bare `ws://…` URL on stdout. Either way the first
 * `ws://` URL on either stream is taken and parsed with a URL parser, since a
 * later build may append a path or query.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { GatewayError } from '../shared/errors.js';
import { parseBwrapInfo } from '../shared/sandbox.js';
import type { SandboxSpec } from '../shared/sandbox.js';
import type { ChildUser } from '../shared/spawn-user.js';
import { childLaunch, findExecutable } from './parent-death.js';
import { signalGroup } from './process-group.js';
import type { ExitInfo, RunningChild } from './process-group.js';
import { renice } from './renice.js';

export type { ExitInfo, RunningChild } from './process-group.js';

export interface SpawnRequest {
  codexBin: string;
  /** The child's working directory (inside its CODEX_HOME, which env names). */
  cwd: string;
  env: Record<string, string>;
  /** The capability secret; only its SHA-256 reaches the child's argv. */
  wsToken: string;
  readyTimeoutMs: number;
  /** Nice levels the child runs below the gateway (0: the same priority). */
  nice: number;
  /** spawn.user: run as this uid/gid. */
  runAs?: ChildUser;
  /** spawn.sandbox = bubblewrap: what the sandbox shows. */
  sandbox?: SandboxSpec;
  /** restart.handover: the child may outlive the gateway (no parent-death signal, parent-death.ts). */
  outliveGateway?: boolean;
  /** Called once the process exists (it may write to CODEX_HOME from here on). */
  onSpawned: (pid: number) => void;
  /** Called synchronously when the spawned process has exited, before `exited` resolves. */
  onExit?: () => void;
  /** Output lines after the banner, and before it while waiting. */
  onOutput: (stream: 'stdout' | 'stderr', line: string) => void;
}

const WS_URL = /\bws:\/\/[^\s"'<>]+/;
const MAX_LINE = 64 * 1024;
const STDERR_TAIL = 20;

/**
 * `--strict-config`: without it, codex answers a config.toml it cannot load
 * with "Invalid configuration; using defaults" and runs anyway, with its
 * own tools switched back on. With it, it exits and says why.
 */
export function appServerArgs(wsToken: string): string[] {
  const sha = createHash('sha256').update(wsToken).digest('hex');
  return ['app-server', '--strict-config', '--listen', 'ws://127.0.0.1:0', '--ws-auth', 'capability-token', '--ws-token-sha256', sha];
}

/** codex's one-line reason when it refused to start (`Error: …`), if it gave one. */
export function refusalReason(stderr: readonly string[]): string | undefined {
  const line = stderr.find((l) => l.startsWith('Error: '));
  return line?.slice('Error: '.length);
}

/**
 * Spawns the child in its own process group and waits until its /readyz
 * answers 200. On any failure the whole group is killed and waited for before
 * the error is thrown, so a failed start leaves no process behind.
 */
export async function spawnAppServer(req: SpawnRequest): Promise<RunningChild> {
  const deadline = Date.now() + req.readyTimeoutMs;
  let child: ChildProcess;
  // The child dies with the gateway (parent-death.ts); a missing binary stays a spawn error.
  const launch = childLaunch(req.codexBin, appServerArgs(req.wsToken), {
    ...(req.runAs === undefined ? {} : { runAs: req.runAs }),
    ...(req.sandbox === undefined ? {} : { sandbox: req.sandbox }),
    ...(req.outliveGateway === true ? { outliveParent: true } : {}),
  });
  if (launch.guarded && findExecutable(req.codexBin, req.env.PATH) === undefined) {
    throw spawnError(req.codexBin, Object.assign(new Error(`${req.codexBin} is not an executable file`), { code: 'ENOENT' }));
  }
  try {
    child = spawn(launch.command, launch.args, {
      cwd: req.cwd,
      env: req.env,
      detached: true,
      stdio: launch.infoFd === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', 'pipe'],
    });
  } catch (err) {
    throw spawnError(req.codexBin, err);
  }

  let exit: ExitInfo | undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = { code, signal };
      try {
        req.onExit?.();
      } finally {
        resolve(exit);
      }
    });
  });
  const spawned = new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid as number));
    child.once('error', (err) => reject(spawnError(req.codexBin, err)));
  });
  // 'error' can also fire later (e.g. a failed kill); never let it crash the shard.
  child.on('error', () => {});

  const spawnedPid = await spawned;
  let pid = spawnedPid;
  if (launch.infoFd !== undefined) {
    // Under bubblewrap the spawned process is its monitor; codex is the pid it reports (see src/shared/sandbox.ts).
    try {
      pid = await sandboxedPid(child, launch.infoFd, exited, deadline);
    } catch (err) {
      signalGroup(spawnedPid, 'SIGKILL');
      await exited;
      throw err;
    }
  }
  if (req.nice > 0) renice(pid, req.nice);
  req.onSpawned(pid);

  const tail: string[] = [];
  let announce: ((url: string) => void) | undefined;
  const announced = new Promise<string>((resolve) => (announce = resolve));
  const onLine = (stream: 'stdout' | 'stderr', line: string): void => {
    if (announce !== undefined) {
      const m = WS_URL.exec(line);
      if (m !== null) {
        const found = announce;
        announce = undefined;
        found(m[0]);
        return;
      }
      if (stream === 'stderr') {
        tail.push(line);
        if (tail.length > STDERR_TAIL) tail.shift();
      }
    }
    req.onOutput(stream, line);
  };
  splitLines(child.stdout, (l) => onLine('stdout', l));
  splitLines(child.stderr, (l) => onLine('stderr', l));

  const running = { pid, exited, exitInfo: () => exit };
  try {
    const printed = await raceStartup(announced, exited, deadline, () =>
      new GatewayError('GW_SPAWN_TIMEOUT', `codex app-server printed no ws:// URL within ${req.readyTimeoutMs} ms`, { details: { stderr: tail.slice() } }),
    tail);
    const { wsUrl, httpUrl } = parseListenUrl(printed);
    await raceStartup(waitReady(httpUrl, deadline), exited, deadline, () =>
      new GatewayError('GW_SPAWN_NOT_READY', `codex app-server at ${httpUrl} did not answer /readyz with 200 within ${req.readyTimeoutMs} ms`),
    tail);
    // Threads the child started before the first renice ran at the old priority.
    if (req.nice > 0) renice(pid, req.nice);
    return { ...running, wsUrl, httpUrl };
  } catch (err) {
    signalGroup(pid, 'SIGKILL');
    await exited;
    throw err;
  }
}

/** The pid bwrap reports on its info fd, or the reason it never did. */
async function sandboxedPid(child: ChildProcess, fd: number, exited: Promise<ExitInfo>, deadline: number): Promise<number> {
  const stream = child.stdio[fd] as NodeJS.ReadableStream | null | undefined;
  if (stream === null || stream === undefined) throw new GatewayError('GW_SANDBOX_UNAVAILABLE', 'bwrap info pipe missing');
  let text = '';
  const reported = new Promise<number>((resolve) => {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      if (text.length > 4096) return;
      text += chunk;
      const pid = parseBwrapInfo(text);
      if (pid !== undefined) resolve(pid);
    });
  });
  // Nothing more is read from it; codex may hold the other end open.
  stream.on('error', () => {});
  return raceStartup(reported, exited, deadline, () => new GatewayError('GW_SANDBOX_UNAVAILABLE', 'bwrap did not report the sandboxed pid in time'), []);
}

/** The first promise to settle wins: a result, the child's exit, or the deadline. */
async function raceStartup<T>(p: Promise<T>, exited: Promise<ExitInfo>, deadline: number, onTimeout: () => GatewayError, tail: string[]): Promise<T> {
  const ac = new AbortController();
  try {
    return await Promise.race([
      p,
      exited.then((e) => {
        const reason = refusalReason(tail);
        if (reason !== undefined && reason.includes('config.toml')) {
          throw new GatewayError('GW_BAD_CONFIG', `codex refused its config.toml: ${reason}`, { details: { code: e.code, signal: e.signal, stderr: tail.slice() } });
        }
        const why = reason ?? tail.slice(-3).join(' | ');
        throw new GatewayError('GW_SPAWN_EXITED', `codex app-server exited before it was ready (${describeExit(e)})${why !== '' ? `: ${why}` : ''}`, {
          details: { code: e.code, signal: e.signal, stderr: tail.slice() },
        });
      }),
      sleep(Math.max(0, deadline - Date.now()), undefined, { signal: ac.signal }).then(() => {
        throw onTimeout();
      }),
    ]);
  } finally {
    ac.abort();
  }
}

export function describeExit(e: ExitInfo): string {
  return e.signal !== null ? `signal ${e.signal}` : `exit code ${String(e.code)}`;
}

export function parseListenUrl(printed: string): { wsUrl: string; httpUrl: string } {
  let url: URL;
  try {
    url = new URL(printed);
  } catch (err) {
    throw new GatewayError('GW_SPAWN_FAILED', `codex app-server printed an unparsable URL ${JSON.stringify(printed)}`, { cause: err });
  }
  if (url.protocol !== 'ws:' || url.port === '') {
    throw new GatewayError('GW_SPAWN_FAILED', `codex app-server printed an unexpected URL ${JSON.stringify(printed)}`);
  }
  return { wsUrl: url.href, httpUrl: `http://${url.host}` };
}

/**
 * Polls /readyz: often at first (codex 0.169.0 answers 200 about 2 ms after
 * its banner, and every millisecond here is start latency), then backing off.
 */
async function waitReady(httpUrl: string, deadline: number): Promise<void> {
  let delay = 1;
  while (Date.now() < deadline) {
    if (await probe(`${httpUrl}/readyz`, Math.min(1000, Math.max(1, deadline - Date.now())))) return;
    await sleep(delay);
    delay = Math.min(Math.ceil(delay * 1.5), 100);
  }
  // raceStartup's deadline reports the timeout.
  await new Promise(() => {});
}

/** Whether `url` answers 200 within `timeoutMs` (a child's /readyz). */
export function probe(url: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

function spawnError(bin: string, err: unknown): GatewayError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT' || code === 'EACCES' || code === 'ENOEXEC') {
    return new GatewayError('GW_CODEX_NOT_FOUND', `cannot execute codex binary ${bin} (${code})`, { cause: err });
  }
  return new GatewayError('GW_SPAWN_FAILED', `cannot start codex binary ${bin}`, { cause: err });
}

function splitLines(stream: NodeJS.ReadableStream | null, onLine: (line: string) => void): void {
  if (stream === null) return;
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line.length > 0) onLine(line);
    }
    if (buf.length > MAX_LINE) {
      onLine(buf);
      buf = '';
    }
  });
  stream.on('end', () => {
    if (buf.length > 0) onLine(buf);
  });
}
