// connections: 20,000 concurrent client connections over 100 workspaces, one
// 200-byte frame per connection per 10 s, held for a while. The gateway runs
// in its own process (open-file limit raised with prlimit), its children are
// the light echo child (bench/echo-child.mjs), the clients live in the load
// generator process. Measures: connections held, gateway RSS (all threads,
// /proc/PID/status) per connection over the idle baseline, and the front
// thread's event-loop delay (monitorEventLoopDelay inside the gateway).
//
// Env: BENCH_CONNS (default 20000), BENCH_WORKSPACES (100),
// BENCH_HOLD_MS (30000), BENCH_INTERVAL_MS (10000).
import { setTimeout as sleep } from 'node:timers/promises';
import { signWorkspaceToken } from '../dist/index.js';
import { GATEWAY_SERVER, JWT_SECRET, LOADGEN, checkQuiet, fdLimit, reachableNofile, fmtInt, machine, machineLine, round, rssBytes, startNodeIpc, table, verdict, writeResult } from './common.mjs';

const WANTED = Number(process.env.BENCH_CONNS ?? 20_000);
const WORKSPACES = Number(process.env.BENCH_WORKSPACES ?? 100);
const HOLD_MS = Number(process.env.BENCH_HOLD_MS ?? 30_000);
const INTERVAL_MS = Number(process.env.BENCH_INTERVAL_MS ?? 10_000);
/**
 * The gateway holds two sockets per client connection (the client's and its
 * own connection to the child), two pipes per child, and a few hundred more.
 */
const gatewayFds = (conns) => 2 * conns + 2 * WORKSPACES + 400;
const NOFILE = reachableNofile(gatewayFds(WANTED));
/** What fits under the open-file limit this machine allows, in whole connections per workspace. */
const CONNS = Math.min(WANTED, Math.floor((NOFILE - 2 * WORKSPACES - 400) / 2 / WORKSPACES) * WORKSPACES);
/** Client sockets per load-generator process. */
const PER_LOADER = NOFILE - 1000;

async function main() {
  console.log(`connections: ${fmtInt(CONNS)} connections over ${WORKSPACES} workspaces, 1 frame per connection per ${INTERVAL_MS / 1000} s, held ${HOLD_MS / 1000} s`);
  console.log(machineLine());
  if (CONNS < WANTED) {
    console.log(
      `NOTE: ${fmtInt(WANTED)} connections need about ${fmtInt(gatewayFds(WANTED))} open files in the gateway process; this machine allows a process ${fmtInt(NOFILE)} ` +
        `(hard limit, and prlimit may not raise it here), so this run holds ${fmtInt(CONNS)}.`,
    );
  }
  const busyBefore = await checkQuiet();
  const perWorkspace = CONNS / WORKSPACES;
  const gw = await startNodeIpc(GATEWAY_SERVER, { env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'echo' }) }, nofile: NOFILE });
  const ready = await gw.event('ready');
  const loaders = Math.ceil(CONNS / PER_LOADER);
  const loads = await Promise.all(Array.from({ length: loaders }, () => startNodeIpc(LOADGEN, { nofile: NOFILE })));
  await Promise.all(loads.map((l) => l.event('ready')));
  const load = loads[0];
  // Connections per workspace each loader opens after the first one per workspace.
  const shares = loads.map((_, k) => Math.floor((perWorkspace - 1) / loaders) + (k < (perWorkspace - 1) % loaders ? 1 : 0));
  const tokens = await Promise.all(Array.from({ length: WORKSPACES }, (_, i) => signWorkspaceToken({ secret: JWT_SECRET, workspaceId: `bench-conn-${i}`, expiresIn: '2h' })));
  const limits = fdLimit();
  let result;
  try {
    await sleep(2000);
    const rssIdle = rssBytes(gw.pid);
    // One connection per workspace first: this starts the 100 children.
    const first = await load.call('open', { url: ready.url, tokens, perToken: 1, concurrency: WORKSPACES });
    // Every child ready before anything is measured: starts overlapping the hold
    // would count their CPU (and the echoes waiting for them) against the front.
    const started = await gw.call('ensure', { ids: Array.from({ length: WORKSPACES }, (_, i) => `bench-conn-${i}`), concurrency: WORKSPACES });
    const notStarted = started.runs.filter((r) => r.error !== undefined);
    if (notStarted.length > 0) throw new Error(`${notStarted.length} children did not start: ${notStarted[0].error}`);
    console.log(`${WORKSPACES} children ready ${round(started.totalMs / 1000, 1)} s after their first connections were open`);
    await sleep(1000);
    const rssWarm = rssBytes(gw.pid);
    await gw.call('resetLoop');
    const restAll = await Promise.all(loads.map((l, k) => l.call('open', { url: ready.url, tokens, perToken: shares[k], concurrency: Math.ceil(256 / loaders) })));
    const ramp = await gw.call('stats');
    const rest = { opened: restAll.reduce((a, x) => a + x.opened, 0) - first.opened, failed: restAll.reduce((a, x) => a + x.failed, 0), errors: Object.assign({}, ...restAll.map((x) => x.errors)), ms: Math.max(...restAll.map((x) => x.ms)), rssClient: restAll.reduce((a, x) => a + x.rssClient, 0) };
    const opened = first.opened + rest.opened;
    console.log(`opened ${fmtInt(opened)} connections (${first.failed + rest.failed} failed) in ${round((first.ms + rest.ms) / 1000, 1)} s; front loop p99 during the ramp ${round(ramp.front.p99, 2)} ms`);
    await gw.call('resetLoop');
    const rssSamples = [];
    const sampler = setInterval(() => rssSamples.push(rssBytes(gw.pid)), 1000);
    const heldAll = await Promise.all(loads.map((l) => l.call('hold', { intervalMs: INTERVAL_MS, durationMs: HOLD_MS, size: 200 })));
    const held = {
      sent: heldAll.reduce((a, x) => a + x.sent, 0),
      received: heldAll.reduce((a, x) => a + x.received, 0),
      stillOpen: heldAll.reduce((a, x) => a + x.stillOpen, 0),
      unexpectedCloses: heldAll.reduce((a, x) => a + x.unexpectedCloses, 0),
      rttUs: heldAll[0].rttUs,
    };
    clearInterval(sampler);
    const hold = await gw.call('stats');
    const rssHeld = rssBytes(gw.pid);
    const rssPeak = Math.max(rssHeld, ...rssSamples);
    const gwConnections = hold.connections;
    result = {
      busyBefore,
      settings: { wanted: WANTED, conns: CONNS, nofile: NOFILE, loaders, workspaces: WORKSPACES, holdMs: HOLD_MS, intervalMs: INTERVAL_MS, shards: ready.shards, fdLimitBench: limits, cores: machine().cores },
      open: { opened, failed: first.failed + rest.failed, errors: { ...first.errors, ...rest.errors }, seconds: (first.ms + rest.ms) / 1000 },
      held,
      gatewayConnections: gwConnections,
      rss: { idle: rssIdle, warm: rssWarm, held: rssHeld, peak: rssPeak },
      perConnBytes: (rssHeld - rssIdle) / opened,
      perConnBytesOverWarm: (rssHeld - rssWarm) / (opened - first.opened),
      frontLoopRampMs: ramp.front,
      frontLoopHoldMs: hold.front,
      shardLoopP99Ms: hold.shards.map((s) => s.eventLoopDelayP99Ms),
      loadgenRss: rest.rssClient,
    };
  } finally {
    for (const l of loads) {
      await l.call('closeAll').catch(() => {});
      await l.stop();
    }
    await gw.call('destroy').catch(() => {});
    await gw.stop();
  }

  const r = result;
  const allHeld = r.open.opened === CONNS && r.held.stillOpen === CONNS && r.held.unexpectedCloses === 0 && r.held.received === r.held.sent;
  const checks = [
    { target: `all ${fmtInt(WANTED)} held`, value: `${fmtInt(r.held.stillOpen)} of ${fmtInt(CONNS)} open at the end, ${r.open.failed} failed to open, ${r.held.unexpectedCloses} closed, ${fmtInt(r.held.received)}/${fmtInt(r.held.sent)} echoes`, ok: allHeld, partial: CONNS < WANTED ? `for ${fmtInt(CONNS)} only (${fmtInt(WANTED)} not measured: open-file limit)` : undefined },
    { target: 'gateway memory ≤ 40 KB per connection', value: `${round(r.perConnBytes / 1000, 1)} KB (RSS ${round(r.rss.idle / 1e6, 0)} → ${round(r.rss.held / 1e6, 0)} MB)`, ok: r.perConnBytes <= 40_000 },
    { target: 'front event-loop delay p99 ≤ 10 ms (while held)', value: `${round(r.frontLoopHoldMs.p99, 2)} ms while held (max ${round(r.frontLoopHoldMs.max, 1)}); ${round(r.frontLoopRampMs.p99, 2)} ms while opening`, ok: r.frontLoopHoldMs.p99 <= 10 },
  ];
  console.log(`\nconnections (${machineLine()})`);
  console.log(
    table(
      ['connections', 'workspaces', 'opened in', 'RSS idle → held', 'per conn', 'per conn over warm', 'echo RTT p50 / p99', 'front loop p99 (hold / ramp)', 'front CPU / run-queue wait (hold)', 'shard loop p99'],
      [
        [
          fmtInt(r.open.opened),
          WORKSPACES,
          `${round(r.open.seconds, 1)} s`,
          `${round(r.rss.idle / 1e6, 0)} → ${round(r.rss.held / 1e6, 0)} MB`,
          `${round(r.perConnBytes / 1000, 1)} KB`,
          `${round(r.perConnBytesOverWarm / 1000, 1)} KB`,
          `${round(r.held.rttUs.p50 / 1000, 2)} / ${round(r.held.rttUs.p99 / 1000, 2)} ms`,
          `${round(r.frontLoopHoldMs.p99, 2)} / ${round(r.frontLoopRampMs.p99, 2)} ms`,
          `${round(r.frontLoopHoldMs.frontCpuMs, 0)} / ${round(r.frontLoopHoldMs.frontRunQueueWaitMs, 0)} ms of ${round(r.frontLoopHoldMs.windowMs, 0)} ms`,
          r.shardLoopP99Ms.map((x) => `${round(x, 1)} ms`).join(', '),
        ],
      ],
    ),
  );
  console.log('(shard loop p99 is the shards\' own monitor at 10 ms resolution, interval included)');
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, k.partial ? `${verdict(k.ok)} ${k.partial}` : verdict(k.ok)])));
  await writeResult('connections', { ...r, checks });
}

await main();
