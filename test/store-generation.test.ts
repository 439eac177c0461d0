/**
 * Each stored object records the generation of the home it was packed from,
 * so start-up recovery can tell a leftover home that is already stored (or
 * older than what is stored) from one with unsaved work.
 */
import { Readable } from 'node:stream';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileObjectStore } from '../src/shared/stores/file-store.js';
import { S3ObjectStore } from '../src/shared/stores/s3-store.js';
import type { ObjectStore } from '../src/shared/stores/object-store.js';
import { startS3rver } from './fixtures/s3rver.js';
import type { S3rverHandle } from './fixtures/s3rver.js';
import { tempDir } from './helpers.js';

describe('stored generation', () => {
  let s3: S3rverHandle;
  beforeAll(async () => {
    s3 = await startS3rver();
  });
  const dirs: string[] = [];
  const keep = async (dir: Promise<string>): Promise<string> => {
    dirs.push(await dir);
    return dirs[dirs.length - 1] as string;
  };
  afterAll(async () => {
    await s3?.dispose();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  const stores: Array<[string, () => Promise<ObjectStore>]> = [
    ['file', async () => new FileObjectStore(path.join(await keep(tempDir('cxg-gen-')), 'store'))],
    ['s3', () => Promise.resolve(new S3ObjectStore({ bucket: s3.bucket, prefix: 'gen', endpoint: s3.endpoint, forcePathStyle: true, credentials: s3.credentials }))],
  ];

  it.each(stores)('%s › head returns the generation the last put recorded, and none when the put gave none', async (_kind, make) => {
    const store = await make();
    expect(await store.head('ws-gen')).toBeUndefined();
    await store.put('ws-gen', Readable.from([Buffer.from('one')]), { generation: 'g0000000001-aaaaaa' });
    expect((await store.head('ws-gen'))?.generation).toBe('g0000000001-aaaaaa');
    await store.put('ws-gen', Readable.from([Buffer.from('two')]), { generation: 'g0000000002-bbbbbb' });
    expect((await store.head('ws-gen'))?.generation).toBe('g0000000002-bbbbbb');
    await store.put('ws-gen', Readable.from([Buffer.from('three')]));
    expect((await store.head('ws-gen'))?.generation).toBeUndefined();
    await store.delete('ws-gen');
    expect(await store.head('ws-gen')).toBeUndefined();
  });
});
