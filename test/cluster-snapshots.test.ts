/**
 * The cluster's snapshot layout through the archive worker, on both stores:
 * a pack with `snapshot` writes `<ws>/<snapshot>.tar.gz` (never the
 * single-gateway `<ws>.tar.gz`), an unpack with it reads that one back, and
 * a drop removes only the snapshots it names.
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ArchiveTask, PackResult, UnpackResult } from '../src/shared/archive-protocol.js';
import { DEFAULT_ARCHIVE_EXCLUDES, DEFAULT_UNPACK_LIMITS } from '../src/shared/archive-protocol.js';
import { snapshotName } from '../src/shared/cluster.js';
import type { StoreSpec } from '../src/shared/store-spec.js';
import run from '../src/workers/archive-worker.js';
import { startS3rver } from './fixtures/s3rver.js';
import type { S3rverHandle } from './fixtures/s3rver.js';
import { tempDir } from './helpers.js';

async function ok<T>(task: ArchiveTask): Promise<T> {
  const out = await run(task);
  if (!out.ok) throw new Error(`${out.error.code}: ${out.error.message}`);
  return out.value as T;
}

describe('cluster snapshots in the store', () => {
  let dir: string;
  let s3: S3rverHandle;
  beforeAll(async () => {
    dir = await tempDir('cxg-snapshots-');
    s3 = await startS3rver();
  });
  afterAll(async () => {
    await s3?.dispose();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  async function listKeys(spec: StoreSpec): Promise<string[]> {
    if (spec.kind === 'file') {
      const top = await readdir(spec.dir, { withFileTypes: true });
      const out: string[] = [];
      for (const e of top) {
        if (e.isDirectory()) for (const f of await readdir(path.join(spec.dir, e.name))) out.push(`${e.name}/${f}`);
        else out.push(e.name);
      }
      return out.filter((k) => k.endsWith('.tar.gz')).sort();
    }
    const client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
    try {
      const res = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket }));
      return (res.Contents ?? []).map((o) => o.Key ?? '').sort();
    } finally {
      client.destroy();
    }
  }

  for (const kind of ['file', 's3'] as const) {
    it(`${kind}: pack to a snapshot, unpack it, drop older ones`, async () => {
      const spec: StoreSpec = kind === 'file' ? { kind: 'file', dir: path.join(dir, 'store') } : { kind: 's3', bucket: s3.bucket, prefix: 'homes', endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials };
      const ws = `ws-${kind}`;
      const home = path.join(dir, `${kind}-home`);
      await mkdir(home, { recursive: true });
      const names: string[] = [];
      for (const [epoch, gen] of [[1, 'g1'], [2, 'g2'], [2, 'g3']] as const) {
        await writeFile(path.join(home, 'marker.txt'), `${epoch}-${gen}`);
        const snapshot = snapshotName(epoch, gen);
        names.push(snapshot);
        const r = await ok<PackResult>({ op: 'pack', store: spec, workspaceId: ws, home, exclude: DEFAULT_ARCHIVE_EXCLUDES, generation: gen, limits: DEFAULT_UNPACK_LIMITS, snapshot });
        expect(r.key).toContain(`${snapshot}.tar.gz`);
      }
      const prefix = kind === 'file' ? '' : 'homes/';
      expect(await listKeys(spec)).toEqual(names.map((n) => `${prefix}${ws}/${n}.tar.gz`));

      const into = path.join(dir, `${kind}-restored`);
      await mkdir(into);
      const u = await ok<UnpackResult>({ op: 'unpack', store: spec, workspaceId: ws, home: into, exclude: DEFAULT_ARCHIVE_EXCLUDES, limits: DEFAULT_UNPACK_LIMITS, snapshot: names[1] });
      expect(u).toMatchObject({ found: true, generation: 'g2' });
      expect(await readFile(path.join(into, 'marker.txt'), 'utf8')).toBe('2-g2');

      await ok({ op: 'drop', store: spec, workspaceId: ws, snapshots: [names[0] as string] });
      expect(await listKeys(spec)).toEqual(names.slice(1).map((n) => `${prefix}${ws}/${n}.tar.gz`));
      // A snapshot name that is not one (a path) is refused, never resolved outside the workspace's scope.
      const bad = await run({ op: 'drop', store: spec, workspaceId: ws, snapshots: ['../x'] });
      expect(bad).toMatchObject({ ok: false, error: { code: 'GW_BAD_WORKSPACE_ID' } });
    });
  }
});
