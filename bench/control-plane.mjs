// The control plane between the front and the shards, two ways: the
// project's RpcPeer (dist/shared/rpc.js) and comlink (wrap/expose over the
// same kind of MessagePort), each calling an answer-at-once method in a
// worker thread, as a loopback-token lookup does. Reports the sequential
// round trip and the throughput of 8 calls in flight, and what happens to a
// call in flight when the worker dies: RpcPeer fails it (failAll) with its
// GW_* code; comlink leaves it pending. Run: npm run build && node bench/control-plane.mjs
import { performance } from 'node:perf_hooks';
import { MessageChannel, Worker } from 'node:worker_threads';
import * as Comlink from 'comlink/dist/esm/comlink.mjs';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { RpcPeer } from '../dist/shared/rpc.js';
import { Samples, summarize } from './common.mjs';

const N = Number(process.argv[2] ?? 20_000);
const IN_FLIGHT = 8;

const WORKER = `
const { workerData } = require('node:worker_threads');
const lookup = ({ token }) => (token === 'known' ? 'ws-1' : null);
if (workerData.kind === 'rpc') {
  import(workerData.rpc).then(({ RpcPeer }) => {
    new RpcPeer(workerData.port, { lookup, hang: () => new Promise(() => {}) }, {}, () => {});
  });
} else {
  import(workerData.comlink).then(async (Comlink) => {
    const { default: nodeEndpoint } = await import(workerData.adapter);
    Comlink.expose({ lookup, hang: () => new Promise(() => {}) }, nodeEndpoint(workerData.port));
  });
}
`;

function start(kind) {
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(WORKER, {
    eval: true,
    workerData: { kind, port: port2, rpc: new URL('../dist/shared/rpc.js', import.meta.url).href, comlink: import.meta.resolve('comlink/dist/esm/comlink.mjs'), adapter: import.meta.resolve('comlink/dist/esm/node-adapter.mjs') },
    transferList: [port2],
  });
  return { port: port1, worker };
}

async function measure(call) {
  for (let i = 0; i < 2000; i++) await call(i);
  const rtt = new Samples(N);
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    await call(i);
    rtt.push((performance.now() - t0) * 1000);
  }
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < N) {
      next++;
      await call(next);
    }
  }));
  return { rttUs: summarize(rtt), callsPerSecond: Math.round(N / ((performance.now() - t0) / 1000)) };
}

/** A call in flight when its worker is terminated: how it ends within 2 s. */
async function inFlightAtDeath(call, worker, onExit) {
  const p = call().then(() => 'answered', (e) => `rejected ${e?.code ?? e?.message ?? e}`);
  await new Promise((r) => setTimeout(r, 50));
  worker.once('exit', onExit);
  await worker.terminate();
  return await Promise.race([p, new Promise((r) => setTimeout(() => r('still pending after 2 s'), 2000).unref())]);
}

const out = {};
// comlink's node adapter removes its port listener between calls, which lets
// the event loop end mid-benchmark; a timer keeps it alive (RpcPeer's
// listener stays on the port).
const keepAlive = setInterval(() => {}, 1000);
{
  const { port, worker } = start('rpc');
  const peer = new RpcPeer(port, {}, {}, () => {});
  out.rpcPeer = await measure((i) => peer.call('lookup', { token: i % 2 ? 'known' : 'x' }));
  out.rpcPeer.inFlightAtWorkerDeath = await inFlightAtDeath(() => peer.call('hang', {}), worker, () => peer.failAll('GW_SHARD_FAILED', 'worker exited'));
  port.close();
}
{
  const { port, worker } = start('comlink');
  const remote = Comlink.wrap(nodeEndpoint(port));
  out.comlink = await measure((i) => remote.lookup({ token: i % 2 ? 'known' : 'x' }));
  out.comlink.inFlightAtWorkerDeath = await inFlightAtDeath(() => remote.hang(), worker, () => {});
  remote[Comlink.releaseProxy]?.();
  port.close();
}
clearInterval(keepAlive);
process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
process.exit(0);
