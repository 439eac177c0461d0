// spawn: a cold `ensureSubprocess` with the real codex binary and an empty
// store, against the same binary started directly (same argv, same
// config.toml, same offline environment) until its /readyz answers 200.
// The gateway runs in its own process; its time is measured there around the
// library call. The direct start is timed here from spawn() to the first 200
// of /readyz, polled every millisecond after the banner. The two alternate.
//
// Env: BENCH_SPAWN_RUNS (default 12).
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultCodexBin, renderCodexConfig } from '../dist/index.js';
import { BENCH_SPAWN_CONFIG, GATEWAY_SERVER, checkQuiet, machine, machineLine, removeDir, round, scratchDir, startNodeIpc, summarize, table, verdict, writeResult } from './common.mjs';

const RUNS = Number(process.env.BENCH_SPAWN_RUNS ?? 12);

function probe(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

/** Starts codex app-server directly; ms from spawn() until /readyz is 200. */
async function directStart(root, i) {
  const home = path.join(root, `direct-${i}`);
  await mkdir(home, { recursive: true });
  const loopbackToken = randomBytes(32).toString('hex');
  await writeFile(path.join(home, 'config.toml'), renderCodexConfig(BENCH_SPAWN_CONFIG.config, loopbackToken), { mode: 0o600 });
  const wsToken = randomBytes(32).toString('base64url');
  const sha = createHash('sha256').update(wsToken).digest('hex');
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? '/root',
    LANG: process.env.LANG ?? 'C.UTF-8',
    CODEX_HOME: home,
    CXG_TEST_API_KEY: 'cxg-bench-key',
    CODEX_INTERNAL_APP_SERVER_REMOTE_CONTROL_DISABLED: '1',
  };
  const t0 = performance.now();
  const child = spawn(defaultCodexBin(), ['app-server', '--listen', 'ws://127.0.0.1:0', '--ws-auth', 'capability-token', '--ws-token-sha256', sha], {
    cwd: home,
    env,
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise((r) => child.once('exit', r));
  try {
    const url = await new Promise((resolve, reject) => {
      let buf = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (c) => {
        buf += c;
        const m = /ws:\/\/127\.0\.0\.1:(\d+)/.exec(buf);
        if (m) resolve(`http://127.0.0.1:${m[1]}/readyz`);
      });
      child.once('exit', () => reject(new Error(`codex exited: ${buf.slice(-500)}`)));
    });
    child.stderr.resume();
    const banner = performance.now() - t0;
    let probes = 1;
    while (!(await probe(url))) {
      if (performance.now() - t0 > 30_000) throw new Error('codex not ready within 30 s');
      probes++;
      await sleep(1);
    }
    return { ms: performance.now() - t0, bannerMs: banner, probes };
  } finally {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // Gone.
    }
    await exited;
    await removeDir(home);
  }
}

async function main() {
  console.log(`spawn: cold ensureSubprocess (real codex, empty file store) vs the binary started directly, ${RUNS} runs each, alternating`);
  console.log(machineLine());
  const busyBefore = await checkQuiet();
  const root = await scratchDir('spawn-');
  const gw = await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'real', readyTimeoutMs: 30_000 }) } });
  await gw.event('ready');
  const direct = [];
  const viaGateway = [];
  const bannerToReady = [];
  const failures = [];
  try {
    // One of each first, not counted: the binary's pages come into the cache.
    await directStart(root, 'warm');
    const warm = await gw.call('ensure', { ids: ['bench-spawn-warm'] });
    await gw.call('shutdown', { ids: ['bench-spawn-warm'] });
    if (warm.runs[0].error) throw new Error(`gateway start failed: ${warm.runs[0].error}`);
    for (let i = 0; i < RUNS; i++) {
      const d = await directStart(root, i);
      direct.push(d.ms);
      bannerToReady.push(d.ms - d.bannerMs);
      const id = `bench-spawn-${i}`;
      const r = (await gw.call('ensure', { ids: [id] })).runs[0];
      if (r.error) failures.push(r.error);
      else viaGateway.push(r.ms);
      // Stop it (upload included) outside the measurement.
      await gw.call('shutdown', { ids: [id] });
      process.stdout.write(`  run ${i + 1}: direct ${round(direct.at(-1), 1)} ms, gateway ${r.error ? `failed (${r.error})` : `${round(r.ms, 1)} ms`}\n`);
    }
  } finally {
    await gw.call('drain').catch(() => {});
    await gw.stop();
    await removeDir(root);
  }
  const d = summarize(direct);
  const g = summarize(viaGateway);
  const overheadP50 = g.p50 - d.p50;
  const b = summarize(bannerToReady);
  const checks = [{ target: 'p50 overhead ≤ 20 ms over the direct start', value: `${round(overheadP50, 1)} ms (${round(g.p50, 1)} vs ${round(d.p50, 1)} ms)`, ok: failures.length === 0 && overheadP50 <= 20 }];
  console.log(`\nspawn (${machineLine()})`);
  console.log(
    table(
      ['start', 'runs', 'p50 ms', 'p90 ms', 'max ms', 'failures'],
      [
        ['codex directly (to /readyz 200)', d.n, round(d.p50, 1), round(d.p90, 1), round(d.max, 1), 0],
        ['cold ensureSubprocess (gateway)', g.n, round(g.p50, 1), round(g.p90, 1), round(g.max, 1), failures.length],
        ['overhead', '', round(overheadP50, 1), round(g.p90 - d.p90, 1), '', ''],
        ['(direct: banner printed → /readyz 200)', b.n, round(b.p50, 1), round(b.p90, 1), round(b.max, 1), ''],
      ],
    ),
  );
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, verdict(k.ok)])));
  await writeResult('spawn', { busyBefore, settings: { runs: RUNS, cores: machine().cores }, directMs: d, gatewayMs: g, overheadP50Ms: overheadP50, bannerToReadyMs: b, failures, samples: { direct, gateway: viaGateway }, checks });
}

await main();
