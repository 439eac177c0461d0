/**
 * Unpacks a store object into an empty directory, streaming. Every object is
 * treated as hostile. Nothing is written outside the target directory: only
 * regular files and directories are extracted, paths are checked before tar
 * sees them, limits on entries and sizes are enforced on headers before any
 * byte of a file is written, and the decompressed total is counted as it
 * streams, so a decompression bomb stops at the limit.
 */
import { lstat, readdir } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { Transform, Writable } from 'node:stream';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { ReadEntry, Unpack } from 'tar';
import type { UnpackLimits, UnpackResult, UnpackTask } from '../shared/archive-protocol.js';
import { within } from '../shared/concurrency.js';
import { GatewayError, asError, isGatewayError, toGatewayError } from '../shared/errors.js';
import type { ObjectStore } from '../shared/stores/object-store.js';
import { exclusions, relativePath } from './archive-paths.js';

/** How long a failed unpack waits for tar to close the files it has open before giving up on them. */
const SETTLE_TIMEOUT_MS = 10_000;

export async function unpack(task: UnpackTask, store: ObjectStore): Promise<UnpackResult> {
  const started = performance.now();
  const object = store.describe(task.workspaceId);
  const key = store.key(task.workspaceId);
  await assertEmptyDirectory(task.home);

  let opened: Awaited<ReturnType<ObjectStore['open']>>;
  try {
    opened = await store.open(task.workspaceId);
  } catch (err) {
    throw toGatewayError(err, 'GW_STORE_DOWNLOAD', `download ${object}`);
  }
  if (opened === undefined) return { key, found: false, bytes: 0, files: 0, durationMs: performance.now() - started, generation: undefined, homePath: undefined };
  const source = opened.body;

  const read = { bytes: 0 };
  const extraction = new GuardedExtraction(task, object);
  try {
    await pipeline(
      readStore(source, read, object),
      createGunzip(),
      limitDecompressed(task.limits.maxBytes, object),
      extraction.sink,
    );
  } catch (err) {
    await extraction.settle();
    throw unpackError(err, object, task.home);
  }
  return { key, found: true, bytes: read.bytes, files: extraction.files, durationMs: performance.now() - started, generation: opened.meta.generation, homePath: opened.meta.homePath };
}

/**
 * node-tar's Unpack behind a Writable, with every entry checked on its header
 * before tar may act on it. A check that fails marks the whole extraction
 * failed; from then on every entry is skipped.
 */
class GuardedExtraction {
  readonly sink: Writable;
  files = 0;
  #entries = 0;
  #failure: unknown;
  #finished = false;
  readonly #unpack: Unpack;
  readonly #onFinish: (() => void)[] = [];
  /** Entries the filter has seen; any other entry tar skips is one it did not understand. */
  readonly #checked = new WeakSet<ReadEntry>();

  constructor(task: UnpackTask, object: string) {
    const excluded = exclusions(task.exclude);
    this.#unpack = new Unpack({
      cwd: task.home,
      strict: true,
      preserveOwner: false,
      preservePaths: false,
      // Sniffing is off for everything but gzip, which tar cannot be told to
      // skip; limitDecompressed refuses a gzip inside the gzip instead.
      zstd: false,
      brotli: false,
      // Directories tar creates implicitly; entries get their mode masked below.
      dmode: 0o755,
      fmode: 0o644,
      filter: (_path, entry) => {
        if (!(entry instanceof ReadEntry)) return false;
        this.#checked.add(entry);
        if (this.#failure !== undefined) return false;
        this.#entries += 1;
        const rel = relativePath(entry.path);
        const problem = entryProblem(entry, rel, this.#entries, task.limits);
        if (problem !== undefined) {
          this.#fail(new GatewayError('GW_ARCHIVE_INVALID', `invalid archive ${object}: ${problem}`));
          return false;
        }
        if (excluded(rel)) return false;
        // Never setuid/setgid/sticky, never group- or world-writable, always
        // usable by the owner (the gateway runs as root; ownership is not
        // restored either: preserveOwner false).
        const owner = entry.type === 'Directory' ? 0o700 : 0o600;
        entry.mode = ((entry.mode ?? owner) & 0o755) | owner;
        if (entry.type !== 'Directory') this.files += 1;
        return true;
      },
    });
    // tar skips entries of types it does not know (sparse files, volume
    // headers, ...) and oversized pax headers without asking the filter. We
    // refuse them: an archive we wrote never holds one.
    this.#unpack.on('ignoredEntry', (entry: ReadEntry) => {
      if (this.#checked.has(entry)) return;
      const what = entry.meta ? `oversized ${entry.type} header` : `${entry.type} entry`;
      this.#fail(new GatewayError('GW_ARCHIVE_INVALID', `invalid archive ${object}: ${what} ${JSON.stringify(entry.path)} is not allowed`));
    });
    this.#unpack.on('error', (err: unknown) => this.#fail(err));
    this.#unpack.on('finish', () => {
      this.#finished = true;
      for (const resolve of this.#onFinish.splice(0)) resolve();
    });

    this.sink = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        const more = this.#feed(() => this.#unpack.write(chunk));
        if (this.#failure !== undefined) done(asError(this.#failure));
        else if (more) done();
        else this.#unpack.once('drain', () => done());
      },
      final: (done) => {
        this.#feed(() => this.#unpack.end());
        void this.#whenFinished().then(() => done(this.#failure === undefined ? null : asError(this.#failure)));
      },
    });
  }

  /**
   * After a failure: ends the parse (everything still buffered is skipped by
   * the filter) and waits until tar has closed the files it had open, so no
   * write lands in the target after unpack() has returned.
   */
  async settle(): Promise<void> {
    this.#failure ??= new Error('extraction stopped');
    if (this.#finished) return;
    this.#feed(() => this.#unpack.end());
    await within(this.#whenFinished(), SETTLE_TIMEOUT_MS);
  }

  /** tar parses synchronously inside write() and end(); whatever it throws on hostile input is a failure of the archive. */
  #feed<T>(step: () => T): T | false {
    try {
      return step();
    } catch (err) {
      this.#fail(err);
      return false;
    }
  }

  #fail(err: unknown): void {
    this.#failure ??= err;
    this.sink.destroy(asError(this.#failure));
  }

  #whenFinished(): Promise<void> {
    if (this.#finished) return Promise.resolve();
    return new Promise((resolve) => this.#onFinish.push(resolve));
  }
}

/** Why an entry may not be extracted, or undefined when it may. */
function entryProblem(entry: ReadEntry, rel: string, count: number, limits: UnpackLimits): string | undefined {
  const shown = JSON.stringify(entry.path);
  if (count > limits.maxEntries) return `more than ${limits.maxEntries} entries`;
  if (entry.path.startsWith('/')) return `absolute path ${shown}`;
  if (entry.path.split('/').includes('..')) return `path ${shown} contains '..'`;
  switch (entry.type) {
    case 'Directory':
      return undefined;
    case 'File':
    case 'OldFile':
    case 'ContiguousFile':
      if (rel === '') return `file entry ${shown} would replace the target directory`;
      if (entry.size > limits.maxFileBytes) return `file ${shown} is ${entry.size} bytes, more than ${limits.maxFileBytes}`;
      return undefined;
    default:
      return `${entry.type} entry ${shown}: only regular files and directories are allowed`;
  }
}

/** Counts the compressed bytes, and marks every failure of the source as a store failure. */
async function* readStore(source: Readable, read: { bytes: number }, object: string): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      read.bytes += chunk.length;
      yield chunk;
    }
  } catch (err) {
    throw toGatewayError(err, 'GW_STORE_DOWNLOAD', `download ${object}`);
  }
}

/**
 * Counts gunzip's output and fails past maxBytes. gunzip honours
 * backpressure, so it stops inflating as soon as this stage fails: a bomb
 * costs at most maxBytes plus one buffer. Also refuses a second gzip layer,
 * which tar would inflate on its own, past this count.
 */
function limitDecompressed(maxBytes: number, object: string): Transform {
  let total = 0;
  let head = Buffer.alloc(0);
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      total += chunk.length;
      if (total > maxBytes) {
        done(new GatewayError('GW_ARCHIVE_INVALID', `invalid archive ${object}: more than ${maxBytes} bytes after decompression`));
        return;
      }
      if (head.length < 2) {
        head = Buffer.concat([head, chunk.subarray(0, 2 - head.length)]);
        if (head.length === 2 && head[0] === 0x1f && head[1] === 0x8b) {
          done(new GatewayError('GW_ARCHIVE_INVALID', `invalid archive ${object}: gzip inside gzip`));
          return;
        }
      }
      done(null, chunk);
    },
  });
}

/** Failures of the target file system, as opposed to failures caused by the archive's content. */
const LOCAL_FAILURES = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EIO', 'EMFILE', 'ENFILE', 'EACCES']);

function unpackError(err: unknown, object: string, home: string): GatewayError {
  if (isGatewayError(err)) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && LOCAL_FAILURES.has(code)) {
    return new GatewayError('GW_HOME_UNWRITABLE', `extract ${object} into ${home}`, { cause: err });
  }
  const reason = err instanceof Error ? err.message : String(err);
  return new GatewayError('GW_ARCHIVE_INVALID', `invalid archive ${object}: ${reason}`, { cause: err });
}

async function assertEmptyDirectory(dir: string): Promise<void> {
  let names: string[];
  try {
    const info = await lstat(dir);
    if (!info.isDirectory()) throw new Error('not a directory');
    names = await readdir(dir);
  } catch (err) {
    throw new GatewayError('GW_HOME_UNWRITABLE', `unpack target ${dir}`, { cause: err });
  }
  // An empty target means no symlink tar could be tricked into following and
  // nothing an archive could clobber.
  if (names.length > 0) throw new GatewayError('GW_HOME_UNWRITABLE', `unpack target ${dir} is not empty`);
}
