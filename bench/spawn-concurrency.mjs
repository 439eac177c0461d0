// spawn-concurrency: what `limits.max_concurrent_spawns` should default to.
// The same storm of cold starts (real codex, distinct workspaces, all asked
// for at once through `ensureSubprocess`) with the gate at K = 1, 2, 4, 8
// permits, each in a gateway process of its own, in rotating order over
// BENCH_ROUNDS rounds. A start is CPU-bound (codex's own start-up): past the
// core count, more permits only make every start slower without finishing
// the storm sooner, and a client's wait is its place in the queue plus its
// own start.
//
// Env: BENCH_STORM (24 starts), BENCH_CONCURRENCY ("1,2,4,8"), BENCH_ROUNDS (1).
import { GATEWAY_SERVER, checkQuiet, machine, machineLine, round, startNodeIpc, summarize, table, writeResult } from './common.mjs';
import os from 'node:os';

const STORM = Number(process.env.BENCH_STORM ?? 24);
const KS = (process.env.BENCH_CONCURRENCY ?? '1,2,4,8').split(',').map(Number);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 1);

async function storm(k, round) {
  const gw = await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'real', readyTimeoutMs: 60_000, maxConcurrentSpawns: k }) }, nofile: 65_536 });
  await gw.event('ready');
  try {
    // One start first, not counted: the binary's pages come into the cache.
    await gw.call('ensure', { ids: [`bench-k${k}-r${round}-warm`] });
    const load = os.loadavg()[0];
    const ids = Array.from({ length: STORM }, (_, i) => `bench-k${k}-r${round}-${i}`);
    const r = await gw.call('ensure', { ids, concurrency: STORM });
    return { k, round, totalMs: r.totalMs, startMs: summarize(r.runs.filter((x) => x.error === undefined).map((x) => x.ms)), failures: r.runs.filter((x) => x.error !== undefined).length, loadavg1: load };
  } finally {
    await gw.call('destroy').catch(() => {});
    await gw.stop();
  }
}

async function main() {
  console.log(`spawn-concurrency: ${STORM} cold starts at once (real codex) with max_concurrent_spawns ${KS.join(', ')}; ${ROUNDS} round(s)`);
  console.log(machineLine());
  const busyBefore = await checkQuiet();
  const runs = [];
  for (let r = 0; r < ROUNDS; r++) {
    const order = KS.map((_, i) => KS[(i + r) % KS.length]);
    for (const k of order) {
      const x = await storm(k, r);
      console.log(`K=${k}: all ready after ${round(x.totalMs / 1000, 2)} s, start p50 ${round(x.startMs.p50, 0)} ms, p99 ${round(x.startMs.p99, 0)} ms, failures ${x.failures}, load ${round(x.loadavg1, 2)}`);
      runs.push(x);
    }
  }
  console.log(`\nspawn-concurrency (${machineLine()})`);
  console.log(
    table(
      ['max_concurrent_spawns', 'round', 'all ready after', 'time to ready p50', 'p99', 'failures', 'load average (1 min) at start'],
      runs.map((x) => [x.k, x.round, `${round(x.totalMs / 1000, 2)} s`, `${round(x.startMs.p50, 0)} ms`, `${round(x.startMs.p99, 0)} ms`, x.failures, round(x.loadavg1, 2)]),
    ),
  );
  await writeResult('spawn-concurrency', { busyBefore, settings: { starts: STORM, ks: KS, rounds: ROUNDS, cores: machine().cores }, runs });
}

await main();
