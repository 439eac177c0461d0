/**
 * Every error the gateway raises on purpose carries a stable `code`. Callers
 * branch on `code`, never on message text. Errors lose their class when they
 * cross a thread, so they travel as `SerializedError` and are rebuilt with
 * `deserializeError` on arrival.
 */

export const ERROR_CODES = {
  GW_BAD_WORKSPACE_ID: 'workspace id must be 1-128 characters of [A-Za-z0-9._-], not "." or ".."',
  GW_BAD_CONFIG: 'invalid spawn configuration',
  GW_BAD_OPTIONS: 'invalid supervisor options',
  GW_BUILDER_FAILED: 'config builder failed',
  GW_CODEX_NOT_FOUND: 'codex binary not found or not executable',
  GW_SPAWN_FAILED: 'could not start codex app-server',
  GW_SPAWN_EXITED: 'codex app-server exited before it was ready',
  GW_SPAWN_TIMEOUT: 'codex app-server did not print a listen URL in time',
  GW_SPAWN_NOT_READY: 'codex app-server did not become ready in time',
  GW_SPAWN_USER: 'spawn.user cannot be used: the gateway is not root, or the user is unknown',
  GW_SANDBOX_UNAVAILABLE: 'the child sandbox (bubblewrap) cannot run on this system',
  GW_HOME_UNWRITABLE: 'cannot write the workspace home directory',
  GW_HOME_TOO_LARGE: 'workspace home is past the archive limits; it stays on disk and is not stored',
  /** Logged, not thrown: a home restored under another path than it was packed from. */
  GW_HOME_PATH_CHANGED: 'stored home was packed under another path; its earlier threads cannot be resumed here',
  GW_STORE_DOWNLOAD: 'download of workspace state failed',
  GW_STORE_UPLOAD: 'upload of workspace state failed',
  GW_STORE_UNAVAILABLE: 'object store unavailable',
  GW_ARCHIVE_INVALID: 'stored archive is corrupt or unsafe',
  GW_CRASH_LOOP: 'workspace keeps crashing; retry later',
  GW_CAPACITY: 'gateway is at its child process limit',
  GW_CLOSED: 'gateway is shutting down',
  GW_SHARD_FAILED: 'shard worker failed',
  GW_SETTINGS: 'invalid setting',
  GW_UNAUTHORIZED: 'missing or invalid bearer token',
  GW_AUTH_UNAVAILABLE: 'authentication service unavailable',
  GW_CHILD_EXITED: 'codex app-server exited',
  GW_CHILD_CONNECT: 'could not connect to codex app-server',
  GW_SLOW_CLIENT: 'client is not reading fast enough',
  GW_SLOW_CHILD: 'codex app-server is not reading fast enough',
  GW_BAD_REQUEST: 'malformed request',
  GW_INTERNAL: 'internal error',
  GW_NOT_FOUND: 'no such route or workspace',
  GW_FORBIDDEN: 'the token does not allow this request',
  GW_TOO_LARGE: 'message or request body too large',
  GW_UPSTREAM: 'upstream service failed',
  GW_STOPPED: 'workspace stopped',
  GW_RESTARTING: 'workspace restarting; reconnect',
  GW_TOO_MANY_CONNECTIONS: 'gateway is at its connection limit; retry later',
  GW_OVERLOADED: 'gateway is at its buffered-bytes limit; retry later',
  GW_OWNED_ELSEWHERE: 'workspace is running on another gateway of the cluster; retry later',
  GW_CLUSTER_UNAVAILABLE: 'cluster coordination (etcd) unavailable; retry later',
  GW_OWNERSHIP_LOST: 'gateway could not prove it still owns the workspace; reconnect',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface SerializedError {
  code: ErrorCode;
  message: string;
  stack?: string;
  details?: Record<string, unknown>;
  cause?: SerializedError;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message ?? ERROR_CODES[code], options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.details = options?.details;
  }

  /** `code: message` plus the cause chain, for logs and close reasons. */
  describe(): string {
    return `${this.code}: ${describeCause(this)}`;
  }
}

function describeCause(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  return cause === undefined ? err.message : `${err.message}: ${describeCause(cause)}`;
}

export function isGatewayError(err: unknown, code?: ErrorCode): err is GatewayError {
  return err instanceof GatewayError && (code === undefined || err.code === code);
}

/** Wraps any thrown value; a GatewayError passes through unchanged. */
export function toGatewayError(err: unknown, code: ErrorCode = 'GW_INTERNAL', message?: string): GatewayError {
  if (err instanceof GatewayError) return err;
  return new GatewayError(code, message ?? ERROR_CODES[code], { cause: err });
}

/** Causes kept when an error crosses a thread; deeper ones (or a cycle) are cut. */
const MAX_CAUSE_DEPTH = 8;

/**
 * The whole cause chain travels, whatever its links are: a GatewayError
 * keeps its code, any other Error arrives as GW_INTERNAL with its message
 * and its system code (`details.errno`), and its own cause goes on after it.
 */
export function serializeError(err: unknown, depth = 0): SerializedError {
  let out: SerializedError;
  if (err instanceof GatewayError) {
    out = { code: err.code, message: err.message };
    if (err.details !== undefined) out.details = err.details;
  } else if (err instanceof Error) {
    out = { code: 'GW_INTERNAL', message: err.message };
    const sysCode = (err as NodeJS.ErrnoException).code;
    if (typeof sysCode === 'string') out.details = { errno: sysCode };
  } else {
    return { code: 'GW_INTERNAL', message: String(err) };
  }
  if (err.stack !== undefined) out.stack = err.stack;
  const cause = (err as { cause?: unknown }).cause;
  if (cause !== undefined && depth < MAX_CAUSE_DEPTH) out.cause = serializeError(cause, depth + 1);
  return out;
}

export function deserializeError(s: SerializedError): GatewayError {
  const cause = s.cause === undefined ? undefined : deserializeError(s.cause);
  const opts: { cause?: unknown; details?: Record<string, unknown> } = {};
  if (cause !== undefined) opts.cause = cause;
  if (s.details !== undefined) opts.details = s.details;
  const err = new GatewayError(s.code in ERROR_CODES ? s.code : 'GW_INTERNAL', s.message, opts);
  if (s.stack !== undefined) err.stack = s.stack;
  return err;
}

/** `err` as an Error (a thrown non-Error becomes one with its text). */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
