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
import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { GatewayError } from '../shared/errors.js';
import { parseBwrapInfo } from '../shared/sandbox.js';
import type { SandboxSpec } from '../shared/sandbox.js';
import type { ChildUser } from '../shared/spawn-user.js';
import { childLaunch, findExecutable } from './parent-death.js';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

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

export interface RunningChild {
  readonly pid: number;
  readonly wsUrl: string;
  readonly httpUrl: string;
  readonly exited: Promise<ExitInfo>;
  exitInfo(): ExitInfo | undefined;
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

/**
 * Lowers the priority of every thread of a process (Linux priorities are per
 * thread; threads started later inherit from their creator). The gateway's
 * own threads then keep serving frames when many children compete for CPU,
 * as in a burst of starts.
 */
export function renice(pid: number, nice: number): void {
  reniceThreads(pid, nice);
  // Under bubblewrap `pid` is the sandbox's init; codex is its child.
  for (const child of childPids(pid)) reniceThreads(child, nice);
}

/** Direct children of a process (/proc/PID/task/TID/children; none when it cannot be read). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (c !== '') out.push(Number(c));
    } catch {
      // Gone: no children to find.
    }
  }
  return out;
}

function reniceThreads(pid: number, nice: number): void {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    tids = [String(pid)];
  }
  for (const tid of tids) {
    try {
      os.setPriority(Number(tid), Math.min(19, Math.max(os.getPriority(Number(tid)), os.getPriority(0) + nice)));
    } catch {
      // Gone, or not permitted: it keeps its priority.
    }
  }
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

function probe(url: string, timeoutMs: number): Promise<boolean> {
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

/** Signals a whole process group; a group that is already gone is not an error. */
export function signalGroup(pgid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * SIGTERM to the process group; a second SIGTERM halfway through the grace
 * period; SIGKILL at its end. codex (0.169.0) finishes a turn in flight
 * before it honours the first SIGTERM, and exits at once, cleanly, on the
 * second, so a stuck turn costs half the grace, not a SIGKILL. Whatever else
 * is left in the group once the leader is gone (an MCP server, a tool) gets
 * SIGKILL too, so stopping a child stops all of it.
 */
export async function stopProcessGroup(c: RunningChild, graceMs: number): Promise<ExitInfo> {
  const exitedWithin = async (ms: number): Promise<boolean> => {
    const ac = new AbortController();
    try {
      return await Promise.race([c.exited.then(() => true), sleep(ms, false, { signal: ac.signal }).catch(() => false)]);
    } finally {
      ac.abort();
    }
  };
  if (c.exitInfo() === undefined) {
    signalGroup(c.pid, 'SIGTERM');
    if (!(await exitedWithin(graceMs / 2))) {
      signalGroup(c.pid, 'SIGTERM');
      if (!(await exitedWithin(graceMs / 2))) signalGroup(c.pid, 'SIGKILL');
    }
  }
  const info = await c.exited;
  await reapGroup(c.pid, Math.min(graceMs, 2000));
  return info;
}

/** Gives the rest of a group a moment to follow its leader out, then SIGKILL. */
export async function reapGroup(pgid: number, waitMs: number): Promise<void> {
  const until = Date.now() + waitMs;
  while (groupAlive(pgid) && Date.now() < until) await sleep(20);
  if (groupAlive(pgid)) signalGroup(pgid, 'SIGKILL');
}
