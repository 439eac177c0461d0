/**
 * Tasks run by the archive pool (piscina, src/workers/archive-worker.ts).
 * Packing and unpacking a CODEX_HOME is CPU and disk work that must never run
 * on the front thread or on a shard's event loop.
 *
 * Tasks never throw across the thread boundary: a failure comes back as
 * `{ ok: false, error }` so its stable code survives (see errors.ts).
 */
import type { SerializedError } from './errors.js';
import type { StoreSpec } from './store-spec.js';

export interface UnpackLimits {
  /** Total bytes after decompression. Past it: GW_ARCHIVE_INVALID (decompression bomb). */
  maxBytes: number;
  /** Number of entries in the archive. */
  maxEntries: number;
  /** Size of any one file. */
  maxFileBytes: number;
}

export const DEFAULT_UNPACK_LIMITS: UnpackLimits = {
  maxBytes: 8 * 1024 ** 3,
  maxEntries: 1_000_000,
  maxFileBytes: 4 * 1024 ** 3,
};

/**
 * Paths (relative to CODEX_HOME, `/`-separated) that never enter an archive
 * and are never extracted from one. `config.toml` and `auth.json` hold
 * secrets; `tmp` and `.tmp` are scratch space codex rebuilds;
 * `.cxg-home.json` describes one home on one disk (its generation travels in
 * the object's metadata); `.cxg-child.json` is its older form.
 */
export const DEFAULT_ARCHIVE_EXCLUDES: readonly string[] = ['config.toml', 'auth.json', 'tmp', '.tmp', '.cxg-home.json', '.cxg-child.json'];

export interface PackTask {
  op: 'pack';
  store: StoreSpec;
  workspaceId: string;
  /** Absolute path of the CODEX_HOME to archive. Left untouched. */
  home: string;
  exclude: readonly string[];
  /** The home's generation, stored with the object so recovery can tell older homes from newer ones. The home's path is stored too. */
  generation?: string;
  /**
   * The limits unpack will apply: a home past them is never packed
   * (GW_HOME_TOO_LARGE), since its object could not be restored.
   */
  limits?: UnpackLimits;
  /** With [cluster]: the immutable snapshot to write, `<ws>/<snapshot>.tar.gz` (cluster.ts); else the workspace's one object. */
  snapshot?: string;
}

/** What the store holds for a workspace, without downloading it. */
export interface HeadTask {
  op: 'head';
  store: StoreSpec;
  workspaceId: string;
  snapshot?: string;
}

/** With [cluster]: removes snapshots of a workspace that are no longer kept (cluster.ts). */
export interface DropTask {
  op: 'drop';
  store: StoreSpec;
  workspaceId: string;
  snapshots: string[];
}

export interface UnpackTask {
  op: 'unpack';
  store: StoreSpec;
  workspaceId: string;
  /** Absolute path of an existing, empty directory to extract into. */
  home: string;
  exclude: readonly string[];
  limits: UnpackLimits;
  /** With [cluster]: the snapshot to read (the one etcd names current); else the workspace's one object. */
  snapshot?: string;
}

export type ArchiveTask = PackTask | UnpackTask | HeadTask | DropTask;

export interface PackResult {
  /** Object key (or file name) written. */
  key: string;
  /** Compressed bytes stored. */
  bytes: number;
  /** Regular files archived. */
  files: number;
  /** Their bytes before compression (what the home holds on disk, near enough). */
  fileBytes: number;
  durationMs: number;
}

export interface UnpackResult {
  key: string;
  /** False when the store has no object for the workspace: a fresh workspace. */
  found: boolean;
  /** Compressed bytes read. */
  bytes: number;
  files: number;
  durationMs: number;
  /** Generation the object was packed from, when it was recorded. */
  generation: string | undefined;
  /** CODEX_HOME the object was packed from, when it was recorded. */
  homePath: string | undefined;
}

export interface HeadResult {
  key: string;
  found: boolean;
  bytes: number;
  /** Generation of the home the object was packed from, when it was recorded. */
  generation: string | undefined;
  durationMs: number;
}

export interface DropResult {
  dropped: number;
}

export type ArchiveValue = PackResult | UnpackResult | HeadResult | DropResult;

export type ArchiveOutcome<T> = { ok: true; value: T } | { ok: false; error: SerializedError };
