// spawn: a cold `ensureSubprocess` with the real codex binary and an empty
// store, against the same binary started directly (same argv, same
// config.toml, same offline environment) until its /readyz answers 200.
// The gateway runs in its own process; its time is measured there around the
// library call. The direct start is timed here from spawn() to the first 200
// of /readyz, polled every millisecond after the banner. The two alternate.
//
// Then a workspace with a large home in S3 (s3rver, in a process of its
// own): its start from the warm cache (one HEAD, no download) and its cold
// start with a download (the warm copy removed, as on another replica), each
// against the bare codex start measured in the same rounds.
//
// Env: BENCH_SPAWN_RUNS (default 12), BENCH_SPAWN_HOME_MIB (default 50),
// BENCH_SPAWN_HOME_RUNS (default 5).
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { mkdir, open, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { defaultCodexBin, renderCodexConfig } from '../dist/index.js';
import { BENCH_DIR, BENCH_SPAWN_CONFIG, GATEWAY_SERVER, checkQuiet, machine, machineLine, removeDir, round, scratchDir, startNodeIpc, summarize, table, verdict, writeResult } from './common.mjs';

const RUNS = Number(process.env.BENCH_SPAWN_RUNS ?? 12);
const HOME_MIB = Number(process.env.BENCH_SPAWN_HOME_MIB ?? 50);
const HOME_RUNS = Number(process.env.BENCH_SPAWN_HOME_RUNS ?? 5);
const MiB = 1024 * 1024;

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

/** Incompressible bytes, written in 1 MiB chunks. */
async function writeBlob(file, mib) {
  const fh = await open(file, 'w');
  try {
    for (let i = 0; i < mib; i++) await fh.write(randomBytes(MiB));
  } finally {
    await fh.close();
  }
}

/**
 * A workspace with a HOME_MIB home stored in s3rver: a start from its warm
 * copy and a start with a download, alternating with the bare codex start.
 */
async function largeHome(root) {
  const s3 = await startNodeIpc(path.join(BENCH_DIR, 's3rver-server.mjs'), { nice: 10 });
  const store = await s3.event('ready');
  const gw = await startNodeIpc(GATEWAY_SERVER, {
    env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'real', readyTimeoutMs: 60_000, store: { kind: 's3', endpoint: store.endpoint, bucket: store.bucket, prefix: 'bench-spawn', credentials: store.credentials } }) },
  });
  await gw.event('ready');
  const id = 'bench-spawn-home';
  const hit = [];
  const download = [];
  const direct = [];
  const ensure = async () => {
    const r = (await gw.call('ensure', { ids: [id] })).runs[0];
    if (r.error) throw new Error(`start failed: ${r.error}`);
    return r;
  };
  const stop = async () => {
    const r = (await gw.call('shutdown', { ids: [id] })).runs[0];
    if (!r.saved) throw new Error(`shutdown did not save: ${r.error}`);
  };
  try {
    const first = await ensure();
    await writeBlob(path.join(first.codexHome, 'workspace', 'blob.bin'), HOME_MIB);
    for (let i = 0; i < HOME_RUNS; i++) {
      await stop();
      hit.push((await ensure()).ms);
      await stop();
      // No warm copy: the home comes from the store, as on another replica.
      await removeDir(path.dirname(first.codexHome));
      download.push((await ensure()).ms);
      direct.push((await directStart(root, `home-${i}`)).ms);
      process.stdout.write(`  ${HOME_MIB} MiB home, run ${i + 1}: direct ${round(direct.at(-1), 1)} ms, warm ${round(hit.at(-1), 1)} ms, download ${round(download.at(-1), 1)} ms\n`);
    }
  } finally {
    await gw.call('drain').catch(() => {});
    await gw.stop();
    await s3.stop();
  }
  return { hit: summarize(hit), download: summarize(download), direct: summarize(direct), samples: { hit, download, direct } };
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
  }
  let home;
  try {
    home = await largeHome(root);
  } finally {
    await removeDir(root);
  }
  const d = summarize(direct);
  const g = summarize(viaGateway);
  const overheadP50 = g.p50 - d.p50;
  const b = summarize(bannerToReady);
  const checks = [
    { target: 'p50 overhead ≤ 20 ms over the direct start', value: `${round(overheadP50, 1)} ms (${round(g.p50, 1)} vs ${round(d.p50, 1)} ms)`, ok: failures.length === 0 && overheadP50 <= 20 },
    {
      target: `${HOME_MIB} MiB home: a warm start skips the download (p50 below the cold start's)`,
      value: `${round(home.hit.p50, 1)} vs ${round(home.download.p50, 1)} ms`,
      ok: home.hit.p50 < home.download.p50,
    },
  ];
  console.log(`\nspawn (${machineLine()})`);
  console.log(
    table(
      ['start', 'runs', 'p50 ms', 'p90 ms', 'max ms', 'failures'],
      [
        ['codex directly (to /readyz 200)', d.n, round(d.p50, 1), round(d.p90, 1), round(d.max, 1), 0],
        ['cold ensureSubprocess (gateway)', g.n, round(g.p50, 1), round(g.p90, 1), round(g.max, 1), failures.length],
        ['overhead', '', round(overheadP50, 1), round(g.p90 - d.p90, 1), '', ''],
        ['(direct: banner printed → /readyz 200)', b.n, round(b.p50, 1), round(b.p90, 1), round(b.max, 1), ''],
        [`${HOME_MIB} MiB home: codex directly`, home.direct.n, round(home.direct.p50, 1), round(home.direct.p90, 1), round(home.direct.max, 1), ''],
        [`${HOME_MIB} MiB home: warm start (cache hit, one HEAD)`, home.hit.n, round(home.hit.p50, 1), round(home.hit.p90, 1), round(home.hit.max, 1), ''],
        [`${HOME_MIB} MiB home: cold start (download from s3rver)`, home.download.n, round(home.download.p50, 1), round(home.download.p90, 1), round(home.download.max, 1), ''],
      ],
    ),
  );
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, verdict(k.ok)])));
  await writeResult('spawn', { busyBefore, settings: { runs: RUNS, cores: machine().cores }, directMs: d, gatewayMs: g, overheadP50Ms: overheadP50, bannerToReadyMs: b, failures, largeHome: { mib: HOME_MIB, runs: HOME_RUNS, directMs: home.direct, warmMs: home.hit, downloadMs: home.download }, samples: { direct, gateway: viaGateway, largeHome: home.samples }, checks });
}

await main();
