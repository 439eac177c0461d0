// The floor under the gateway's data plane: one round trip of a transferred
// ArrayBuffer between two threads over a MessagePort, as the front and a
// shard exchange frame batches. Run by the dataplane bench in its own process.
import { performance } from 'node:perf_hooks';
import { MessageChannel, Worker } from 'node:worker_threads';
import { Samples, summarize } from './common.mjs';

const N = Number(process.argv[2] ?? 20_000);
const { port1, port2 } = new MessageChannel();
const echo = new Worker(
  `const { workerData } = require('node:worker_threads');
   workerData.port.on('message', (ab) => workerData.port.postMessage(ab, [ab]));`,
  { eval: true, workerData: { port: port2 }, transferList: [port2] },
);
const rtts = new Samples(N);
let sentAt = 0;
let n = 0;
const warmup = 1000;
port1.on('message', (ab) => {
  if (n++ >= warmup) rtts.push((performance.now() - sentAt) * 1000);
  if (n === N + warmup) {
    process.stdout.write(`${JSON.stringify(summarize(rtts))}\n`);
    port1.close();
    void echo.terminate();
    return;
  }
  sentAt = performance.now();
  port1.postMessage(ab, [ab]);
});
const first = new ArrayBuffer(212);
sentAt = performance.now();
port1.postMessage(first, [first]);
