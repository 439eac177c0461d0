// The load generator: a process of its own (node + ws, bufferutil masking),
// driven by the bench over IPC. The same client drives every path of a bench.
//
//   echo  closed loop: each connection sends its next frame when the echo of
//         the last one arrives; msgs/s and RTT over a measured window.
//   rpc   closed loop of JSON-RPC requests to a real codex app-server: each
//         connection initializes, then sends its next request (e.g.
//         thread/list) when the answer to the last one arrives.
//   open / hold / closeAll  many mostly idle connections (connections bench):
//         open them at a bounded rate, then send one frame per connection per
//         interval, staggered, and count what comes back.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { Samples, serveIpc, summarize } from './common.mjs';

/** A JSON-RPC-shaped text frame of exactly `size` bytes. */
function frameOf(size) {
  const head = '{"jsonrpc":"2.0","id":1,"method":"bench/echo","params":{"pad":"';
  const tail = '"}}';
  const pad = Math.max(0, size - head.length - tail.length);
  return Buffer.from(head + 'x'.repeat(pad) + tail).subarray(0, Math.max(size, 1));
}

function connect(url, headers, localAddress) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      headers,
      perMessageDeflate: false,
      maxPayload: 256 * 1024 * 1024,
      skipUTF8Validation: true,
      handshakeTimeout: 60_000,
      ...(localAddress === undefined ? {} : { localAddress }),
    });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

/**
 * A closed loop over `sockets`: each sends its next request when the answer
 * to the last one arrives. `request(ws, n)` sends request n of a socket;
 * `answer(ws, data, n)` says whether `data` answers it ('ok' or 'bad') or is
 * something else to skip. Counts and round trips over the measured window.
 */
async function closedLoop(sockets, { request, answer, warmupMs, durationMs }) {
  const rtts = new Samples();
  let measuring = false;
  let stopping = false;
  let inFlight = 0;
  let count = 0;
  let all = 0;
  let bad = 0;
  let closed = 0;
  let drained;
  for (const ws of sockets) {
    let sentAt = 0;
    let n = 1;
    const send = () => {
      inFlight++;
      sentAt = performance.now();
      request(ws, n);
    };
    ws.on('message', (data) => {
      const verdict = answer(ws, data, n);
      if (verdict === undefined) return;
      const now = performance.now();
      inFlight--;
      all++;
      if (verdict === 'bad') bad++;
      if (measuring) {
        rtts.push((now - sentAt) * 1000);
        count++;
      }
      n++;
      if (!stopping) send();
      else if (inFlight === 0) drained?.();
    });
    ws.on('close', () => {
      closed++;
    });
    ws.on('error', () => {});
    send();
  }
  await sleep(warmupMs);
  measuring = true;
  const t0 = performance.now();
  await sleep(durationMs);
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  stopping = true;
  if (inFlight > 0) await Promise.race([new Promise((r) => (drained = r)), sleep(10_000)]);
  const unexpectedCloses = closed;
  for (const ws of sockets) ws.close(1000);
  await Promise.race([Promise.all(sockets.map((ws) => (ws.readyState === WebSocket.CLOSED ? undefined : new Promise((r) => ws.once('close', r))))), sleep(5000)]);
  // A message is one round trip (a request and its answer).
  return { msgs: count, allMsgs: all, seconds, msgsPerSec: count / seconds, rttUs: summarize(rtts), badFrames: bad, unexpectedCloses, lostInFlight: inFlight };
}

async function echo({ url, headers, conns, size, warmupMs, durationMs }) {
  const payload = frameOf(size);
  const sockets = await Promise.all(Array.from({ length: conns }, () => connect(url, headers)));
  const res = await closedLoop(sockets, {
    request: (ws) => ws.send(payload, { binary: false }),
    answer: (_ws, data) => (data.length === payload.length ? 'ok' : 'bad'),
    warmupMs,
    durationMs,
  });
  return { ...res, mbPerSec: (res.msgs * size) / res.seconds / 1e6 };
}

/** Sends `msg` and resolves with the answer carrying its id (notifications are skipped). */
function request(ws, msg) {
  return new Promise((resolve, reject) => {
    const onMessage = (data) => {
      const m = JSON.parse(data.toString());
      if (m.id !== msg.id) return;
      ws.off('message', onMessage);
      if (m.error) reject(new Error(`${msg.method}: ${JSON.stringify(m.error)}`));
      else resolve(m.result);
    };
    ws.on('message', onMessage);
    ws.send(JSON.stringify(msg));
  });
}

async function rpc({ url, headers, conns, method, params, warmupMs, durationMs }) {
  const sockets = await Promise.all(Array.from({ length: conns }, () => connect(url, headers)));
  for (const ws of sockets) {
    await request(ws, { jsonrpc: '2.0', id: 0, method: 'initialize', params: { clientInfo: { name: 'cxg-bench', version: '0' } } });
    ws.send(JSON.stringify({ jsonrpc: '2.0', method: 'initialized' }));
  }
  const res = await closedLoop(sockets, {
    request: (ws, n) => ws.send(JSON.stringify({ jsonrpc: '2.0', id: n, method, params })),
    answer: (_ws, data, n) => {
      const m = JSON.parse(data.toString());
      if (m.id !== n) return undefined;
      return m.error === undefined ? 'ok' : 'bad';
    },
    warmupMs,
    durationMs,
  });
  return { ...res, mbPerSec: 0 };
}

// ---- many idle connections ------------------------------------------------------

const held = [];
const stats = { sent: 0, received: 0, unexpectedCloses: 0, rtts: new Samples() };

async function open({ url, tokens, perToken, concurrency = 256, localAddresses = [undefined] }) {
  const jobs = [];
  for (let k = 0; k < perToken; k++) for (const token of tokens) jobs.push(token);
  const t0 = performance.now();
  let failed = 0;
  const errors = new Map();
  let next = 0;
  const run = async () => {
    while (next < jobs.length) {
      const i = next++;
      try {
        const ws = await connect(url, { authorization: `Bearer ${jobs[i]}` }, localAddresses[i % localAddresses.length]);
        const c = { ws, sentAt: 0, timer: undefined, open: true };
        ws.on('message', () => {
          stats.received++;
          if (c.sentAt > 0) stats.rtts.push((performance.now() - c.sentAt) * 1000);
          c.sentAt = 0;
        });
        ws.on('close', () => {
          if (c.open) stats.unexpectedCloses++;
          c.open = false;
        });
        ws.on('error', () => {});
        held.push(c);
      } catch (err) {
        failed++;
        const key = err instanceof Error ? err.message : String(err);
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, run));
  return { opened: held.length, failed, errors: Object.fromEntries(errors), ms: performance.now() - t0, rssClient: process.memoryUsage().rss };
}

async function hold({ intervalMs, durationMs, size }) {
  const payload = frameOf(size);
  stats.sent = 0;
  stats.received = 0;
  stats.rtts = new Samples();
  const unexpectedBefore = stats.unexpectedCloses;
  const send = (c) => {
    if (!c.open) return;
    c.sentAt = performance.now();
    stats.sent++;
    c.ws.send(payload, { binary: false });
  };
  for (const c of held) {
    // Staggered over the interval, so the load is even.
    c.timer = setTimeout(() => {
      send(c);
      c.timer = setInterval(() => send(c), intervalMs);
    }, Math.random() * intervalMs);
  }
  await sleep(durationMs);
  for (const c of held) {
    clearTimeout(c.timer);
    clearInterval(c.timer);
  }
  // Let the last frames come back.
  const until = Date.now() + 5000;
  while (stats.received < stats.sent && Date.now() < until) await sleep(50);
  return {
    sent: stats.sent,
    received: stats.received,
    stillOpen: held.filter((c) => c.open && c.ws.readyState === WebSocket.OPEN).length,
    unexpectedCloses: stats.unexpectedCloses - unexpectedBefore,
    rttUs: summarize(stats.rtts),
  };
}

async function closeAll() {
  for (const c of held) {
    c.open = false;
    c.ws.terminate();
  }
  held.length = 0;
  return true;
}

serveIpc({ echo, rpc, open, hold, closeAll });
process.send?.({ event: 'ready' });
