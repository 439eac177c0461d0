/**
 * Packs a CODEX_HOME into its store object, streaming: the archive is never
 * held whole in memory or spooled to a temp file. Compressed with BlockGzip
 * (block-gzip.ts). The home is checked as it is packed against the limits
 * unpack will apply (archive-unpack.ts), so nothing is stored that could not
 * be restored.
 */
import { Stats } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { Pack } from 'tar';
import type { PackResult, PackTask, UnpackLimits } from '../shared/archive-protocol.js';
import { GatewayError, asError, isGatewayError, toGatewayError } from '../shared/errors.js';
import type { ObjectStore } from '../shared/stores/object-store.js';
import { exclusions, relativePath } from './archive-paths.js';
import { BlockGzip } from './block-gzip.js';

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

/** A linkCache that never remembers, so tar never turns a second name into a hardlink entry. */
class ForgetfulMap<K, V> extends Map<K, V> {
  override set(): this {
    return this;
  }
}
