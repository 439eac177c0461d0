// The gateway under test, in a process of its own: a `Gateway` from the built
// package (dist/) with the bench's child binary, answering the bench over IPC.
// Its main thread is the real front thread (uWebSockets.js), so the
// event-loop delay measured here is the front's. Options come as JSON in
// CXG_BENCH_GATEWAY (see `defaults` below).
import { chmodSync, readFileSync, statSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { BENCH_SPAWN_CONFIG, ECHO_CHILD, JWT_SECRET, mapLimit, removeDir, rssBytes, scratchDir, serveIpc, summarize } from './common.mjs';

const defaults = {
  /** 'echo' (bench/echo-child.mjs), 'real' (the codex binary) or a path. */
  codex: 'echo',
  /** Shard workers; undefined = the Supervisor's default (available cores). */
  shards: undefined,
  /** {kind:'file'} in a scratch dir, or {kind:'s3', endpoint, bucket, prefix, credentials}. */
  store: { kind: 'file' },
  readyTimeoutMs: 60_000,
  stopGraceMs: 5_000,
  /** Sampling interval of the front's event-loop delay monitor. */
  loopResolutionMs: 10,
  /** Nice levels of children below the gateway; serve's default is 10. */
  childNice: 10,
  /** limits.max_concurrent_spawns; serve's default is the core count. */
  maxConcurrentSpawns: os.availableParallelism(),
};
const o = { ...defaults, ...JSON.parse(process.env.CXG_BENCH_GATEWAY ?? '{}') };
// CXG_BENCH_DIST points at another build (a baseline) of the package.
const { DEFAULT_FRONT_LIMITS, FileObjectStore, Gateway, JwtAuthenticator, S3ObjectStore, defaultCodexBin } = await import(
  process.env.CXG_BENCH_DIST ? pathToFileURL(path.resolve(process.env.CXG_BENCH_DIST, 'index.js')).href : '../dist/index.js'
);

const root = await scratchDir('gw-');
const codexBin = o.codex === 'echo' ? ECHO_CHILD : o.codex === 'real' ? defaultCodexBin() : o.codex;
// The gateway executes its child binary directly: the echo child must be executable.
if (codexBin === ECHO_CHILD && (statSync(ECHO_CHILD).mode & 0o111) === 0) chmodSync(ECHO_CHILD, 0o755);
const store =
  o.store.kind === 's3'
    ? new S3ObjectStore({ bucket: o.store.bucket, prefix: o.store.prefix ?? 'bench', endpoint: o.store.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: o.store.credentials })
    : new FileObjectStore(path.join(root, 'store'));

/** Loopback tokens handed to the config builder, by workspace (for the lookup bench). */
const tokens = new Map();
const builder = (loopbackToken, { workspaceId }) => {
  tokens.set(workspaceId, loopbackToken);
  return BENCH_SPAWN_CONFIG;
};

const gw = await Gateway.start({
  supervisor: {
    codexBin,
    homeRoot: path.join(root, 'homes'),
    store,
    ...(o.shards === undefined ? {} : { shards: o.shards }),
    readyTimeoutMs: o.readyTimeoutMs,
    stopGraceMs: o.stopGraceMs,
    configBuilder: builder,
    // As `serve` runs by default (spawn.nice, limits.max_concurrent_spawns = cores).
    childNice: o.childNice,
    limits: { maxConcurrentSpawns: o.maxConcurrentSpawns },
  },
  auth: new JwtAuthenticator({ secret: JWT_SECRET }),
  listen: { host: '127.0.0.1', port: 0 },
  internal: { host: '127.0.0.1', port: 0 },
  limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 64 * 1024 * 1024 },
  shutdownBudgetMs: 120_000,
  log: pino({ level: process.env.CXG_BENCH_LOG_LEVEL ?? 'silent' }),
});
const sup = gw.sup;

const loop = monitorEventLoopDelay({ resolution: o.loopResolutionMs });
loop.enable();

/**
 * The front (main) thread's scheduler counters from /proc: CPU time it ran,
 * and time it was runnable but waiting for a CPU (run-queue wait). A loop
 * delay with little CPU and much run-queue wait is starvation by other
 * threads or processes, not work on the front.
 */
function schedstat() {
  try {
    const [run, wait] = readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
    return { runMs: run / 1e6, waitMs: wait / 1e6 };
  } catch {
    return { runMs: NaN, waitMs: NaN };
  }
}
let sched0 = schedstat();
let since = performance.now();

/** Front event-loop delay in ms: each sample is the timer's lateness beyond its interval. */
function loopStats() {
  const r = o.loopResolutionMs;
  const ms = (ns) => Math.max(0, ns / 1e6 - r);
  const now = schedstat();
  return {
    samples: loop.count,
    p50: ms(loop.percentile(50)),
    p99: ms(loop.percentile(99)),
    max: ms(loop.max),
    resolutionMs: r,
    windowMs: performance.now() - since,
    frontCpuMs: now.runMs - sched0.runMs,
    frontRunQueueWaitMs: now.waitMs - sched0.waitMs,
  };
}

let closing = false;
async function finish(how) {
  if (closing) return;
  closing = true;
  if (how === 'destroy') {
    // Immediate: children are killed (process groups), homes are not uploaded.
    await sup.destroy();
    gw.front.close();
    gw.internal.close();
  } else {
    await gw.drain();
  }
  await removeDir(root);
}

serveIpc({
  stats: async () => {
    const shards = await sup.stats();
    return {
      rss: rssBytes(process.pid),
      front: loopStats(),
      connections: gw.front.connectionCount,
      shards: shards.map((s) => ({ shard: s.shard, connections: s.connections, workspaces: s.workspaces.length, eventLoopDelayP99Ms: s.eventLoopDelayP99Ms })),
    };
  },
  resetLoop: async () => {
    loop.reset();
    sched0 = schedstat();
    since = performance.now();
    await sup.stats();
    return true;
  },
  /** Cold or warm ensureSubprocess of each id, `concurrency` at a time; times in ms. */
  ensure: async ({ ids, concurrency = 1 }) => {
    const t0 = performance.now();
    const runs = await mapLimit(ids, concurrency, async (workspaceId) => {
      const t = performance.now();
      try {
        const h = await sup.ensureSubprocess({ workspaceId }, builder);
        return { workspaceId, ms: performance.now() - t, codexHome: h.codexHome, pid: h.pid, wsUrl: h.wsUrl, wsToken: h.wsToken };
      } catch (err) {
        return { workspaceId, ms: performance.now() - t, error: `${err.code ?? ''} ${err.message}` };
      }
    });
    return { totalMs: performance.now() - t0, runs };
  },
  /** Shuts the ids down all at once; each shutdown's time in ms. */
  shutdown: async ({ ids }) => {
    const t0 = performance.now();
    const runs = await Promise.all(
      ids.map(async (workspaceId) => {
        const t = performance.now();
        try {
          const r = await sup.shutdown({ workspaceId });
          return { ...r, ms: performance.now() - t };
        } catch (err) {
          return { workspaceId, stopped: false, saved: false, error: err.message, ms: performance.now() - t };
        }
      }),
    );
    return { totalMs: performance.now() - t0, runs };
  },
  /**
   * `iterations` sequential lookups of live tokens picked at random (and a
   * share of unknown tokens); latency in µs, and whether every answer was right.
   */
  lookup: async ({ iterations, missEvery = 10 }) => {
    const live = [...tokens.entries()];
    const hits = [];
    const misses = [];
    let wrong = 0;
    for (let i = 0; i < iterations; i++) {
      const miss = i % missEvery === missEvery - 1;
      const [ws, tok] = miss ? [undefined, `${'f'.repeat(63)}${i % 10}`] : live[Math.floor(Math.random() * live.length)];
      const t = performance.now();
      const got = await sup.lookupWorkspaceForLoopbackToken(tok);
      const us = (performance.now() - t) * 1000;
      (miss ? misses : hits).push(us);
      if (got !== ws) wrong++;
    }
    return { tokens: live.length, hit: summarize(hits), miss: summarize(misses), wrong };
  },
  liveTokens: () => tokens.size,
  drain: async () => {
    await finish('drain');
    setImmediate(() => process.exit(0));
    return true;
  },
  destroy: async () => {
    await finish('destroy');
    setImmediate(() => process.exit(0));
    return true;
  },
});

process.send?.({ event: 'ready', url: gw.url, pid: process.pid, shards: sup.shardCount });
