/**
 * Where a workspace's CODEX_HOME lives between runs: one `<workspaceId>.tar.gz`
 * object per workspace. Stores run inside the archive pool; other threads only
 * ever hold the cloneable StoreSpec and rebuild a store from it (from-spec.ts).
 */
import type { Readable } from 'node:stream';
import type { StoreSpec } from '../store-spec.js';

export interface ObjectHead {
  /** Size of the stored object in bytes. */
  bytes: number;
  modified: Date;
  /** Generation of the home it was packed from, when the put recorded one. */
  generation?: string;
}

/** Stored along with an object. */
export interface ObjectMeta {
  /** Generation of the home it was packed from. */
  generation?: string;
  /** Absolute path of the CODEX_HOME it was packed from (codex's state names paths under it). */
  homePath?: string;
}

/**
 * Errors: every method rejects with a GatewayError whose message names the
 * object (see `describe`): GW_STORE_UNAVAILABLE when the store cannot be
 * reached, GW_STORE_DOWNLOAD for failed reads (`get`, `head`), GW_STORE_UPLOAD
 * for failed writes (`put`, `delete`). The stream `get` returns emits
 * GW_STORE_UNAVAILABLE when the store goes away mid-read; any other error it
 * emits is a failed download.
 */
export interface ObjectStore {
  readonly spec: StoreSpec;
  /** Key of the workspace's object inside the store: `<prefix>/<id>.tar.gz` for S3, the file name for a directory. */
  key(workspaceId: string): string;
  /** A URL naming the object for messages: `file:///dir/ws.tar.gz`, `s3://bucket/prefix/ws.tar.gz`. */
  describe(workspaceId: string): string;
  /** The object's bytes, or undefined when there is no object. */
  get(workspaceId: string): Promise<Readable | undefined>;
  /**
   * The object's bytes and what its put recorded, or undefined when there is
   * no object. The metadata is never newer than the bytes: read with an
   * object a concurrent put replaces, it may name an older generation, so a
   * home restored from it is at worst taken for older than it is.
   */
  open(workspaceId: string): Promise<{ body: Readable; meta: ObjectMeta } | undefined>;
  /**
   * Stores `body` as the workspace's object. Atomic: the object becomes
   * visible only when complete, and a failed put (including `body` emitting
   * an error) leaves any previous object intact. `body` is consumed, and
   * destroyed when the put fails.
   */
  put(workspaceId: string, body: Readable, meta?: ObjectMeta): Promise<{ bytes: number }>;
  head(workspaceId: string): Promise<ObjectHead | undefined>;
  /** Removes the object; removing a missing object succeeds. */
  delete(workspaceId: string): Promise<void>;
}
