/**
 * An object store in a local directory: `<dir>/<workspaceId>.tar.gz`, with
 * what its put recorded in `<dir>/<workspaceId>.meta.json`. The
 * embedded default, and the store tests use when the S3 protocol is not the
 * subject.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { GatewayError, toGatewayError } from '../errors.js';
import type { FileStoreSpec } from '../store-spec.js';
import { objectName } from '../store-spec.js';
import { validateWorkspaceId } from '../workspace-id.js';
import type { ObjectHead, ObjectMeta, ObjectStore } from './object-store.js';

export class FileObjectStore implements ObjectStore {
  readonly spec: FileStoreSpec;
  readonly dir: string;

  constructor(dir: string) {
    this.dir = resolve(dir);
    this.spec = { kind: 'file', dir: this.dir };
  }

  key(workspaceId: string): string {
    return objectName(validateWorkspaceId(workspaceId));
  }

  describe(workspaceId: string): string {
    return pathToFileURL(this.path(workspaceId)).href;
  }

  async get(workspaceId: string): Promise<Readable | undefined> {
    return (await this.open(workspaceId))?.body;
  }

  async open(workspaceId: string): Promise<{ body: Readable; meta: ObjectMeta } | undefined> {
    const path = this.path(workspaceId);
    // The metadata first: a put renames the object before its metadata, so
    // metadata read before the object is never newer than the bytes.
    const meta = await this.readMeta(workspaceId);
    try {
      // Reading through an open descriptor keeps the bytes of the object as it
      // was when opened, even if a put renames a newer one over it meanwhile.
      const handle = await open(path, 'r');
      return { body: handle.createReadStream(), meta };
    } catch (err) {
      if (errno(err) === 'ENOENT') return undefined;
      throw new GatewayError('GW_STORE_DOWNLOAD', `download ${this.describe(workspaceId)}`, { cause: err });
    }
  }

  /**
   * Writes a temp file in the same directory (so the rename cannot cross file
   * systems), flushes it to disk, then renames it over the object. Temp names
   * end in `.tmp`, never in `.tar.gz`, so they can never be taken for objects.
   * The metadata goes to `<id>.meta.json` after the object: a crash in
   * between leaves an older generation recorded, never a newer one.
   */
  async put(workspaceId: string, body: Readable, meta: ObjectMeta = {}): Promise<{ bytes: number }> {
    const target = this.path(workspaceId);
    const temp = join(this.dir, `.${objectName(workspaceId)}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const out = createWriteStream(temp, { flags: 'wx', mode: 0o600, flush: true });
      await pipeline(body, out);
      await rename(temp, target);
      if (meta.generation !== undefined || meta.homePath !== undefined) {
        const metaTemp = `${temp}.meta`;
        await writeFile(metaTemp, JSON.stringify(meta), { flag: 'wx', mode: 0o600 });
        await rename(metaTemp, this.metaPath(workspaceId));
      } else {
        await rm(this.metaPath(workspaceId), { force: true });
      }
      // Objects written before metadata files were JSON recorded their generation alone.
      await rm(this.legacyGenerationPath(workspaceId), { force: true });
      await syncDirectory(this.dir);
      return { bytes: out.bytesWritten };
    } catch (err) {
      body.destroy();
      await rm(temp, { force: true });
      await rm(`${temp}.meta`, { force: true });
      throw toGatewayError(err, 'GW_STORE_UPLOAD', `upload ${this.describe(workspaceId)}`);
    }
  }

  async head(workspaceId: string): Promise<ObjectHead | undefined> {
    try {
      const meta = await this.readMeta(workspaceId);
      const info = await stat(this.path(workspaceId));
      return meta.generation === undefined ? { bytes: info.size, modified: info.mtime } : { bytes: info.size, modified: info.mtime, generation: meta.generation };
    } catch (err) {
      if (errno(err) === 'ENOENT') return undefined;
      throw new GatewayError('GW_STORE_DOWNLOAD', `stat ${this.describe(workspaceId)}`, { cause: err });
    }
  }

  /** What the last put recorded: `<id>.meta.json`, or the bare generation of an older `<id>.generation`. */
  private async readMeta(workspaceId: string): Promise<ObjectMeta> {
    const text = await readFile(this.metaPath(workspaceId), 'utf8').catch(() => undefined);
    if (text !== undefined) {
      try {
        const m = JSON.parse(text) as Record<string, unknown>;
        return {
          ...(typeof m.generation === 'string' && m.generation !== '' ? { generation: m.generation } : {}),
          ...(typeof m.homePath === 'string' && m.homePath !== '' ? { homePath: m.homePath } : {}),
        };
      } catch {
        return {};
      }
    }
    const legacy = await readFile(this.legacyGenerationPath(workspaceId), 'utf8').then(
      (g) => g.trim(),
      () => '',
    );
    return legacy === '' ? {} : { generation: legacy };
  }

  async delete(workspaceId: string): Promise<void> {
    try {
      await rm(this.path(workspaceId), { force: true });
      await rm(this.metaPath(workspaceId), { force: true });
      await rm(this.legacyGenerationPath(workspaceId), { force: true });
    } catch (err) {
      throw new GatewayError('GW_STORE_UPLOAD', `delete ${this.describe(workspaceId)}`, { cause: err });
    }
  }

  private path(workspaceId: string): string {
    return join(this.dir, this.key(workspaceId));
  }

  private metaPath(workspaceId: string): string {
    return join(this.dir, `${validateWorkspaceId(workspaceId)}.meta.json`);
  }

  private legacyGenerationPath(workspaceId: string): string {
    return join(this.dir, `${validateWorkspaceId(workspaceId)}.generation`);
  }
}

/** Makes a completed rename durable: the new directory entry reaches the disk. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}
