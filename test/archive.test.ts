import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { link, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { UnpackLimits, UnpackTask } from '../src/shared/archive-protocol.js';
import { DEFAULT_ARCHIVE_EXCLUDES, DEFAULT_UNPACK_LIMITS } from '../src/shared/archive-protocol.js';
import { GatewayError } from '../src/shared/errors.js';
import { FileObjectStore } from '../src/shared/stores/file-store.js';
import type { ObjectStore } from '../src/shared/stores/object-store.js';
import { storeFromSpec } from '../src/shared/stores/from-spec.js';
import { S3ObjectStore } from '../src/shared/stores/s3-store.js';
import run from '../src/workers/archive-worker.js';
import { pack } from '../src/workers/archive-pack.js';
import { unpack } from '../src/workers/archive-unpack.js';
import { HOSTILE, fileEntry as file, tarOf } from './fixtures/hostile-archives.js';
import type { HostileContext } from './fixtures/hostile-archives.js';
import type { S3rverHandle } from './fixtures/s3rver.js';
import { startS3rver } from './fixtures/s3rver.js';
import { readObject } from './helpers.js';
import { testTempRoot } from './temp-root.js';

const MiB = 1024 * 1024;

let s3: S3rverHandle;
const scratch: string[] = [];
let ids = 0;

beforeAll(async () => {
  s3 = await startS3rver();
});

afterAll(async () => {
  await s3?.dispose();
});

afterEach(async () => {
  await Promise.all(scratch.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(testTempRoot(), `archive-${label}-`));
  scratch.push(dir);
  return dir;
}

function workspaceId(): string {
  ids += 1;
  return `ws-${process.pid}-${ids}`;
}

interface StoreCase {
  name: string;
  make(): Promise<ObjectStore>;
}

const STORES: StoreCase[] = [
  { name: 'FileObjectStore', make: async () => new FileObjectStore(join(await tempDir('store'), 'objects')) },
  {
    name: 'S3ObjectStore (s3rver)',
    make: () =>
      Promise.resolve(
        new S3ObjectStore({
          bucket: s3.bucket,
          prefix: `homes-${randomBytes(4).toString('hex')}`,
          endpoint: s3.endpoint,
          credentials: s3.credentials,
        }),
      ),
  },
];

// ---------------------------------------------------------------- helpers

async function putObject(store: ObjectStore, id: string, bytes: Buffer): Promise<void> {
  await store.put(id, Readable.from([bytes]));
}

async function rejection(promise: Promise<unknown>): Promise<GatewayError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'expected a rejection').toBeInstanceOf(GatewayError);
  return err as GatewayError;
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

type Node =
  | { kind: 'dir'; mode: number }
  | { kind: 'file'; mode: number; sha: string; size: number; mtimeMs: number }
  | { kind: 'symlink'; target: string }
  | { kind: 'other' };

/** Every path under `dir` (lstat, symlinks not followed), keyed by relative path. */
async function snapshot(dir: string): Promise<Map<string, Node>> {
  const out = new Map<string, Node>();
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(join(dir, rel))).sort()) {
      const path = rel === '' ? name : `${rel}/${name}`;
      const abs = join(dir, path);
      const info = await lstat(abs);
      if (info.isDirectory()) {
        out.set(path, { kind: 'dir', mode: info.mode & 0o7777 });
        await walk(path);
      } else if (info.isFile()) {
        const data = await readFile(abs);
        out.set(path, { kind: 'file', mode: info.mode & 0o7777, sha: sha256(data), size: data.length, mtimeMs: info.mtimeMs });
      } else if (info.isSymbolicLink()) {
        out.set(path, { kind: 'symlink', target: await readlink(abs) });
      } else {
        out.set(path, { kind: 'other' });
      }
    }
  };
  await walk('');
  return out;
}

/** Type and content only: what a round trip promises to keep. */
function contentOf(tree: Map<string, Node>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [path, node] of tree) out[path] = node.kind === 'file' ? `file ${node.sha}` : node.kind;
  return out;
}

function unpackTask(store: ObjectStore, id: string, home: string, limits: Partial<UnpackLimits> = {}): UnpackTask {
  return {
    op: 'unpack',
    store: store.spec,
    workspaceId: id,
    home,
    exclude: DEFAULT_ARCHIVE_EXCLUDES,
    limits: { ...DEFAULT_UNPACK_LIMITS, ...limits },
  };
}

/**
 * A CODEX_HOME with what a real one holds, plus what must never leave it:
 * excluded secrets and scratch, symlinks, a fifo.
 */
async function makeHome(root: string): Promise<string> {
  const home = join(root, 'home');
  await mkdir(join(home, 'sessions/2025/01/02'), { recursive: true });
  await writeFile(join(home, 'sessions/2025/01/02/rollout-1.jsonl'), '{"type":"turn","text":"hello"}\n');
  await mkdir(join(home, 'sessions/tmp'));
  await writeFile(join(home, 'sessions/tmp/kept.txt'), 'only the top-level tmp is excluded');
  await writeFile(join(home, 'state_5.sqlite'), randomBytes(100_000));
  await writeFile(join(home, 'empty.txt'), '');
  await writeFile(join(home, 'big.bin'), randomBytes(20 * MiB));
  await mkdir(join(home, 'empty-dir'));
  await writeFile(join(home, 'config.toml'), 'token = "secret"\n');
  await writeFile(join(home, 'config.toml.bak'), 'not excluded: only the exact path is');
  await writeFile(join(home, 'auth.json'), '{"token":"secret"}');
  await mkdir(join(home, 'tmp/deep'), { recursive: true });
  await writeFile(join(home, 'tmp/deep/scratch'), 'scratch');
  await mkdir(join(home, '.tmp'));
  await writeFile(join(home, '.tmp/x'), 'scratch');
  await writeFile(join(home, 'hard-a.txt'), 'one file, two names');
  await link(join(home, 'hard-a.txt'), join(home, 'hard-b.txt'));
  await symlink('state_5.sqlite', join(home, 'link-to-state'));
  await symlink('/etc', join(home, 'link-out'));
  execFileSync('mkfifo', [join(home, 'fifo')]);
  return home;
}

const NOT_ARCHIVED = ['config.toml', 'auth.json', 'tmp', 'tmp/deep', 'tmp/deep/scratch', '.tmp', '.tmp/x', 'link-to-state', 'link-out', 'fifo'];

// ---------------------------------------------------------------- round trip

describe.each(STORES)('archive round trip › $name', (storeCase) => {
  it('restores files and directories, leaves out excluded paths, symlinks and fifos, and never touches the home', async () => {
    const store = await storeCase.make();
    const root = await tempDir('home');
    const home = await makeHome(root);
    const id = workspaceId();
    const before = await snapshot(home);

    const packed = await pack({ op: 'pack', store: store.spec, workspaceId: id, home, exclude: DEFAULT_ARCHIVE_EXCLUDES }, store);

    expect(await snapshot(home)).toEqual(before);
    expect(packed.key).toBe(store.key(id));
    // 20 MiB of random data does not compress: the object spans several 8 MiB parts on S3.
    expect(packed.bytes).toBeGreaterThan(20 * MiB);
    expect((await store.head(id))?.bytes).toBe(packed.bytes);

    const target = join(root, 'restored');
    await mkdir(target);
    const restored = await unpack(unpackTask(store, id, target), store);

    const expected = contentOf(before);
    for (const path of NOT_ARCHIVED) delete expected[path];
    const after = await snapshot(target);
    expect(contentOf(after)).toEqual(expected);
    // Hardlinked names come back as two regular files.
    expect(after.get('hard-b.txt')).toMatchObject({ kind: 'file', sha: sha256(Buffer.from('one file, two names')) });
    const regularFiles = Object.values(expected).filter((v) => v.startsWith('file ')).length;
    expect(packed.files).toBe(regularFiles);
    expect(restored).toMatchObject({ key: store.key(id), found: true, bytes: packed.bytes, files: regularFiles });
    for (const node of after.values()) {
      if (node.kind === 'file' || node.kind === 'dir') expect(node.mode & ~0o755).toBe(0);
    }
  });

  it('round-trips an empty home', async () => {
    const store = await storeCase.make();
    const root = await tempDir('empty');
    const id = workspaceId();
    await mkdir(join(root, 'home'));
    await mkdir(join(root, 'restored'));
    const packed = await pack({ op: 'pack', store: store.spec, workspaceId: id, home: join(root, 'home'), exclude: [] }, store);
    expect(packed.files).toBe(0);
    const restored = await unpack(unpackTask(store, id, join(root, 'restored')), store);
    expect(restored).toMatchObject({ found: true, files: 0 });
    expect(await readdir(join(root, 'restored'))).toEqual([]);
  });

  it('unpack of a workspace with no object reports found: false and writes nothing', async () => {
    const store = await storeCase.make();
    const target = await tempDir('fresh');
    const id = workspaceId();
    const result = await unpack(unpackTask(store, id, target), store);
    expect(result).toMatchObject({ key: store.key(id), found: false, bytes: 0, files: 0 });
    expect(await readdir(target)).toEqual([]);
  });

  it('unpack refuses a target that is not empty', async () => {
    const store = await storeCase.make();
    const target = await tempDir('busy');
    await writeFile(join(target, 'left-over'), 'x');
    const err = await rejection(unpack(unpackTask(store, workspaceId(), target), store));
    expect(err.code).toBe('GW_HOME_UNWRITABLE');
  });

  it('put is atomic: a body that fails midway leaves the previous object byte-identical', async () => {
    const store = await storeCase.make();
    const id = workspaceId();
    const first = gzipSync(randomBytes(1000));
    await putObject(store, id, first);

    // Past one 8 MiB part, so S3 goes through a multipart upload that must be aborted.
    const failing = Readable.from(
      (async function* () {
        yield randomBytes(10 * MiB);
        await Promise.resolve();
        throw new Error('disk went away while reading');
      })(),
      { objectMode: false },
    );
    const err = await rejection(store.put(id, failing));
    expect(err.code).toBe('GW_STORE_UPLOAD');
    expect(err.message).toContain(store.describe(id));
    expect(err.describe()).toContain('disk went away while reading');

    expect(await readObject(store, id)).toEqual(first);
    if (store instanceof FileObjectStore) {
      // No temp file left next to the object.
      expect(await readdir(store.dir)).toEqual([store.key(id)]);
    } else if (store instanceof S3ObjectStore) {
      const client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
      const listed = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `${store.spec.prefix}/` }));
      client.destroy();
      expect(listed.Contents?.map((o) => o.Key)).toEqual([store.key(id)]);
    }
  });

  it('extracted modes lose setuid/setgid/sticky and group/world write', async () => {
    const store = await storeCase.make();
    const id = workspaceId();
    await putObject(
      store,
      id,
      gzipSync(tarOf([{ path: 'dir/', type: '5', mode: 0o1777 }, { path: 'dir/suid', mode: 0o6777, body: Buffer.from('#!/bin/sh\n') }])),
    );
    const target = await tempDir('modes');
    await unpack(unpackTask(store, id, target), store);
    const dir = await lstat(join(target, 'dir'));
    const file = await lstat(join(target, 'dir/suid'));
    expect(dir.mode & 0o7777).toBe(0o755);
    expect(file.mode & 0o7777).toBe(0o755);
  });
});

// ---------------------------------------------------------------- hostile archives

describe.each(STORES)('unpack of hostile archives › $name', (storeCase) => {
  /** Stores `bytes`, unpacks them into root/home next to root/canary, and checks what must hold whatever happened. */
  async function unpackHostile(store: ObjectStore, bytes: Buffer, ctx: HostileContext, limits: Partial<UnpackLimits> = {}) {
    const id = workspaceId();
    await putObject(store, id, bytes);
    const stored = sha256((await readObject(store, id)) ?? Buffer.alloc(0));
    const home = join(ctx.root, 'home');
    const outcome = await unpack(unpackTask(store, id, home, limits), store).then(
      (value) => ({ ok: true as const, value }),
      (error: unknown) => ({ ok: false as const, error }),
    );

    // Nothing outside the target: the parent holds exactly what it held, the
    // sibling canary is untouched, and the marker name exists nowhere.
    expect((await readdir(ctx.root)).sort()).toEqual(['canary', 'home']);
    expect(await readdir(join(ctx.root, 'canary'))).toEqual(['canary.txt']);
    expect(await readFile(join(ctx.root, 'canary', 'canary.txt'), 'utf8')).toBe('alive');
    expect(existsSync(join(tmpdir(), ctx.marker))).toBe(false);
    expect(existsSync(join('/', ctx.marker))).toBe(false);
    // Only regular files and directories inside it.
    for (const node of (await snapshot(home)).values()) expect(['file', 'dir']).toContain(node.kind);
    // Unpack never modifies the object.
    expect(sha256((await readObject(store, id)) ?? Buffer.alloc(0))).toBe(stored);
    return { id, home, outcome };
  }

  async function context(): Promise<HostileContext> {
    const root = await tempDir('hostile');
    await mkdir(join(root, 'home'));
    await mkdir(join(root, 'canary'));
    await writeFile(join(root, 'canary', 'canary.txt'), 'alive');
    return { root, marker: `pwned-${randomBytes(6).toString('hex')}` };
  }

  it.each(HOSTILE)('$name → GW_ARCHIVE_INVALID naming the object', async (hostile) => {
    const store = await storeCase.make();
    const ctx = await context();
    const bytes = await hostile.object(ctx);
    // The bomb is a small object: only counting what gunzip produces can catch it.
    if (hostile.limits?.maxBytes !== undefined) expect(bytes.length).toBeLessThan(MiB);
    const { id, home, outcome } = await unpackHostile(store, bytes, ctx, hostile.limits);
    expect(outcome.ok).toBe(false);
    const err = (outcome as { error: unknown }).error;
    expect(err).toBeInstanceOf(GatewayError);
    expect((err as GatewayError).code).toBe('GW_ARCHIVE_INVALID');
    expect((err as GatewayError).message).toContain(store.describe(id));
    expect((err as GatewayError).message).toMatch(hostile.reason);
    if (hostile.limits?.maxBytes !== undefined) {
      // The bomb stopped at the limit instead of filling the disk.
      let written = 0;
      for (const node of (await snapshot(home)).values()) if (node.kind === 'file') written += node.size;
      expect(written).toBeLessThanOrEqual(hostile.limits.maxBytes);
    }
  });

  it('excluded paths in an archive are skipped, not extracted', async () => {
    const store = await storeCase.make();
    const ctx = await context();
    const bytes = gzipSync(
      tarOf([
        file('config.toml', 'token = "planted"'),
        file('auth.json', '{}'),
        { path: 'tmp/', type: '5' },
        file('tmp/x'),
        file('keep.txt', 'kept'),
      ]),
    );
    const { home, outcome } = await unpackHostile(store, bytes, ctx);
    expect(outcome).toMatchObject({ ok: true, value: { found: true, files: 1 } });
    expect(await readdir(home)).toEqual(['keep.txt']);
    expect(await readFile(join(home, 'keep.txt'), 'utf8')).toBe('kept');
  });
});

// ---------------------------------------------------------------- store down

describe('S3 store down', () => {
  it('pack and unpack fail with GW_STORE_UNAVAILABLE, and work again once it is back', async () => {
    const store = new S3ObjectStore({ bucket: s3.bucket, prefix: 'down', endpoint: s3.endpoint, credentials: s3.credentials });
    const root = await tempDir('down');
    const home = join(root, 'home');
    await mkdir(join(home, 'sessions'), { recursive: true });
    await writeFile(join(home, 'sessions/rollout.jsonl'), 'before the outage\n');
    // Big enough for a multipart upload, whose failure path differs from a single PutObject's.
    await writeFile(join(home, 'big.bin'), randomBytes(20 * MiB));
    const id = workspaceId();
    await pack({ op: 'pack', store: store.spec, workspaceId: id, home, exclude: DEFAULT_ARCHIVE_EXCLUDES }, store);

    await s3.stop();
    try {
      await writeFile(join(home, 'sessions/rollout.jsonl'), 'during the outage\n');
      const packErr = await rejection(pack({ op: 'pack', store: store.spec, workspaceId: id, home, exclude: [] }, store));
      expect(packErr.code).toBe('GW_STORE_UNAVAILABLE');
      expect(packErr.message).toContain(store.describe(id));

      await mkdir(join(root, 'during'));
      const unpackErr = await rejection(unpack(unpackTask(store, id, join(root, 'during')), store));
      expect(unpackErr.code).toBe('GW_STORE_UNAVAILABLE');
      expect(unpackErr.message).toContain(store.describe(id));
      expect(await readdir(join(root, 'during'))).toEqual([]);
    } finally {
      await s3.restart();
    }

    // The failed pack replaced nothing: the object from before the outage is intact.
    await mkdir(join(root, 'after'));
    await unpack(unpackTask(store, id, join(root, 'after')), store);
    expect(await readFile(join(root, 'after', 'sessions/rollout.jsonl'), 'utf8')).toBe('before the outage\n');
  });
});

describe('S3 store misconfigured', () => {
  it('a missing bucket is a failed download, not a fresh workspace', async () => {
    const store = new S3ObjectStore({ bucket: 'no-such-bucket', endpoint: s3.endpoint, credentials: s3.credentials });
    const target = await tempDir('nobucket');
    const id = workspaceId();
    const err = await rejection(unpack(unpackTask(store, id, target), store));
    expect(err.code).toBe('GW_STORE_DOWNLOAD');
    expect(err.message).toContain(store.describe(id));
  });
});

describe('S3 store going away mid-download', () => {
  it('the object stream fails with GW_STORE_UNAVAILABLE', async () => {
    const store = new S3ObjectStore({ bucket: s3.bucket, prefix: 'cut', endpoint: s3.endpoint, credentials: s3.credentials });
    const id = workspaceId();
    await putObject(store, id, randomBytes(32 * MiB));
    const body = await store.get(id);
    expect(body).toBeDefined();
    const reading = (async () => {
      let seen = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        seen += chunk.length;
        // Stop the server once the transfer is under way; it cannot have sent
        // 32 MiB into socket buffers yet.
        if (seen >= MiB && s3.running) await s3.stop();
      }
      return seen;
    })();
    try {
      const err = await rejection(reading);
      expect(err.code).toBe('GW_STORE_UNAVAILABLE');
      expect(err.message).toContain(store.describe(id));
    } finally {
      await s3.restart();
    }
  });
});

// ---------------------------------------------------------------- worker entry

describe('archive worker task', () => {
  it('returns ok with the result for pack and unpack, reusing one store per spec', async () => {
    const root = await tempDir('worker');
    const spec = { kind: 'file' as const, dir: join(root, 'objects') };
    const home = join(root, 'home');
    await mkdir(home);
    await writeFile(join(home, 'history.jsonl'), 'x\n');
    const id = workspaceId();

    const packed = await run({ op: 'pack', store: spec, workspaceId: id, home, exclude: DEFAULT_ARCHIVE_EXCLUDES });
    expect(packed).toMatchObject({ ok: true, value: { key: `${id}.tar.gz`, files: 1 } });

    await mkdir(join(root, 'restored'));
    const restored = await run({ ...unpackTask(storeFromSpec(spec), id, join(root, 'restored')) });
    expect(restored).toMatchObject({ ok: true, value: { found: true, files: 1 } });
    expect(await readFile(join(root, 'restored', 'history.jsonl'), 'utf8')).toBe('x\n');
  });

  it('never throws: failures come back as { ok: false } with their stable code', async () => {
    const root = await tempDir('worker-err');
    const store = new FileObjectStore(join(root, 'objects'));
    const id = workspaceId();
    await putObject(store, id, Buffer.from('not an archive'));
    await mkdir(join(root, 'home'));

    const invalid = await run(unpackTask(store, id, join(root, 'home')));
    expect(invalid).toMatchObject({ ok: false, error: { code: 'GW_ARCHIVE_INVALID' } });
    expect(!invalid.ok && invalid.error.message).toContain(store.describe(id));

    const badId = await run({ ...unpackTask(store, id, join(root, 'home')), workspaceId: '../etc' });
    expect(badId).toMatchObject({ ok: false, error: { code: 'GW_BAD_WORKSPACE_ID' } });
  });
});
