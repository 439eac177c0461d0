/**
 * Scenario 6: hostile objects in the store. Each start of a workspace whose
 * stored object is hostile (../ and absolute paths, symlink and hardlink
 * entries, devices, a gzip bomb, truncated data, …) fails with
 * GW_ARCHIVE_INVALID naming the object; nothing is written outside the home
 * (canaries in sibling directories, listings of every parent unchanged), the
 * object stays byte-identical, no process and no directory are left, and the
 * workspace is not silently started empty in its place. The archives are the
 * ones test/archive.test.ts feeds to unpack directly
 * (test/fixtures/hostile-archives.ts); here they go through the Supervisor.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileObjectStore, S3ObjectStore } from 'codex-app-gateway';
import type { ObjectStore, UnpackLimits } from 'codex-app-gateway';
import { HOSTILE } from '../fixtures/hostile-archives.js';
import type { HostileCase } from '../fixtures/hostile-archives.js';
import { startS3rver } from '../fixtures/s3rver.js';
import { closeOf, openWs, startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import type { S3rverHandle } from '../fixtures/s3rver.js';
import { countingBuilder, readObject, rejection, startTestSupervisor, tempDir } from '../helpers.js';
import type { TestSupervisor } from '../helpers.js';
import { countLosses, descendantsOf, processesUnder, sha256, treeSnapshot } from './markers.js';

/** Cases run through S3 as well (the rest through the file store only). */
const THROUGH_S3 = new Set(['a ../ path', 'an absolute path', 'a symlink to .. followed by a file through it', 'a hardlink to a file outside', 'a gzip bomb', 'truncated gzip']);

describe('fault: hostile archives in the store', () => {
  let root: string;
  let s3: S3rverHandle;
  let baseline: Set<number>;
  /** One supervisor per store and set of unpack limits. */
  const sups = new Map<string, Promise<TestSupervisor>>();
  let ids = 0;

  beforeAll(async () => {
    baseline = new Set(await descendantsOf(process.pid));
    root = await tempDir('cxg-faults-hostile-');
    s3 = await startS3rver();
  });
  afterAll(async () => {
    await Promise.all([...sups.values()].map(async (p) => (await p).close()));
    await s3?.dispose();
    if (root !== undefined) await rm(root, { recursive: true, force: true });
  });

  function supervisorFor(kind: 'file' | 's3', limits: Partial<UnpackLimits> | undefined): Promise<TestSupervisor> {
    const key = `${kind} ${JSON.stringify(limits ?? {})}`;
    let p = sups.get(key);
    if (p === undefined) {
      const store =
        kind === 's3'
          ? new S3ObjectStore({ bucket: s3.bucket, prefix: `hostile-${randomBytes(4).toString('hex')}`, endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials })
          : undefined;
      p = startTestSupervisor({ ...(store === undefined ? {} : { store }), ...(limits === undefined ? {} : { unpackLimits: limits }) });
      sups.set(key, p);
    }
    return p;
  }

  const cases: Array<{ kind: 'file' | 's3'; hostile: HostileCase }> = [
    ...HOSTILE.map((hostile) => ({ kind: 'file' as const, hostile })),
    ...HOSTILE.filter((h) => THROUGH_S3.has(h.name)).map((hostile) => ({ kind: 's3' as const, hostile })),
  ];

  for (const { kind, hostile } of cases) {
    it(`scenario 6: ${hostile.name} (${kind === 's3' ? 'S3ObjectStore, s3rver' : 'FileObjectStore'}) → GW_ARCHIVE_INVALID naming the object; nothing outside the home, object untouched, nothing left`, async (ctx) => {
      const t = await supervisorFor(kind, hostile.limits);
      const store = (kind === 's3' ? t.store : new FileObjectStore(t.storeDir)) as ObjectStore;
      const id = `hostile-${kind}-${++ids}`;
      const marker = `pwned-${randomBytes(6).toString('hex')}`;
      // Canaries next to the home at every level an escape could reach.
      const canaries = [path.join(t.homeRoot, 'canary'), path.join(t.root, 'canary'), path.join(t.homeRoot, id, 'canary')];
      // Registered first, so it runs after the losses are counted (onTestFinished hooks run last first).
      ctx.onTestFinished(async () => {
        for (const dir of canaries) await rm(dir, { recursive: true, force: true });
        await rm(path.join(t.homeRoot, id), { recursive: true, force: true });
      });
      const losses = countLosses(ctx);
      for (const dir of canaries) {
        await mkdir(dir, { recursive: true });
        await writeFile(path.join(dir, 'canary.txt'), `alive ${id}`);
      }
      const bytes = await hostile.object({ root: t.root, marker });
      await store.put(id, Readable.from([bytes]));
      const stored = sha256((await readObject(store, id)) ?? Buffer.alloc(0));
      // Lost: a canary gone or rewritten, or the stored object changed.
      losses.countWith(async () => {
        let lost = 0;
        for (const dir of canaries) {
          if ((await readFile(path.join(dir, 'canary.txt'), 'utf8').catch(() => undefined)) !== `alive ${id}`) lost++;
        }
        return lost + (sha256((await readObject(store, id)) ?? Buffer.alloc(0)) === stored ? 0 : 1);
      });
      const skipStore = (rel: string): boolean => rel === 'store' || rel.startsWith('store/');
      const before = await treeSnapshot(t.root, skipStore);

      const build = countingBuilder();
      const err = await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build));
      expect(err.code).toBe('GW_ARCHIVE_INVALID');
      expect(err.message).toContain(store.describe(id));
      expect(err.message).toMatch(hostile.reason);

      // Nothing outside the home: every path under the test root (the store aside) is as it was.
      const after = await treeSnapshot(t.root, skipStore);
      expect(after).toEqual(before);
      for (const dir of canaries) expect(await readFile(path.join(dir, 'canary.txt'), 'utf8')).toBe(`alive ${id}`);
      expect(Object.keys(after).some((p) => p.includes(marker))).toBe(false);
      for (const dir of ['/', os.tmpdir(), os.homedir(), path.dirname(t.root)]) expect(existsSync(path.join(dir, marker))).toBe(false);
      // The object is left as it was, for a person to look at.
      expect(sha256((await readObject(store, id)) ?? Buffer.alloc(0))).toBe(stored);
      // No process was started, none is left; the generation directory is gone.
      expect(await processesUnder(t.homeRoot)).toEqual([]);
      expect((await descendantsOf(process.pid)).filter((p) => !baseline.has(p))).toEqual([]);
      expect(after[`homes/${id}`]).toBe('dir');
      expect(Object.keys(after).filter((p) => p.startsWith(`homes/${id}/`))).toEqual([`homes/${id}/canary`, `homes/${id}/canary/canary.txt`]);

      // A second start does not take the hostile object for an empty workspace.
      expect((await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build))).code).toBe('GW_ARCHIVE_INVALID');
      expect(sha256((await readObject(store, id)) ?? Buffer.alloc(0))).toBe(stored);
    }, 60_000);
  }
});

describe('fault: a hostile archive behind the gateway', () => {
  let g: TestGateway;
  beforeAll(async () => {
    g = await startTestGateway();
  });
  afterAll(async () => {
    await g?.close();
  });

  it('scenario 6: a client of a workspace whose object is hostile is closed with 1011 naming GW_ARCHIVE_INVALID; the gateway stays up, the object untouched', async (ctx) => {
    const losses = countLosses(ctx);
    const id = 'hostile-behind-gateway';
    const store = new FileObjectStore(g.storeDir);
    const marker = `pwned-${randomBytes(6).toString('hex')}`;
    const hostile = HOSTILE.find((h) => h.name === 'a symlink to .. followed by a file through it') as HostileCase;
    await store.put(id, Readable.from([await hostile.object({ root: g.homeRoot, marker })]));
    const stored = sha256((await readObject(store, id)) ?? Buffer.alloc(0));
    losses.countWith(async () => (sha256((await readObject(store, id)) ?? Buffer.alloc(0)) === stored ? 0 : 1));
    await mkdir(g.homeRoot, { recursive: true });
    const before = await treeSnapshot(path.dirname(g.homeRoot), (rel) => rel === 'store' || rel.startsWith('store/'));

    const ws = await openWs(g.url, await g.token(id));
    const closed = await closeOf(ws);
    expect(closed.code).toBe(1011);
    expect(closed.reason).toContain('GW_ARCHIVE_INVALID');
    expect((await fetch(`${g.httpUrl}/healthz`)).status).toBe(200);
    expect((await fetch(`${g.httpUrl}/readyz`)).status).toBe(200);
    expect(await treeSnapshot(path.dirname(g.homeRoot), (rel) => rel === 'store' || rel.startsWith('store/'))).toEqual(before);
    expect(await processesUnder(g.homeRoot)).toEqual([]);
    expect(sha256((await readObject(store, id)) ?? Buffer.alloc(0))).toBe(stored);
  }, 60_000);
});
