// spawn-storm: 64 cold starts of distinct workspaces at once with the real
// codex binary, through `ensureSubprocess` in the gateway process (the same
// call the data plane makes on a first connection). Counts failures and
// measures the front thread's event-loop delay meanwhile: the monitor runs
// in the gateway's main thread, which is the uWebSockets.js front thread and
// also runs the Supervisor facade (config builders, archive dispatch).
//
// Env: BENCH_STORM (default 64), BENCH_READY_TIMEOUT_MS (default 5000, the
// `spawn.ready_timeout` default).
import { GATEWAY_SERVER, checkQuiet, machine, machineLine, round, startNodeIpc, summarize, table, verdict, writeResult } from './common.mjs';

const STORM = Number(process.env.BENCH_STORM ?? 64);
const READY_TIMEOUT_MS = Number(process.env.BENCH_READY_TIMEOUT_MS ?? 5000);

async function main() {
  console.log(`spawn-storm: ${STORM} cold starts at once (real codex, ready timeout ${READY_TIMEOUT_MS} ms)`);
  console.log(machineLine());
  const busyBefore = await checkQuiet();
  const gw = await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: process.env.BENCH_CODEX_BIN ?? 'real', readyTimeoutMs: READY_TIMEOUT_MS }) }, nofile: 65_536 });
  const ready = await gw.event('ready');
  let storm;
  let stats;
  try {
    // One start first, not counted: the binary's pages come into the cache.
    await gw.call('ensure', { ids: ['bench-storm-warm'] });
    await gw.call('shutdown', { ids: ['bench-storm-warm'] });
    await gw.call('resetLoop');
    const ids = Array.from({ length: STORM }, (_, i) => `bench-storm-${i}`);
    storm = await gw.call('ensure', { ids, concurrency: STORM });
    stats = await gw.call('stats');
  } finally {
    // Immediate: kills every child's process group; homes are not uploaded.
    await gw.call('destroy').catch(() => {});
    await gw.stop();
  }
  const failures = storm.runs.filter((r) => r.error !== undefined);
  const ok = storm.runs.filter((r) => r.error === undefined).map((r) => r.ms);
  const t = summarize(ok);
  const byError = {};
  for (const f of failures) byError[f.error] = (byError[f.error] ?? 0) + 1;
  const checks = [
    { target: '0 failures', value: `${failures.length} of ${STORM}${failures.length ? ` (${Object.entries(byError).map(([e, n]) => `${n}× ${e.trim()}`).join('; ')})` : ''}`, ok: failures.length === 0 },
    { target: 'front event-loop delay p99 ≤ 10 ms meanwhile', value: `${round(stats.front.p99, 2)} ms (max ${round(stats.front.max, 1)} ms)`, ok: stats.front.p99 <= 10 },
  ];
  console.log(`\nspawn-storm (${machineLine()})`);
  console.log(
    table(
      ['starts', 'all ready after', 'start p50', 'start p99', 'failures', 'front loop p99', 'front loop max', 'front CPU / run-queue wait', 'shard loop p99'],
      [
        [
          STORM,
          `${round(storm.totalMs / 1000, 2)} s`,
          `${round(t.p50, 0)} ms`,
          `${round(t.p99, 0)} ms`,
          failures.length,
          `${round(stats.front.p99, 2)} ms`,
          `${round(stats.front.max, 1)} ms`,
          `${round(stats.front.frontCpuMs, 0)} / ${round(stats.front.frontRunQueueWaitMs, 0)} ms of ${round(stats.front.windowMs, 0)} ms`,
          stats.shards.map((s) => `${round(s.eventLoopDelayP99Ms, 1)} ms`).join(', '),
        ],
      ],
    ),
  );
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, verdict(k.ok)])));
  await writeResult('spawn-storm', {
    busyBefore,
    settings: { starts: STORM, readyTimeoutMs: READY_TIMEOUT_MS, shards: ready.shards, cores: machine().cores },
    totalMs: storm.totalMs,
    startMs: t,
    failures: byError,
    frontLoopMs: stats.front,
    shardLoopP99Ms: stats.shards.map((s) => s.eventLoopDelayP99Ms),
    checks,
  });
}

await main();
