// dataplane: closed-loop echo through the gateway against its anchors, all in
// one run: the echo child directly, nginx (1 worker) in front of it, and a
// naive single-thread `ws` proxy in front of it. The gateway runs in its own
// process and spawns the same echo child (bench/echo-child.mjs) for its
// workspace; the load generator is a third process.
//
// Then the same with the real codex behind each path (direct, nginx,
// gateway): a closed loop of `thread/list` over 20 connections to one
// workspace, as clients listing threads do; on two cores every microsecond
// the proxy spends is taken from codex.
//
// Env: BENCH_REAL=off|only (the real-codex scenario; default: run it too), BENCH_DURATION_MS (measured window per run, default 4000),
// BENCH_WARMUP_MS (default 1000), BENCH_ROUNDS (runs per cell, the median one by throughput kept;
// default 2), BENCH_CPU_PROF=DIR (gateway process under --cpu-prof).
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { signWorkspaceToken } from '../dist/index.js';
import {
  BENCH_DIR,
  checkQuiet,
  childPids,
  cpuSeconds,
  GATEWAY_SERVER,
  JWT_SECRET,
  LOADGEN,
  fmtInt,
  freePort,
  machine,
  machineLine,
  removeDir,
  round,
  scratchDir,
  startEchoChild,
  startNodeIpc,
  startProcess,
  stopProcess,
  table,
  verdict,
  which,
  writeResult,
} from './common.mjs';

const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 4000);
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const ALL_SCENARIOS = [
  { name: '1 conn, 200 B', conns: 1, size: 200 },
  { name: '50 conns, 200 B', conns: 50, size: 200 },
  { name: '1 conn, 64 KiB', conns: 1, size: 64 * 1024 },
  { name: '50 conns, 64 KiB', conns: 50, size: 64 * 1024 },
];
// BENCH_BASELINE_DIST=DIR adds a path through a gateway built elsewhere (before/after comparisons).
const BASELINE = process.env.BENCH_BASELINE_DIST;
const ALL_PATHS = ['direct', 'nginx', 'naive', 'gateway', ...(BASELINE ? ['baseline'] : [])];
// BENCH_ONLY=gateway,direct and BENCH_SCENARIOS=0,1 narrow a run (for profiling).
const SCENARIOS = process.env.BENCH_SCENARIOS ? process.env.BENCH_SCENARIOS.split(',').map((i) => ALL_SCENARIOS[Number(i)]) : ALL_SCENARIOS;
const PATHS = process.env.BENCH_ONLY ? ALL_PATHS.filter((p) => process.env.BENCH_ONLY.split(',').includes(p)) : ALL_PATHS;
const REAL = process.env.BENCH_REAL ?? 'on';
const REAL_SCENARIO = { name: 'real codex, 20 conns, thread/list', conns: 20, method: 'thread/list', params: {} };
const REAL_PATHS = ['direct', 'nginx', 'gateway'];
// codex's own pace varies between rounds more than the proxies differ: more rounds, and the verdict on the median of each round's gateway/nginx ratio.
const REAL_ROUNDS = Number(process.env.BENCH_REAL_ROUNDS ?? 5);
const LABEL = { direct: 'child directly', nginx: 'nginx (1 worker)', naive: 'naive ws proxy', gateway: 'gateway', baseline: 'gateway (baseline)' };

function nginxConf(prefix, port, childPort) {
  return `worker_processes 1;
daemon off;
master_process on;
pid ${prefix}/nginx.pid;
error_log ${prefix}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${prefix}/client_body;
  proxy_temp_path ${prefix}/proxy;
  fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi;
  scgi_temp_path ${prefix}/scgi;
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://127.0.0.1:${childPort};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
`;
}

async function waitTcp(port, timeoutMs = 10_000) {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(20);
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

async function startNginx(childPort) {
  const bin = which('nginx');
  if (bin === undefined) return undefined;
  const prefix = await scratchDir('nginx-');
  const port = await freePort();
  await writeFile(path.join(prefix, 'nginx.conf'), nginxConf(prefix, port, childPort));
  const proc = startProcess([bin, '-p', prefix, '-e', path.join(prefix, 'error.log'), '-c', path.join(prefix, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitTcp(port);
  const version = spawnSync(bin, ['-v'], { encoding: 'utf8' }).stderr.trim().replace(/^nginx version: /, '');
  return { proc, port, prefix, version };
}

async function startNaive(target) {
  const proc = startProcess([process.execPath, path.join(BENCH_DIR, 'naive-proxy.mjs'), target], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let buf = '';
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (c) => {
      buf += c;
      const m = /listening (\d+)/.exec(buf);
      if (m) resolve(Number(m[1]));
    });
    proc.once('exit', () => reject(new Error('naive proxy exited')));
  });
  return { proc, port };
}

/** The median round by throughput (the lower middle one for an even count): every figure of a row comes from it. */
function medianRound(rounds) {
  const s = [...rounds].sort((a, b) => a.msgsPerSec - b.msgsPerSec);
  return s[Math.floor((s.length - 1) / 2)];
}

/**
 * The real-codex scenario: one codex app-server started directly (direct,
 * and behind nginx) and the gateway with the real codex for one workspace,
 * each driven by the same closed loop of JSON-RPC requests.
 */
async function realCodex(load) {
  const gw = await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'real', childNice: 0 }) } });
  const ready = await gw.event('ready');
  // One codex process behind all three paths: the gateway's own child for the
  // workspace, reached directly and through nginx with its capability token.
  // Two codex processes differ more from each other than the proxies do.
  const started = (await gw.call('ensure', { ids: ['bench-real'] })).runs[0];
  if (started.error !== undefined) throw new Error(`the gateway did not start codex: ${started.error}`);
  const child = { url: started.wsUrl, port: Number(new URL(started.wsUrl).port) };
  const nginx = await startNginx(child.port);
  const jwt = await signWorkspaceToken({ secret: JWT_SECRET, workspaceId: 'bench-real', expiresIn: '2h' });
  const sc = REAL_SCENARIO;
  const targets = {
    direct: { url: child.url, headers: { authorization: `Bearer ${started.wsToken}` } },
    nginx: nginx && { url: `ws://127.0.0.1:${nginx.port}`, headers: { authorization: `Bearer ${started.wsToken}` } },
    gateway: { url: ready.url, headers: { authorization: `Bearer ${jwt}` } },
  };
  const proxyPids = { direct: () => [], nginx: () => (nginx ? [nginx.proc.pid, ...childPids(nginx.proc.pid)] : []), gateway: () => [gw.pid] };
  const runs = Object.fromEntries(REAL_PATHS.map((p) => [p, []]));
  try {
    // The gateway's first connection starts its child: outside any measurement.
    await load.call('rpc', { ...targets.gateway, conns: 1, method: sc.method, params: sc.params, warmupMs: 200, durationMs: 300 });
    for (let r = 0; r < REAL_ROUNDS; r++) {
      const order = REAL_PATHS.map((_, i) => REAL_PATHS[(i + r) % REAL_PATHS.length]);
      for (const p of order) {
        if (!targets[p]) continue;
        const pids = proxyPids[p]();
        const cpu0 = pids.reduce((a, pid) => a + cpuSeconds(pid), 0);
        const res = await load.call('rpc', { ...targets[p], conns: sc.conns, method: sc.method, params: sc.params, warmupMs: WARMUP_MS, durationMs: DURATION_MS });
        res.proxyCpuUsPerMsg = pids.length === 0 ? 0 : ((pids.reduce((a, pid) => a + cpuSeconds(pid), 0) - cpu0) * 1e6) / res.allMsgs;
        runs[p].push(res);
        process.stdout.write(`  ${sc.name.padEnd(18)} ${LABEL[p].padEnd(17)} ${fmtInt(res.msgsPerSec).padStart(7)} req/s  p50 ${round(res.rttUs.p50, 0)} µs  p99 ${round(res.rttUs.p99, 0)} µs  proxy CPU ${round(res.proxyCpuUsPerMsg, 1)} µs/req${res.badFrames || res.unexpectedCloses ? `  (errors ${res.badFrames}, closed ${res.unexpectedCloses})` : ''}\n`);
      }
    }
  } finally {
    if (nginx) {
      await stopProcess(nginx.proc, 'SIGQUIT');
      await removeDir(nginx.prefix);
    }
    await gw.call('drain').catch(() => {});
    await gw.stop();
  }
  const cells = {};
  for (const p of REAL_PATHS) {
    if (runs[p].length === 0) {
      cells[p] = null;
      continue;
    }
    const m = medianRound(runs[p]);
    cells[p] = { msgsPerSec: m.msgsPerSec, p50Us: m.rttUs.p50, p99Us: m.rttUs.p99, proxyCpuUsPerMsg: m.proxyCpuUsPerMsg, badFrames: runs[p].reduce((a, x) => a + x.badFrames + x.unexpectedCloses + x.lostInFlight, 0), rounds: runs[p] };
  }
  // Each round ran the paths back to back: its gateway/nginx ratio compares like with like.
  const ratios = runs.gateway.length > 0 && runs.nginx.length === runs.gateway.length ? runs.gateway.map((g, i) => g.msgsPerSec / runs.nginx[i].msgsPerSec) : [];
  const sorted = [...ratios].sort((a, b) => a - b);
  return { cells, ratios, medianRatio: sorted.length > 0 ? sorted[Math.floor((sorted.length - 1) / 2)] : undefined, nginxVersion: nginx?.version };
}

async function main() {
  console.log(`dataplane: closed-loop echo, ${DURATION_MS} ms measured after ${WARMUP_MS} ms warm-up, median round of ${ROUNDS} by throughput`);
  console.log(machineLine());
  const busyBefore = { start: await checkQuiet() };
  const threadRtt = JSON.parse(spawnSync(process.execPath, [path.join(BENCH_DIR, 'thread-rtt.mjs')], { encoding: 'utf8' }).stdout);
  console.log(`MessagePort round trip between two threads (the floor under front ⇄ shard): p50 ${round(threadRtt.p50, 1)} µs, p99 ${round(threadRtt.p99, 1)} µs`);
  const childToken = randomBytes(32).toString('base64url');
  const child = await startEchoChild({ tokenSha256: createHash('sha256').update(childToken).digest('hex') });
  const naive = await startNaive(child.url);
  const nginx = await startNginx(child.port);
  // The same echo child behind every path, at the same priority: the gateway's
  // default of running children below itself (spawn.nice) is off here.
  const gw = await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'echo', childNice: 0 }) } });
  const ready = await gw.event('ready');
  const base = BASELINE ? await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'echo', childNice: 0 }), CXG_BENCH_DIST: BASELINE } }) : undefined;
  const baseReady = base ? await base.event('ready') : undefined;
  const jwt = await signWorkspaceToken({ secret: JWT_SECRET, workspaceId: 'bench-dataplane', expiresIn: '2h' });
  const load = await startNodeIpc(LOADGEN);
  await load.event('ready');

  const targets = {
    direct: { url: child.url, headers: { authorization: `Bearer ${childToken}` } },
    naive: { url: `ws://127.0.0.1:${naive.port}`, headers: { authorization: `Bearer ${childToken}` } },
    nginx: nginx && { url: `ws://127.0.0.1:${nginx.port}`, headers: { authorization: `Bearer ${childToken}` } },
    gateway: { url: ready.url, headers: { authorization: `Bearer ${jwt}` } },
    baseline: baseReady && { url: baseReady.url, headers: { authorization: `Bearer ${jwt}` } },
  };
  const proxyPids = {
    direct: () => [],
    naive: () => [naive.proc.pid],
    nginx: () => (nginx ? [nginx.proc.pid, ...childPids(nginx.proc.pid)] : []),
    gateway: () => [gw.pid],
    baseline: () => (base ? [base.pid] : []),
  };
  // The gateway's first connection starts its child: do that outside any measurement.
  await load.call('echo', { ...targets.gateway, conns: 1, size: 200, warmupMs: 200, durationMs: 300 });
  if (base) await load.call('echo', { ...targets.baseline, conns: 1, size: 200, warmupMs: 200, durationMs: 300 });

  const cells = {};
  const frontLoop = [];
  let real;
  try {
    for (const sc of REAL === 'only' ? [] : SCENARIOS) {
      cells[sc.name] = {};
      busyBefore[sc.name] = await checkQuiet(sc.name);
      const runs = Object.fromEntries(PATHS.map((p) => [p, []]));
      for (let r = 0; r < ROUNDS; r++) {
        // Rotate the order each round so no path always runs first or last.
        const order = PATHS.map((_, i) => PATHS[(i + r) % PATHS.length]);
        for (const p of order) {
          if (targets[p] === undefined) continue;
          if (p === 'gateway') await gw.call('resetLoop');
          const pids = proxyPids[p]();
          const cpu0 = pids.reduce((a, pid) => a + cpuSeconds(pid), 0);
          const res = await load.call('echo', { ...targets[p], conns: sc.conns, size: sc.size, warmupMs: WARMUP_MS, durationMs: DURATION_MS });
          // CPU of the proxy (all its threads and processes) per message it carried, both ways.
          res.proxyCpuUsPerMsg = pids.length === 0 ? 0 : ((pids.reduce((a, pid) => a + cpuSeconds(pid), 0) - cpu0) * 1e6) / res.allMsgs;
          if (p === 'gateway') {
            const s = await gw.call('stats');
            frontLoop.push({ scenario: sc.name, front: s.front, shards: s.shards });
          }
          runs[p].push(res);
          process.stdout.write(`  ${sc.name.padEnd(18)} ${LABEL[p].padEnd(17)} ${fmtInt(res.msgsPerSec).padStart(7)} msg/s  p50 ${round(res.rttUs.p50, 0)} µs  p99 ${round(res.rttUs.p99, 0)} µs  proxy CPU ${round(res.proxyCpuUsPerMsg, 1)} µs/msg${res.badFrames || res.unexpectedCloses ? `  (bad ${res.badFrames}, closed ${res.unexpectedCloses})` : ''}\n`);
        }
      }
      for (const p of PATHS) {
        if (runs[p].length === 0) {
          cells[sc.name][p] = null;
          continue;
        }
        const m = medianRound(runs[p]);
        cells[sc.name][p] = {
          msgsPerSec: m.msgsPerSec,
          mbPerSec: m.mbPerSec,
          p50Us: m.rttUs.p50,
          p99Us: m.rttUs.p99,
          proxyCpuUsPerMsg: m.proxyCpuUsPerMsg,
          badFrames: runs[p].reduce((a, x) => a + x.badFrames + x.unexpectedCloses + x.lostInFlight, 0),
          rounds: runs[p],
        };
      }
    }
    if (REAL !== 'off') {
      busyBefore[REAL_SCENARIO.name] = await checkQuiet(REAL_SCENARIO.name);
      real = await realCodex(load);
    }
  } finally {
    await load.stop();
    await gw.call('drain').catch(() => {});
    await gw.stop();
    if (base) {
      await base.call('drain').catch(() => {});
      await base.stop();
    }
    await stopProcess(naive.proc);
    if (nginx) {
      await stopProcess(nginx.proc, 'SIGQUIT');
      await removeDir(nginx.prefix);
    }
    await stopProcess(child.proc);
  }

  // ---- table and targets ----
  const rows = [];
  for (const sc of REAL === 'only' ? [] : SCENARIOS) {
    const c = cells[sc.name];
    for (const p of PATHS) {
      const x = c[p];
      if (x === null) {
        rows.push([sc.name, LABEL[p], 'not installed', '', '', '', '', '']);
        continue;
      }
      const vsDirect = c.direct ? x.msgsPerSec / c.direct.msgsPerSec : NaN;
      const vsNginx = c.nginx ? x.msgsPerSec / c.nginx.msgsPerSec : undefined;
      rows.push([
        sc.name,
        LABEL[p],
        fmtInt(x.msgsPerSec),
        sc.size > 1000 ? round(x.mbPerSec, 0) : '',
        round(x.p50Us, 0),
        round(x.p99Us, 0),
        p === 'direct' ? '' : round(x.proxyCpuUsPerMsg, 1),
        `${Number.isNaN(vsDirect) ? '—' : `${round(vsDirect, 2)}×`} / ${vsNginx === undefined ? '—' : `${round(vsNginx, 2)}×`}`,
      ]);
    }
  }
  if (real !== undefined) {
    for (const p of REAL_PATHS) {
      const x = real.cells[p];
      if (x === null) {
        rows.push([REAL_SCENARIO.name, LABEL[p], 'not installed', '', '', '', '', '']);
        continue;
      }
      const vsDirect = real.cells.direct ? x.msgsPerSec / real.cells.direct.msgsPerSec : NaN;
      const vsNginx = real.cells.nginx ? x.msgsPerSec / real.cells.nginx.msgsPerSec : undefined;
      rows.push([REAL_SCENARIO.name, LABEL[p], fmtInt(x.msgsPerSec), '', round(x.p50Us, 0), round(x.p99Us, 0), p === 'direct' ? '' : round(x.proxyCpuUsPerMsg, 1), `${Number.isNaN(vsDirect) ? '—' : `${round(vsDirect, 2)}×`} / ${vsNginx === undefined ? '—' : `${round(vsNginx, 2)}×`}`]);
    }
  }
  const haveNginx = nginx !== undefined;
  const checks = [];
  if (real !== undefined) {
    const c = real.cells;
    checks.push({
      target: 'real codex (thread/list, 20 conns): throughput ≥ 0.95× nginx (median of the rounds\' ratios)',
      value: c.nginx ? `${round(real.medianRatio, 2)}× (rounds: ${real.ratios.map((x) => `${round(x, 2)}×`).join(', ')}); proxy CPU ${round(c.gateway.proxyCpuUsPerMsg, 0)} vs ${round(c.nginx.proxyCpuUsPerMsg, 0)} µs/req` : 'nginx not installed',
      ok: c.nginx ? real.medianRatio >= 0.95 : undefined,
    });
  }
  const narrowed = SCENARIOS !== ALL_SCENARIOS || PATHS !== ALL_PATHS || REAL === 'only';
  for (const sc of narrowed ? [] : SCENARIOS) {
    const c = cells[sc.name];
    if (sc.conns === 50 && sc.size > 1000) {
      checks.push({
        target: 'throughput at 50 conns ≥ 1.0× nginx (64 KiB)',
        value: haveNginx ? `${fmtInt(c.gateway.msgsPerSec)} vs ${fmtInt(c.nginx.msgsPerSec)} msg/s (${round(c.gateway.msgsPerSec / c.nginx.msgsPerSec, 2)}×)` : 'nginx not installed',
        ok: haveNginx ? c.gateway.msgsPerSec >= c.nginx.msgsPerSec : undefined,
      });
    } else if (sc.conns === 50) {
      checks.push({
        target: 'throughput at 50 conns ≥ 0.8× nginx, proxy CPU per message ≤ 2× nginx\'s (200 B)',
        value: haveNginx ? `${fmtInt(c.gateway.msgsPerSec)} vs ${fmtInt(c.nginx.msgsPerSec)} msg/s (${round(c.gateway.msgsPerSec / c.nginx.msgsPerSec, 2)}×); CPU ${round(c.gateway.proxyCpuUsPerMsg, 1)} vs ${round(c.nginx.proxyCpuUsPerMsg, 1)} µs/msg` : 'nginx not installed',
        ok: haveNginx ? c.gateway.msgsPerSec >= 0.8 * c.nginx.msgsPerSec && c.gateway.proxyCpuUsPerMsg <= 2 * c.nginx.proxyCpuUsPerMsg : undefined,
      });
    }
    checks.push({
      target: `p99 ≤ nginx (${sc.name})`,
      value: haveNginx ? `${round(c.gateway.p99Us, 0)} vs ${round(c.nginx.p99Us, 0)} µs` : 'nginx not installed',
      ok: haveNginx ? c.gateway.p99Us <= c.nginx.p99Us : undefined,
    });
    if (sc.conns === 1) {
      const gwOver = c.gateway.p50Us - c.direct.p50Us;
      const ngOver = haveNginx ? c.nginx.p50Us - c.direct.p50Us : undefined;
      checks.push({
        target: `1-conn RTT overhead over direct ≤ 1.5× nginx's (${sc.size > 1000 ? '64 KiB' : '200 B'})`,
        value: haveNginx ? `${round(gwOver, 0)} µs vs 1.5 × ${round(ngOver, 0)} = ${round(1.5 * ngOver, 0)} µs` : `gateway +${round(gwOver, 0)} µs; nginx not installed`,
        ok: haveNginx ? gwOver <= 1.5 * ngOver : undefined,
      });
    }
  }
  console.log(`\ndataplane (${machineLine()}; nginx: ${haveNginx ? nginx.version : 'not installed'}; thread round trip p50 ${round(threadRtt.p50, 1)} µs)`);
  console.log(table(['scenario', 'path', 'msg/s', 'MB/s', 'RTT p50 µs', 'RTT p99 µs', 'proxy CPU µs/msg', 'msg/s vs direct / nginx'], rows));
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, verdict(k.ok)])));
  const badFrames = Object.values(cells).flatMap((c) => Object.values(c)).reduce((a, x) => a + (x?.badFrames ?? 0), 0);
  if (badFrames > 0) console.log(`WARNING: ${badFrames} frames were wrong, lost or closed early`);
  if (narrowed) return;
  await writeResult('dataplane', {
    busyBefore,
    threadRttUs: threadRtt,
    settings: { durationMs: DURATION_MS, warmupMs: WARMUP_MS, rounds: ROUNDS, shards: ready.shards, nginx: haveNginx ? nginx.version : 'not installed', cores: machine().cores },
    cells,
    realCodex: real === undefined ? null : { ...real.cells, ratios: real.ratios, medianRatio: real.medianRatio },
    checks,
    frontLoop,
  });
}

await main();
