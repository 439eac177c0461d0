// s3rver on 127.0.0.1 in a process of its own (so its work never lands on a
// measured event loop), storing into a scratch directory, with one bucket.
// Answers over IPC: {event:'ready', endpoint, bucket, credentials}.
import { createRequire } from 'node:module';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

const S3rver = createRequire(import.meta.url)('s3rver');
const BUCKET = 'codex-homes';
const dir = await mkdtemp(path.join(os.tmpdir(), 'bench-s3rver-'));
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: dir, configureBuckets: [{ name: BUCKET }] });
const { port } = await server.run();
const stop = async () => {
  await server.close().catch(() => {});
  await rm(dir, { recursive: true, force: true });
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('disconnect', () => void stop());
process.send?.({ event: 'ready', endpoint: `http://127.0.0.1:${port}`, bucket: BUCKET, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } });
