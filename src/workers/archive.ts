/**
 * Packs a CODEX_HOME into its store object and unpacks it again, streaming:
 * the archive is never held whole in memory or spooled to a temp file.
 * Runs in the archive pool (archive-worker.ts): tar and gzip are CPU work
 * that must stay off every event loop that serves frames. Packing
 * compresses with BlockGzip (block-gzip.ts); unpacking reads any gzip.
 *
 * Unpack treats every object as hostile. Nothing is written outside the
 * target directory: only regular files and directories are extracted, paths
 * are checked before tar sees them, limits on entries and sizes are enforced
 * on headers before any byte of a file is written, and the decompressed total
 * is counted as it streams, so a decompression bomb stops at the limit.
 */
import { Stats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { Pack, ReadEntry, Unpack } from 'tar';
import type { PackResult, PackTask, UnpackLimits, UnpackResult, UnpackTask } from '../shared/archive-protocol.js';
import { GatewayError, isGatewayError, toGatewayError } from '../shared/errors.js';
import type { ObjectStore } from '../shared/stores/object-store.js';
import { BlockGzip } from './block-gzip.js';

/** How long a failed unpack waits for tar to close the files it has open before giving up on them. */
const SETTLE_TIMEOUT_MS = 10_000;

export async function pack(task: PackTask, store: ObjectStore): Promise<PackResult> {
  const started = performance.now();
  const object = store.describe(task.workspaceId);
  const what = `pack ${task.home} into ${object}`;
  const home = await lstat(task.home).catch((err: unknown) => {
    throw new GatewayError('GW_STORE_UPLOAD', what, { cause: err });
  });
  if (!home.isDirectory()) throw new GatewayError('GW_STORE_UPLOAD', `${what}: not a directory`);

  const excluded = exclusions(task.exclude);
  let files = 0;
  let fileBytes = 0;
  let abandoned = false;
  let tarError: unknown;
  const within = task.limits === undefined ? undefined : packLimits(task.limits, what);
  const archive = new Pack({
    cwd: task.home,
    // No uid/gid/uname/atime/ctime, modes normalised to a 022 umask.
    portable: true,
    strict: true,
    // A file with several names in the home is archived once per name, as a
    // regular file: unpack refuses hardlink entries, so tar must not emit one.
    linkCache: new ForgetfulMap(),
    // lstat (tar does not follow symlinks), so symlinks, sockets, fifos and
    // devices are skipped here and never reach the archive.
    filter: (path, stat) => {
      if (abandoned || !(stat instanceof Stats) || !(stat.isFile() || stat.isDirectory())) return false;
      const rel = relativePath(path);
      if (excluded(rel)) return false;
      const problem = within?.(rel, stat);
      if (problem !== undefined) {
        // The put fails with it (see below); the previous object stays as it was.
        tarError ??= problem;
        abandoned = true;
        archive.emit('error', problem);
        return false;
      }
      return true;
    },
    onWriteEntry: (entry) => {
      if (entry.type === 'File') {
        files += 1;
        fileBytes += entry.stat?.size ?? 0;
      }
    },
  });
  const tarStream = readableOf(archive, (err) => {
    tarError ??= err;
  });
  const body = new BlockGzip();
  tarStream.on('error', (err) => body.destroy(err));
  // A store destroys the body when a put fails; pipe() would only pause tar,
  // so the tar stream goes with it and tar can run dry (see the catch below).
  body.once('close', () => tarStream.destroy());
  tarStream.pipe(body);
  // '.' rather than the top-level names: the root entry keeps an empty home
  // a valid archive, and its mode travels with it.
  archive.end('.');

  try {
    const meta = { homePath: task.home, ...(task.generation === undefined ? {} : { generation: task.generation }) };
    const { bytes } = await store.put(task.workspaceId, body, meta);
    return { key: store.key(task.workspaceId), bytes, files, fileBytes, durationMs: performance.now() - started };
  } catch (err) {
    // Let tar run dry instead of leaving it paused: it finishes only the
    // entries it has already opened (the filter now refuses the rest) and
    // closes their file descriptors.
    abandoned = true;
    archive.resume();
    if (isGatewayError(tarError)) throw tarError;
    if (tarError !== undefined) throw new GatewayError('GW_STORE_UPLOAD', what, { cause: tarError });
    throw toGatewayError(err, 'GW_STORE_UPLOAD', `upload ${object}`);
  }
}

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
 * The checks unpack makes on an archive, made on the home as it is packed:
 * entries, the size of each file, and the archive's size before compression
 * (each entry's 512-byte header, a long name's extra header, and its data
 * padded to 512 bytes). Returns the problem of the first entry past them.
 */
function packLimits(limits: UnpackLimits, what: string): (rel: string, stat: Stats) => GatewayError | undefined {
  let entries = 0;
  let total = 1024; // the two zero blocks that end an archive
  return (rel, stat) => {
    entries += 1;
    total += 512 + (rel.length > 99 ? 1024 + Math.ceil(rel.length / 512) * 512 : 0);
    if (stat.isFile()) {
      if (stat.size > limits.maxFileBytes) return tooLarge(what, `file ${JSON.stringify(rel)} is ${stat.size} bytes, more than ${limits.maxFileBytes}`);
      total += Math.ceil(stat.size / 512) * 512;
    }
    if (entries > limits.maxEntries) return tooLarge(what, `more than ${limits.maxEntries} entries`);
    if (total > limits.maxBytes) return tooLarge(what, `more than ${limits.maxBytes} bytes before compression`);
    return undefined;
  };
}

function tooLarge(what: string, problem: string): GatewayError {
  return new GatewayError('GW_HOME_TOO_LARGE', `${what}: ${problem}; it could not be restored, so it is not stored`);
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
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.#whenFinished(),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, SETTLE_TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
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

/**
 * Node Readable over tar's Minipass output. Unlike Readable.from, destroying
 * it leaves the Pack to us, so a failed put can drain the Pack (see pack()).
 */
function readableOf(archive: Pack, onError: (err: unknown) => void): Readable {
  const out = new Readable({
    read() {
      archive.resume();
    },
  });
  archive.on('data', (chunk: Buffer) => {
    if (!out.destroyed && !out.push(chunk)) archive.pause();
  });
  archive.on('end', () => {
    if (!out.destroyed) out.push(null);
  });
  archive.on('error', (err: unknown) => {
    onError(err);
    out.destroy(asError(err));
  });
  return out;
}

/**
 * Matches paths relative to the home against exclude entries: an entry
 * excludes that exact path and everything under it. `tmp` excludes `tmp` and
 * `tmp/x`, not `sessions/tmp`.
 */
function exclusions(exclude: readonly string[]): (rel: string) => boolean {
  const roots = exclude.map(relativePath).filter((e) => e !== '');
  return (rel) => roots.some((root) => rel === root || rel.startsWith(`${root}/`));
}

/** `./a//b/` → `a/b`; the home itself is ''. */
function relativePath(path: string): string {
  return path
    .split('/')
    .filter((part) => part !== '' && part !== '.')
    .join('/');
}

/** A linkCache that never remembers, so tar never turns a second name into a hardlink entry. */
class ForgetfulMap<K, V> extends Map<K, V> {
  override set(): this {
    return this;
  }
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
