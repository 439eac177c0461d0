// ownership: what owning workspaces through etcd ([cluster]) costs.
//
// 1. Cold-start latency, cluster off against on: two gateway processes with
//    the same fake codex and the same file store, one of them a cluster node
//    (one etcd on loopback, lease_ttl at its default, 15 s). Per round and
//    gateway (which goes first alternates): a new workspace's first start
//    (nothing stored), then, once an admin shutdown stored it, its start
//    from the store. Timed from the client's connect to the child's first
//    answer (`fake/info`).
// 2. etcd requests, counted by etcd itself (`grpc_server_msg_received_total`
//    of its KV and Lease services on /metrics): per claim (a start), per
//    stop (commit and release), and the node's lease keep-alives while idle,
//    which do not depend on how many workspaces it holds (owner keys hang on
//    the node's one lease). From these: requests per workspace per hour.
//
// Run with tsx (the fixtures are TypeScript): bench/run.mjs does. Env:
// BENCH_OWNERSHIP_RUNS (30), BENCH_OWNERSHIP_IDLE_S (30). Bounded: every
// wait has a deadline; every process is stopped by pid at the end.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { signWorkspaceToken } from '../dist/index.js';
import { TestEtcd } from '../test/fixtures/etcd.ts';
import { CLUSTER_ADMIN_TOKEN, admin, clusterLines, fakeCodexToml, within } from '../test/cluster-helpers.ts';
import { closeOf, openWs, rpc } from '../test/gateway-helpers.ts';
import { startGatewayProcess, writeConfig } from '../test/gateway-process.ts';
import { JWT_SECRET, checkQuiet, machine, machineLine, removeDir, round, scratchDir, summarize, table, writeResult } from './common.mjs';

const RUNS = Number(process.env.BENCH_OWNERSHIP_RUNS ?? 30);
const IDLE_S = Number(process.env.BENCH_OWNERSHIP_IDLE_S ?? 30);
/** cluster.lease_ttl's default (src/main/settings-spec.ts). */
const DEFAULT_TTL_S = 15;

/** etcd's count of requests received, by method, from its KV and Lease services. */
async function etcdRequests(etcd) {
  const text = await (await fetch(`${etcd.endpoint}/metrics`)).text();
  const by = {};
  for (const m of text.matchAll(/^grpc_server_msg_received_total\{([^}]*)\} (\S+)$/gm)) {
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (!/^etcdserverpb\.(KV|Lease)$/.test(labels.grpc_service)) continue;
    by[labels.grpc_method] = (by[labels.grpc_method] ?? 0) + Number(m[2]);
  }
  return by;
}

function diff(after, before) {
  const out = {};
  for (const [k, v] of Object.entries(after)) if (v - (before[k] ?? 0) > 0) out[k] = v - (before[k] ?? 0);
  return out;
}

function sumWithout(counts, skip) {
  return Object.entries(counts).reduce((s, [k, v]) => (k === skip ? s : s + v), 0);
}

/** ms per etcd transaction of a claim's shape, `n` times one after another. */
async function claimRoundTrips(etcd, n) {
  const { Etcd3 } = await import('etcd3');
  const client = new Etcd3({ hosts: [etcd.endpoint] });
  try {
    const ms = [];
    for (let i = 0; i < n; i++) {
      const keys = ['owner', 'epoch', 'state'].map((k) => Buffer.from(`/rtt/${k}/ws-${i}`));
      const t0 = performance.now();
      await client.kv.txn({ compare: [], success: keys.map((key) => ({ request_range: { key } })), failure: [] });
      ms.push(performance.now() - t0);
      const t1 = performance.now();
      await client.kv.txn({ compare: [{ key: keys[0], target: 'Create', result: 'Equal', create_revision: 0 }], success: [{ request_put: { key: keys[0], value: Buffer.from('x') } }], failure: [] });
      ms.push(performance.now() - t1);
    }
    return summarize(ms);
  } finally {
    client.close();
  }
}

async function gateway(dir, name, store, cluster) {
  const own = path.join(dir, name);
  await mkdir(own, { recursive: true });
  const extra = cluster === undefined ? ['[admin]', `token = ${JSON.stringify(CLUSTER_ADMIN_TOKEN)}`] : clusterLines({ ...cluster, nodeId: name, leaseTtl: `${DEFAULT_TTL_S}s` });
  const toml = fakeCodexToml({ dir: own, store, jwtSecret: JWT_SECRET, extra });
  return await startGatewayProcess(await writeConfig(`${own}.toml`, toml), { CXG_LOG_LEVEL: 'info' }, 60_000);
}

/** ms from connect to the child's first answer. */
async function timedStart(gw, workspaceId) {
  const token = await signWorkspaceToken({ secret: JWT_SECRET, workspaceId, expiresIn: '10m' });
  const t0 = performance.now();
  const ws = await openWs(gw.url, token);
  const closed = closeOf(ws);
  await within(rpc(ws, 'fake/info'), 60_000, `${workspaceId} to start`);
  const ms = performance.now() - t0;
  ws.close();
  await closed;
  return ms;
}

async function storeNow(gw, workspaceId) {
  const r = await within(admin(gw, `/admin/workspaces/${workspaceId}/shutdown`, 'POST'), 60_000, `${workspaceId} to be stored`);
  if (r.status !== 200 || r.body.saved !== true) throw new Error(`${workspaceId} not stored: ${JSON.stringify(r.body)}`);
}

async function main() {
  console.log(`ownership: ${RUNS} rounds, idle window ${IDLE_S} s, lease_ttl ${DEFAULT_TTL_S} s\n${machineLine()}`);
  await checkQuiet('the ownership bench');
  const dir = await scratchDir('cxg-bench-ownership-');
  const store = path.join(dir, 'store');
  let etcd;
  const gateways = [];
  try {
    etcd = await TestEtcd.start();
    const off = await gateway(dir, 'off', store, undefined);
    gateways.push(off);
    const on = await gateway(dir, 'on', store, { endpoint: etcd.endpoint, prefix: '/bench/' });
    gateways.push(on);

    const ms = { off: { fresh: [], stored: [] }, on: { fresh: [], stored: [] } };
    const ops = { claimFresh: [], store: [], claimStored: [] };
    for (let i = 0; i < RUNS; i++) {
      for (const mode of i % 2 === 0 ? ['off', 'on'] : ['on', 'off']) {
        const gw = mode === 'on' ? on : off;
        const id = `own-${mode}-${i}`;
        const c0 = await etcdRequests(etcd);
        ms[mode].fresh.push(await timedStart(gw, id));
        const c1 = await etcdRequests(etcd);
        await storeNow(gw, id);
        const c2 = await etcdRequests(etcd);
        ms[mode].stored.push(await timedStart(gw, id));
        const c3 = await etcdRequests(etcd);
        await storeNow(gw, id);
        if (mode === 'on') {
          ops.claimFresh.push(diff(c1, c0));
          ops.store.push(diff(c2, c1));
          ops.claimStored.push(diff(c3, c2));
        }
      }
    }

    // The floor under the added latency: etcd round trips of a claim's size
    // from this process (read three keys in one transaction, then a
    // conditional put), with nothing else in them.
    const rtt = await claimRoundTrips(etcd, 50);

    // The node's lease while it holds nothing: keep-alives only.
    const k0 = await etcdRequests(etcd);
    const t0 = performance.now();
    await sleep(IDLE_S * 1000);
    const idle = diff(await etcdRequests(etcd), k0);
    const idleS = (performance.now() - t0) / 1000;
    const keepAlivesPerHour = ((idle.LeaseKeepAlive ?? 0) / idleS) * 3600;

    const median = (xs) => summarize(xs).p50;
    const perOp = Object.fromEntries(Object.entries(ops).map(([k, list]) => [k, median(list.map((c) => sumWithout(c, 'LeaseKeepAlive')))]));
    const methods = Object.fromEntries(Object.entries(ops).map(([k, list]) => [k, list.at(-1) ?? {}]));
    const rows = [];
    for (const kind of ['fresh', 'stored']) {
      const a = summarize(ms.off[kind]);
      const b = summarize(ms.on[kind]);
      rows.push([kind === 'fresh' ? 'new workspace (nothing stored)' : 'again after a stored stop (home kept warm)', `${round(a.p50)} / ${round(a.p90)}`, `${round(b.p50)} / ${round(b.p90)}`, `${round(b.p50 - a.p50)}`]);
    }
    console.log(`\ncold start, ms (p50 / p90 of ${RUNS}), fake codex, file store\n${table(['start', 'cluster off', 'cluster on', 'added p50'], rows)}`);
    console.log(`etcd round trip of a claim-sized transaction from here: p50 ${round(rtt.p50, 2)} ms, p90 ${round(rtt.p90, 2)} ms (a start makes 3 in a row)`);
    const startStop = perOp.claimStored + perOp.store;
    console.log(
      `\netcd requests (KV and Lease calls etcd received; keep-alives apart)\n${table(
        ['what', 'requests', 'by method (last round)'],
        [
          ['claim, new workspace', String(perOp.claimFresh), JSON.stringify(methods.claimFresh)],
          ['stop: commit + release', String(perOp.store), JSON.stringify(methods.store)],
          ['claim, stored workspace', String(perOp.claimStored), JSON.stringify(methods.claimStored)],
          [`lease keep-alives per node per hour (ttl ${DEFAULT_TTL_S} s)`, String(Math.round(keepAlivesPerHour)), `${idle.LeaseKeepAlive ?? 0} in ${round(idleS)} s`],
        ],
      )}`,
    );
    console.log(
      `\nper workspace per hour: ${startStop} per start-and-stop (a workspace reaped and started again each hour: ${startStop}/h); ` +
        `a workspace that runs the whole hour: 0 beyond its start; the node's ${Math.round(keepAlivesPerHour)} keep-alives/h are shared by all it holds ` +
        `(${round(keepAlivesPerHour / 32)}/h each at 32 workspaces a node)`,
    );

    const added = summarize(ms.on.fresh).p50 - summarize(ms.off.fresh).p50;
    await writeResult('ownership', {
      runs: RUNS,
      leaseTtlS: DEFAULT_TTL_S,
      startMs: { off: { fresh: summarize(ms.off.fresh), stored: summarize(ms.off.stored) }, on: { fresh: summarize(ms.on.fresh), stored: summarize(ms.on.stored) } },
      etcdTxnMs: rtt,
      etcdRequests: { perClaimFresh: perOp.claimFresh, perStore: perOp.store, perClaimStored: perOp.claimStored, methods, keepAlivesPerNodePerHour: keepAlivesPerHour, idle: { seconds: idleS, counts: idle } },
      checks: [
        { target: 'cold start added by ownership (p50, new workspace)', value: `${round(added)} ms` },
        { target: 'etcd requests per start-and-stop of a workspace', value: `${startStop} (+ ${Math.round(keepAlivesPerHour)} keep-alives/h per node)` },
      ],
      machine: machine(),
    });
  } finally {
    for (const gw of gateways) await gw.stop('SIGKILL');
    await etcd?.close();
    await removeDir(dir);
  }
}

await main();
