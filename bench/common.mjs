// Shared helpers of the benchmarks: process start/stop by pid, stats,
// tables, /proc readings, result files. Plain JavaScript so the processes a
// bench starts carry no loader of their own.
import { spawn, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.dirname(BENCH_DIR);
export const RESULTS_DIR = path.join(BENCH_DIR, 'results');
export const ECHO_CHILD = path.join(BENCH_DIR, 'echo-child.mjs');
export const JWT_SECRET = 'bench-secret-that-is-long-enough-for-hs256-0000';

/**
 * What the bench gateway's config builder returns (test/helpers.ts
 * spawnConfig): it keeps the real codex offline and quiet.
 */
export const BENCH_SPAWN_CONFIG = {
  config: {
    modelProvider: 'mock',
    model: 'gpt-test',
    modelProviders: { mock: { baseUrl: 'http://127.0.0.1:9/v1', envKey: 'CXG_TEST_API_KEY', wireApi: 'responses' } },
    extra: { analytics: { enabled: false }, features: { plugins: false, apps: false, shell_snapshot: false } },
  },
  env: ['CXG_TEST_API_KEY=cxg-bench-key', 'CODEX_INTERNAL_APP_SERVER_REMOTE_CONTROL_DISABLED=1'],
};

/** What the machine is: every table says it. */
export function machine() {
  const cpus = os.cpus();
  return {
    cores: os.availableParallelism(),
    cpu: cpus[0]?.model?.trim() ?? 'unknown',
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
  };
}

export function machineLine() {
  const m = machine();
  return `machine: ${m.cores} cores (${m.cpu}), ${m.memGiB} GiB, Node ${m.node.replace(/^v/, '')}`;
}

// ---- stats -------------------------------------------------------------------

/** Percentile of an ascending array (nearest rank). */
export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))];
}

/** A growable list of doubles without a heap number per sample. */
export class Samples {
  constructor(capacity = 1 << 16) {
    this.buf = new Float64Array(capacity);
    this.length = 0;
  }

  push(v) {
    if (this.length === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.length++] = v;
  }

  values() {
    return this.buf.subarray(0, this.length);
  }
}

/** Fraction of all cores busy over `ms` (from /proc/stat): other load on the machine. */
export async function machineBusy(ms = 1000) {
  const read = () => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  const a = read();
  await sleep(ms);
  const b = read();
  return b.total === a.total ? 0 : 1 - (b.idle - a.idle) / (b.total - a.total);
}

/**
 * Waits (up to BENCH_WAIT_QUIET_MS, default 60 s) until other work uses less
 * than 15% of the machine, then says how busy it was: another job on a small
 * machine skews every number, anchors included.
 */
export async function checkQuiet(what = 'the bench') {
  const until = Date.now() + Number(process.env.BENCH_WAIT_QUIET_MS ?? 60_000);
  let busy = await machineBusy(1000);
  while (busy > 0.15 && Date.now() < until) busy = await machineBusy(1000);
  const line = `other load before ${what}: ${Math.round(busy * 100)}% of all cores`;
  console.log(busy > 0.15 ? `WARNING: ${line}; results are skewed` : line);
  return busy;
}

/** Runs `fn` over `items` with at most `limit` at once; results in order. */
export async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return out;
}

export function summarize(values) {
  const sorted = (values instanceof Samples ? values.values() : Float64Array.from(values)).slice().sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    n: sorted.length,
    mean: sorted.length ? sum / sorted.length : NaN,
    p50: percentile(sorted, 50),
    p90: percentile(sorted, 90),
    p99: percentile(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1] : NaN,
  };
}

export function round(n, digits = 1) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return n;
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export function fmtInt(n) {
  return typeof n === 'number' && Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : String(n ?? '—');
}

export function fmtK(n) {
  return typeof n === 'number' && Number.isFinite(n) ? `${(n / 1000).toFixed(1)}k` : String(n ?? '—');
}

/** A plain text table; `rows` are arrays of cells. */
export function table(header, rows) {
  const all = [header, ...rows].map((r) => r.map((c) => String(c ?? '—')));
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i]?.length ?? 0)));
  const line = (r) => `| ${r.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  return [line(all[0]), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...all.slice(1).map(line)].join('\n');
}

export function verdict(ok) {
  return ok === undefined ? 'n/a' : ok ? 'met' : 'MISSED';
}

// ---- results -----------------------------------------------------------------

/** Writes bench/results/<name>.json and merges it into bench/results/latest.json. */
export async function writeResult(name, result) {
  await mkdir(RESULTS_DIR, { recursive: true });
  const body = { bench: name, at: new Date().toISOString(), machine: machine(), ...result };
  await writeFile(path.join(RESULTS_DIR, `${name}.json`), `${JSON.stringify(body, null, 2)}\n`);
  const latestFile = path.join(RESULTS_DIR, 'latest.json');
  let latest = {};
  try {
    latest = JSON.parse(await readFile(latestFile, 'utf8'));
  } catch {
    // First run.
  }
  latest[name] = body;
  const ordered = Object.fromEntries(Object.keys(latest).sort().map((k) => [k, latest[k]]));
  await writeFile(latestFile, `${JSON.stringify(ordered, null, 2)}\n`);
  console.log(`\nwrote bench/results/${name}.json (and latest.json)`);
}

// ---- /proc -------------------------------------------------------------------

/** Resident set of a process (all its threads) in bytes, from /proc/PID/status. */
export function rssBytes(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return m ? Number(m[1]) * 1024 : NaN;
}

/** CPU time (user + system, all threads) of a process in seconds, from /proc/PID/stat. */
export function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** The pids of a process's direct children (for nginx's worker). */
export function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export function fdLimit() {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits);
  return { soft: Number(m?.[1] ?? NaN), hard: Number(m?.[2] ?? NaN) };
}

// ---- processes ---------------------------------------------------------------

const started = new Set();

function killAll() {
  for (const p of started) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}
process.once('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });
}

/**
 * The highest open-file limit a child of this process can get: the hard
 * limit, or `want` when prlimit may raise the hard limit (root with
 * CAP_SYS_RESOURCE; sandboxes often drop that capability).
 */
export function reachableNofile(want) {
  const { hard } = fdLimit();
  if (want <= hard) return want;
  if (spawnSync('prlimit', [`--nofile=${want}:${want}`, '--', 'true']).status === 0) return want;
  return hard;
}

/**
 * Argv prefix that raises the open-file limit of a child to `n` (soft and
 * hard) with prlimit, or as far as the hard limit allows.
 */
export function withNofile(n, argv) {
  const { soft } = fdLimit();
  const target = reachableNofile(n);
  if (soft >= target) return argv;
  if (spawnSync('prlimit', ['--version']).status !== 0) return argv;
  return ['prlimit', `--nofile=${target}:${Math.max(target, fdLimit().hard)}`, '--', ...argv];
}

/** Spawns a process that this bench stops by pid at exit at the latest. */
export function startProcess(argv, opts = {}) {
  const [cmd, ...args] = argv;
  const proc = spawn(cmd, args, { stdio: opts.stdio ?? ['ignore', 'inherit', 'inherit'], env: opts.env ?? process.env, cwd: opts.cwd ?? ROOT });
  started.add(proc);
  proc.once('exit', () => started.delete(proc));
  return proc;
}

export async function stopProcess(proc, signal = 'SIGTERM', waitMs = 10_000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  try {
    process.kill(proc.pid, signal);
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      process.kill(proc.pid, 'SIGKILL');
    } catch {
      // Gone.
    }
  }, waitMs);
  await exited;
  clearTimeout(timer);
}

/** A node script started with an IPC channel; `call(cmd, params)` answers by id. */
export async function startNodeIpc(script, { args = [], env = {}, execArgv = [], nofile, nice } = {}) {
  // BENCH_CPU_PROF=DIR profiles the gateway process (every thread) with --cpu-prof.
  const prof = script === GATEWAY_SERVER && process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROF] : [];
  const base = [process.execPath, ...prof, ...execArgv, script, ...args];
  const limited = nofile ? withNofile(nofile, base) : base;
  const argv = nice ? ['nice', '-n', String(nice), ...limited] : limited;
  const proc = startProcess(argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, ...env } });
  const waiters = new Map();
  const events = [];
  let onEvent;
  proc.on('message', (msg) => {
    if (msg?.replyTo !== undefined) {
      const w = waiters.get(msg.replyTo);
      waiters.delete(msg.replyTo);
      if (msg.error !== undefined) w?.reject(new Error(msg.error));
      else w?.resolve(msg.value);
      return;
    }
    events.push(msg);
    onEvent?.();
  });
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  void exited.then((e) => {
    for (const w of waiters.values()) w.reject(new Error(`${path.basename(script)} exited (${JSON.stringify(e)})`));
    waiters.clear();
    onEvent?.();
  });
  const handle = {
    proc,
    pid: proc.pid,
    exited,
    call(cmd, params = {}) {
      const id = randomUUID();
      return new Promise((resolve, reject) => {
        waiters.set(id, { resolve, reject });
        proc.send({ id, cmd, params });
      });
    },
    /** Waits for a one-way message `{event: name}`. */
    async event(name, timeoutMs = 120_000) {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const i = events.findIndex((e) => e.event === name);
        if (i >= 0) return events.splice(i, 1)[0];
        if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${path.basename(script)} exited before '${name}'`);
        if (Date.now() > until) throw new Error(`no '${name}' from ${path.basename(script)} within ${timeoutMs} ms`);
        await new Promise((r) => {
          onEvent = r;
          setTimeout(r, 200);
        });
        onEvent = undefined;
      }
    },
    stop: (signal, waitMs) => stopProcess(proc, signal, waitMs),
  };
  return handle;
}

/**
 * Serves IPC calls in a script started by startNodeIpc. Handlers may be async;
 * their value (or error message) goes back to the caller.
 */
export function serveIpc(handlers) {
  process.on('message', (msg) => {
    const h = handlers[msg?.cmd];
    const reply = (body) => process.send?.({ replyTo: msg.id, ...body });
    if (h === undefined) return reply({ error: `unknown command ${String(msg?.cmd)}` });
    Promise.resolve()
      .then(() => h(msg.params ?? {}))
      .then(
        (value) => reply({ value }),
        (err) => reply({ error: err instanceof Error ? `${err.message}\n${err.stack}` : String(err) }),
      );
  });
  // The parent going away ends this process.
  process.on('disconnect', () => process.exit(0));
}

/** Starts the echo child directly and returns its ws URL. */
export async function startEchoChild({ tokenSha256 } = {}) {
  return startAppServer([process.execPath, ECHO_CHILD], { tokenSha256 });
}

/**
 * The real codex app-server, run directly (the anchors' child): its own
 * CODEX_HOME with the bench's config (a mock provider; nothing here reaches
 * a model). `home` is removed by the caller.
 */
export async function startCodexChild({ tokenSha256 } = {}) {
  const { defaultCodexBin, renderCodexConfig } = await import('../dist/index.js');
  const home = await scratchDir('codex-home-');
  await writeFile(path.join(home, 'config.toml'), renderCodexConfig(BENCH_SPAWN_CONFIG.config, 'bench-loopback-token'));
  const benchEnv = Object.fromEntries(BENCH_SPAWN_CONFIG.env.map((e) => e.split('=')));
  const child = await startAppServer([defaultCodexBin()], { tokenSha256, env: { ...process.env, ...benchEnv, CODEX_HOME: home, HOME: home } });
  return { ...child, home };
}

async function startAppServer(argv, { tokenSha256, env }) {
  const args = ['app-server', '--listen', 'ws://127.0.0.1:0'];
  if (tokenSha256 !== undefined) args.push('--ws-auth', 'capability-token', '--ws-token-sha256', tokenSha256);
  const proc = startProcess([...argv, ...args], { stdio: ['ignore', 'ignore', 'pipe'], ...(env === undefined ? {} : { env }) });
  const url = await new Promise((resolve, reject) => {
    let buf = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (c) => {
      buf += c;
      const m = /ws:\/\/[^\s]+/.exec(buf);
      if (m) resolve(m[0]);
    });
    proc.once('exit', () => reject(new Error(`app-server exited: ${buf}`)));
  });
  proc.stderr.resume();
  return { proc, url, port: Number(new URL(url).port) };
}

/** A free loopback TCP port (for servers that cannot report a port-0 bind, like nginx). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls an HTTP URL until it answers 200. */
export async function waitHttp200(url, timeoutMs = 10_000) {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    try {
      const res = await fetch(url);
      if (res.status === 200) return;
    } catch {
      // Not up yet.
    }
    await sleep(20);
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms`);
}

/** A scratch directory outside /tmp (codex refuses some links under temp dirs). */
export async function scratchDir(prefix) {
  const base = path.join(os.homedir(), '.cache', 'cxg-bench');
  await mkdir(base, { recursive: true });
  return mkdtemp(path.join(base, prefix));
}

export async function removeDir(dir) {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
}

export function which(cmd) {
  for (const dir of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    const p = path.join(dir, cmd);
    if (dir && existsSync(p)) return p;
  }
  return undefined;
}

export const GATEWAY_SERVER = path.join(BENCH_DIR, 'gateway-server.mjs');
export const LOADGEN = path.join(BENCH_DIR, 'loadgen.mjs');
