// lookup: `lookupWorkspaceForLoopbackToken` with many live tokens spread over
// all shards. A loopback token lives as long as its child, so 10,000 live
// tokens means 10,000 live children: the bench starts them for real through
// `ensureSubprocess` (the unchanged production path: spawn, banner, /readyz,
// token registered in the shard), using bench/tiny-child.c as the child, a
// C program of about a megabyte that only prints the banner and answers
// /readyz. Without a C compiler it falls back to the node echo child and as
// many children as BENCH_LOOKUP_TOKENS says (default 300 then); the table
// says how many tokens were live. Lookups run one at a time inside the
// gateway process (latency of the library call); one in ten is an unknown
// token, which must cost what a known one does.
//
// Env: BENCH_LOOKUP_TOKENS (default 10000), BENCH_LOOKUP_ITERATIONS (20000).
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { BENCH_DIR, GATEWAY_SERVER, checkQuiet, reachableNofile, fmtInt, machine, machineLine, removeDir, round, rssBytes, scratchDir, startNodeIpc, table, verdict, which, writeResult } from './common.mjs';

const ITERATIONS = Number(process.env.BENCH_LOOKUP_ITERATIONS ?? 20_000);

function buildTinyChild(dir) {
  const cc = which('cc') ?? which('gcc') ?? which('clang');
  if (cc === undefined) return undefined;
  const out = path.join(dir, 'tiny-child');
  const r = spawnSync(cc, ['-O2', '-o', out, path.join(BENCH_DIR, 'tiny-child.c')], { encoding: 'utf8' });
  if (r.status !== 0) {
    console.log(`could not compile bench/tiny-child.c: ${r.stderr}`);
    return undefined;
  }
  return out;
}

async function main() {
  const dir = await scratchDir('lookup-');
  const tiny = buildTinyChild(dir);
  const wanted = Number(process.env.BENCH_LOOKUP_TOKENS ?? (tiny ? 10_000 : 300));
  // Each child holds two pipes (stdout, stderr) open in the gateway process.
  const nofile = reachableNofile(2 * wanted + 400);
  const tokens = Math.min(wanted, Math.floor((nofile - 400) / 2 / 100) * 100);
  console.log(`lookup: ${fmtInt(tokens)} live children (${tiny ? 'bench/tiny-child.c' : 'node echo child: no C compiler'}), ${fmtInt(ITERATIONS)} sequential lookups`);
  console.log(machineLine());
  if (tokens < wanted) {
    console.log(`NOTE: ${fmtInt(wanted)} children need about ${fmtInt(2 * wanted + 400)} open files in the gateway process (two pipes each); this machine allows a process ${fmtInt(nofile)} (hard limit, and prlimit may not raise it here), so this run keeps ${fmtInt(tokens)}.`);
  }
  const busyBefore = await checkQuiet();
  const gw = await startNodeIpc(GATEWAY_SERVER, {
    env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: tiny ?? 'echo', readyTimeoutMs: 120_000, stopGraceMs: 2000 }) },
    nofile,
  });
  const ready = await gw.event('ready');
  const pids = [];
  let result;
  try {
    const ids = Array.from({ length: tokens }, (_, i) => `bench-lookup-${i}`);
    const started = await gw.call('ensure', { ids, concurrency: 64 });
    for (const r of started.runs) if (r.pid) pids.push(r.pid);
    const failed = started.runs.filter((r) => r.error !== undefined);
    const live = await gw.call('liveTokens');
    console.log(`started ${fmtInt(pids.length)} children in ${round(started.totalMs / 1000, 1)} s (${failed.length} failed); ${fmtInt(live)} live tokens; gateway RSS ${round(rssBytes(gw.pid) / 1e6, 0)} MB`);
    const stats = await gw.call('stats');
    // A first pass warms the code paths; the second is measured.
    await gw.call('lookup', { iterations: 2000 });
    const lookups = await gw.call('lookup', { iterations: ITERATIONS });
    result = {
      busyBefore,
      settings: { tokensWanted: wanted, tokensRequested: tokens, nofile, child: tiny ? 'bench/tiny-child.c' : 'bench/echo-child.mjs', iterations: ITERATIONS, shards: ready.shards, cores: machine().cores },
      startSeconds: started.totalMs / 1000,
      startFailures: failed.length,
      liveTokens: lookups.tokens,
      perShard: stats.shards.map((s) => s.workspaces),
      hitUs: lookups.hit,
      missUs: lookups.miss,
      wrongAnswers: lookups.wrong,
      gatewayRss: rssBytes(gw.pid),
    };
  } finally {
    await gw.call('destroy').catch(() => {});
    await gw.stop();
    // Should the gateway have died without its exit hook, no child outlives the bench.
    for (const pid of pids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Gone, as expected.
      }
    }
    await removeDir(dir);
  }
  const r = result;
  const checks = [
    {
      target: 'p99 ≤ 100 µs with 10,000 live tokens',
      value: `${round(r.hitUs.p99, 0)} µs (known), ${round(r.missUs.p99, 0)} µs (unknown) with ${fmtInt(r.liveTokens)} live tokens${r.wrongAnswers ? `; ${r.wrongAnswers} wrong answers` : ''}`,
      ok: r.wrongAnswers === 0 && Math.max(r.hitUs.p99, r.missUs.p99) <= 100,
      partial: r.liveTokens < 10_000 ? `(with ${fmtInt(r.liveTokens)} live tokens${tokens < wanted ? ': open-file limit' : ''})` : undefined,
    },
  ];
  console.log(`\nlookup (${machineLine()})`);
  console.log(
    table(
      ['live tokens', 'per shard', 'lookup', 'p50 µs', 'p99 µs', 'max µs'],
      [
        [fmtInt(r.liveTokens), r.perShard.join(' / '), 'known token', round(r.hitUs.p50, 0), round(r.hitUs.p99, 0), round(r.hitUs.max, 0)],
        ['', '', 'unknown token', round(r.missUs.p50, 0), round(r.missUs.p99, 0), round(r.missUs.max, 0)],
      ],
    ),
  );
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, k.partial ? `${verdict(k.ok)} ${k.partial}` : verdict(k.ok)])));
  await writeResult('lookup', { ...r, checks });
}

await main();
