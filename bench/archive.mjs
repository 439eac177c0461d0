// archive: shutdown of a workspace whose CODEX_HOME holds 50 MiB (half text
// that compresses like codex's session logs, half random bytes) into S3
// (s3rver on loopback, in a process of its own), against a plain SDK `Upload`
// of the same home already packed as tar.gz (same part size and queue). Both
// are counted in MiB of home per second. Then 32 such shutdowns at once, with
// the front thread's event-loop delay measured meanwhile in the gateway process.
//
// Env: BENCH_HOME_MIB (default 50), BENCH_ARCHIVE_RUNS (3),
// BENCH_ARCHIVE_CONCURRENT (32).
import { createReadStream } from 'node:fs';
import { cp, mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import * as tar from 'tar';
import { GATEWAY_SERVER, BENCH_DIR, checkQuiet, machine, machineLine, removeDir, round, scratchDir, startNodeIpc, summarize, table, verdict, writeResult } from './common.mjs';

const MiB = 1024 * 1024;
const HOME_MIB = Number(process.env.BENCH_HOME_MIB ?? 50);
const RUNS = Number(process.env.BENCH_ARCHIVE_RUNS ?? 3);
const CONCURRENT = Number(process.env.BENCH_ARCHIVE_CONCURRENT ?? 32);
/** The store's multipart shape (src/shared/stores/s3-store.ts). */
const PART_SIZE = 8 * MiB;
const QUEUE_SIZE = 4;

/** A small deterministic PRNG, so every run packs the same bytes. */
function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

const WORDS = 'the a to of and in is it that for on with as this be are file function return const let value error test thread turn item message delta output input user assistant tool call result model token time path codex workspace session rollout json line content text type id created status completed'.split(' ');

/** Text like a rollout log: JSON lines of words and numbers. */
function textBytes(size, rand) {
  const parts = [];
  let n = 0;
  while (n < size) {
    const words = Array.from({ length: 8 + Math.floor(rand() * 24) }, () => WORDS[Math.floor(rand() * WORDS.length)]).join(' ');
    const line = `{"timestamp":"2026-01-01T00:00:${String(Math.floor(rand() * 60)).padStart(2, '0')}.${Math.floor(rand() * 1e6)}Z","type":"response_item","payload":{"type":"message","role":"assistant","content":[{"type":"output_text","text":"${words}"}],"id":"${Math.floor(rand() * 1e12).toString(36)}"}}\n`;
    parts.push(line);
    n += line.length;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

function randomBytesOf(size, rand) {
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i += 4) b.writeUInt32LE(Math.floor(rand() * 2 ** 32), i);
  return b;
}

/** HOME_MIB of files: half text (many sizes), half random (a few large, some small). */
async function makeHome(dir) {
  const rand = prng(42);
  const half = (HOME_MIB * MiB) / 2;
  let text = 0;
  for (let i = 0; text < half; i++) {
    const size = Math.min(half - text, i % 3 === 0 ? MiB : 128 * 1024);
    const d = path.join(dir, 'sessions', '2026', '01', String(1 + (i % 28)).padStart(2, '0'));
    await mkdir(d, { recursive: true });
    await writeFile(path.join(d, `rollout-2026-01-01T00-00-00-${i}.jsonl`), textBytes(size, rand));
    text += size;
  }
  let random = 0;
  await mkdir(path.join(dir, 'blobs'), { recursive: true });
  for (let i = 0; random < half; i++) {
    const size = Math.min(half - random, i < 2 ? 8 * MiB : MiB);
    await writeFile(path.join(dir, i === 0 ? 'state_5.sqlite' : path.join('blobs', `blob-${i}.bin`)), randomBytesOf(size, rand));
    random += size;
  }
}

async function main() {
  console.log(`archive: shutdown of a workspace with a ${HOME_MIB} MiB CODEX_HOME to s3rver vs a plain Upload of its tar.gz; ${RUNS} runs each; then ${CONCURRENT} shutdowns at once`);
  console.log(machineLine());
  const busyBefore = await checkQuiet();
  const dir = await scratchDir('archive-');
  const template = path.join(dir, 'home');
  await makeHome(template);
  // s3rver stands in for a remote object store: at nice 10 its CPU (it parses
  // and writes every part in JavaScript) does not crowd the gateway's threads
  // off a two-core machine. Both the gateway and the anchor upload to it.
  const s3 = await startNodeIpc(path.join(BENCH_DIR, 's3rver-server.mjs'), { nice: Number(process.env.BENCH_S3RVER_NICE ?? 10) });
  const store = await s3.event('ready');
  const gw = await startNodeIpc(GATEWAY_SERVER, {
    env: { CXG_BENCH_GATEWAY: JSON.stringify({ codex: 'echo', store: { kind: 's3', endpoint: store.endpoint, bucket: store.bucket, prefix: 'bench', credentials: store.credentials } }) },
    nofile: 65_536,
  });
  const ready = await gw.event('ready');
  const fill = async (ids) => {
    const started = await gw.call('ensure', { ids, concurrency: 8 });
    const bad = started.runs.find((r) => r.error);
    if (bad) throw new Error(`start failed: ${bad.error}`);
    await Promise.all(started.runs.map((r) => cp(template, r.codexHome, { recursive: true })));
  };
  const client = new S3Client({
    endpoint: store.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: store.credentials,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const gatewayMs = [];
  const uploadMs = [];
  let packMs;
  let gzBytes;
  let concurrent;
  try {
    // The anchor's archive: the same directory, packed once by the same tar library.
    const gz = path.join(dir, 'home.tar.gz');
    const t0 = performance.now();
    await tar.c({ gzip: true, cwd: template, portable: true, file: gz }, ['.']);
    packMs = performance.now() - t0;
    gzBytes = (await stat(gz)).size;
    for (let i = 0; i < RUNS; i++) {
      const id = `bench-archive-${i}`;
      await fill([id]);
      const r = (await gw.call('shutdown', { ids: [id] })).runs[0];
      if (!r.saved) throw new Error(`shutdown did not save: ${r.error}`);
      gatewayMs.push(r.ms);
      const t = performance.now();
      await new Upload({ client, params: { Bucket: store.bucket, Key: `anchor/${id}.tar.gz`, Body: createReadStream(gz), ContentType: 'application/gzip' }, partSize: PART_SIZE, queueSize: QUEUE_SIZE }).done();
      uploadMs.push(performance.now() - t);
      process.stdout.write(`  run ${i + 1}: gateway shutdown ${round(gatewayMs.at(-1), 0)} ms, plain upload ${round(uploadMs.at(-1), 0)} ms\n`);
    }
    const ids = Array.from({ length: CONCURRENT }, (_, i) => `bench-archive-c${i}`);
    await fill(ids);
    await gw.call('resetLoop');
    const res = await gw.call('shutdown', { ids });
    const stats = await gw.call('stats');
    concurrent = { totalMs: res.totalMs, failures: res.runs.filter((r) => !r.saved).length, shutdownMs: summarize(res.runs.map((r) => r.ms)), front: stats.front, shardLoopP99Ms: stats.shards.map((s) => s.eventLoopDelayP99Ms) };
  } finally {
    client.destroy();
    await gw.call('drain').catch(() => {});
    await gw.stop();
    await s3.stop();
    await removeDir(dir);
  }
  const g = summarize(gatewayMs);
  const u = summarize(uploadMs);
  const gRate = HOME_MIB / (g.p50 / 1000);
  const uRate = HOME_MIB / (u.p50 / 1000);
  const cRate = (HOME_MIB * CONCURRENT) / (concurrent.totalMs / 1000);
  const checks = [
    { target: '≥ 70% of the plain upload\'s throughput', value: `${round(gRate, 1)} vs ${round(uRate, 1)} MiB/s = ${round((100 * gRate) / uRate, 0)}%`, ok: gRate >= 0.7 * uRate },
    { target: `front event-loop delay p99 ≤ 5 ms during ${CONCURRENT} concurrent shutdowns`, value: `${round(concurrent.front.p99, 2)} ms (max ${round(concurrent.front.max, 1)} ms), ${concurrent.failures} failed`, ok: concurrent.front.p99 <= 5 && concurrent.failures === 0 },
  ];
  console.log(`\narchive (${machineLine()}; home ${HOME_MIB} MiB → tar.gz ${round(gzBytes / MiB, 1)} MiB, packed by the bench in ${round(packMs, 0)} ms)`);
  console.log(
    table(
      ['what', 'p50 time', 'MiB of home/s', 'front loop p99 / max', 'front CPU / run-queue wait'],
      [
        ['plain Upload of the tar.gz (anchor)', `${round(u.p50, 0)} ms`, round(uRate, 1), '', ''],
        ['gateway shutdown (stop + tar.gz + upload)', `${round(g.p50, 0)} ms`, round(gRate, 1), '', ''],
        [
          `${CONCURRENT} shutdowns at once`,
          `${round(concurrent.totalMs, 0)} ms all`,
          round(cRate, 1),
          `${round(concurrent.front.p99, 2)} / ${round(concurrent.front.max, 1)} ms`,
          `${round(concurrent.front.frontCpuMs, 0)} / ${round(concurrent.front.frontRunQueueWaitMs, 0)} ms of ${round(concurrent.front.windowMs, 0)} ms`,
        ],
      ],
    ),
  );
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, verdict(k.ok)])));
  await writeResult('archive', {
    busyBefore,
    settings: { homeMiB: HOME_MIB, runs: RUNS, concurrent: CONCURRENT, partSize: PART_SIZE, queueSize: QUEUE_SIZE, shards: ready.shards, cores: machine().cores },
    tarGzBytes: gzBytes,
    anchorPackMs: packMs,
    gatewayShutdownMs: g,
    plainUploadMs: u,
    gatewayMiBps: gRate,
    plainUploadMiBps: uRate,
    concurrent: { ...concurrent, MiBps: cRate },
    checks,
  });
}

await main();
