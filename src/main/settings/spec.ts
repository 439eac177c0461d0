/**
 * Every gateway setting, described once. Parsing, validation, the `Settings`
 * type, `serve --help` and `config check` output are all derived from this
 * table; adding a row is all it takes to add a setting.
 *
 * Names are mechanical: the environment variable of `store.s3.force_path_style`
 * is CXG_STORE_S3_FORCE_PATH_STYLE, its TOML home is `[store.s3]
 * force_path_style`, and its field is `settings.store.s3.forcePathStyle`.
 * Durations become `…Ms` fields (milliseconds) and sizes `…Bytes` fields.
 */
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { DEFAULT_ENV_ALLOWLIST } from '../../shared/child-env.js';
import { RESERVED_PROVIDER_IDS } from '../../shared/codex-config.js';
import type { Kind, KindValue, SettingValue } from './kinds.js';
import { JWT_ALGORITHMS } from '../auth/jwks.js';
import { isStoreUrl } from './store-url.js';

/** What computed defaults may depend on (resolved before any of them). */
export interface DefaultInputs {
  cwd: string;
  dataDir: string;
  listenPort: number;
  cores: number;
  /** Memory the process may use: the cgroup limit when one is set, else the host's. */
  memoryBytes: number;
}

export interface SettingSpec {
  /** Dotted, snake_case: `auth.jwt.secret`. */
  readonly key: string;
  readonly kind: Kind;
  /** TOML-shaped (durations in ms, sizes in bytes). No default: the setting is optional. */
  readonly default?: SettingValue | ((d: DefaultInputs) => SettingValue);
  /** How help shows a computed default. */
  readonly defaultText?: string;
  readonly flag?: `--${string}`;
  /** Masked in output and never echoed in error messages. */
  readonly secret?: boolean;
  readonly description: string;
}

const PORT = { type: 'int', min: 0, max: 65535 } as const;
const COUNT = { type: 'int', min: 1, max: Number.MAX_SAFE_INTEGER } as const;
const HTTP_URL = { type: 'url', protocols: ['http:', 'https:'] } as const;
// 24 days: setTimeout treats anything above 2^31-1 ms as 1 ms.
const MAX_TIMER_MS = 24 * 24 * 3_600_000;
const TIMEOUT = { type: 'duration', min: 1, max: MAX_TIMER_MS } as const;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const ENV_VAR = { type: 'string', pattern: ENV_NAME, expected: 'an environment variable name like OPENAI_API_KEY' } as const;
const KiB = 1024;
const JWT_ALGORITHM = new RegExp(`^(?:${JWT_ALGORITHMS.join('|')})$`);
// codex refuses a [model_providers.X] table for its built-in ids (see RESERVED_PROVIDER_IDS).
const RESERVED = [...RESERVED_PROVIDER_IDS];
const PROVIDER_ID = {
  type: 'string',
  pattern: new RegExp(`^(?!(?:${RESERVED.join('|')})$)[A-Za-z0-9_-]+$`),
  expected: `a provider id of [A-Za-z0-9_-] other than codex's built-in ${RESERVED.slice(0, -1).join(', ')} and ${RESERVED.at(-1) ?? ''}, e.g. openai-api`,
} as const;

export const SETTINGS = [
  { key: 'data.dir', kind: { type: 'path' }, default: './data', flag: '--data-dir',
    description: 'Directory for the gateway\'s own state (homes, file store, generated JWT secret); relative to the working directory.' },
  { key: 'listen.host', kind: { type: 'string' }, default: '127.0.0.1', flag: '--host',
    description: 'Address of the public WebSocket endpoint.' },
  { key: 'listen.port', kind: PORT, default: 8080, flag: '--port',
    description: 'Port of the public WebSocket endpoint (0 picks a free one).' },
  { key: 'internal.host', kind: { type: 'string' }, default: '127.0.0.1',
    description: 'Address of the internal endpoint (/internal/*) that children call back over loopback.' },
  { key: 'internal.port', kind: PORT, default: (d) => (d.listenPort === 0 ? 0 : d.listenPort + 1), defaultText: 'listen.port + 1', flag: '--internal-port',
    description: 'Port of the internal endpoint.' },
  { key: 'internal.upstream_url', kind: HTTP_URL,
    description: 'When set, /internal/connected adds what GET <url>/connected?workspace_id=… returns.' },
  { key: 'codex.bin', kind: { type: 'path', command: true }, defaultText: 'the native binary of the installed @openai/codex', flag: '--codex-bin',
    description: 'The codex binary children run.' },
  { key: 'homes.root', kind: { type: 'path' }, default: (d) => path.join(d.dataDir, 'homes'), defaultText: '<data.dir>/homes',
    description: 'Directory under which each workspace has its CODEX_HOME, at <homes.root>/<workspace>/codex-home on every start. Every replica sharing a store must use the same path.' },
  { key: 'homes.cache', kind: { type: 'bool' }, default: true,
    description: 'Keep a stored home on disk after its upload, so the next start skips the download while it is still the stored generation.' },
  { key: 'homes.cache_max', kind: { type: 'size', min: 0, max: 2 ** 50 }, default: 10 * 1024 * 1024 * KiB,
    description: 'Disk budget of the kept homes (over all shards); past it the least recently used are removed.' },
  { key: 'store.url', kind: { type: 'url', protocols: ['file:', 's3:'], check: isStoreUrl, expected: 'file:///absolute/dir or s3://bucket[/prefix]' },
    default: (d) => pathToFileURL(path.join(d.dataDir, 'store')).href,
    defaultText: 'file://<data.dir>/store', flag: '--store-url',
    description: 'Where workspace state is kept between runs.' },
  { key: 'store.s3.endpoint', kind: HTTP_URL,
    description: 'S3 endpoint for S3-compatible stores (default: AWS).' },
  { key: 'store.s3.region', kind: { type: 'string' }, default: 'us-east-1',
    description: 'S3 region.' },
  { key: 'store.s3.force_path_style', kind: { type: 'bool' }, default: false,
    description: 'Address buckets as <endpoint>/<bucket> instead of <bucket>.<endpoint>.' },
  { key: 'auth.jwt.secret', kind: { type: 'string', minLength: 32 }, secret: true,
    description: 'HS256 key for client bearer tokens (at least 32 characters).' },
  { key: 'auth.jwt.secret_file', kind: { type: 'path' },
    default: (d) => path.join(d.dataDir, 'jwt.secret'), defaultText: '<data.dir>/jwt.secret, created on first use',
    description: 'File holding the HS256 key, used when auth.jwt.secret and auth.verify_url are unset.' },
  { key: 'auth.jwt.jwks_file', kind: { type: 'path' },
    description: 'JWKS file ({"keys": [...]}) with the public keys of an identity provider (RSA, EC P-256/384/521, Ed25519) or HMAC keys; a token\'s `kid` picks its key. With it, the JWT secret is used only when auth.jwt.secret is set.' },
  { key: 'auth.jwt.algorithms', kind: { type: 'list', item: JWT_ALGORITHM, itemExpected: `algorithms among ${JWT_ALGORITHMS.join(', ')}` },
    defaultText: 'HS256; with auth.jwt.jwks_file: RS256 and ES256, plus HS256 when auth.jwt.secret is set',
    description: 'Signature algorithms accepted (`none` never is).' },
  { key: 'auth.jwt.max_age', kind: TIMEOUT,
    description: 'Refuse tokens issued longer ago than this (by `iat`, then required), whatever their `exp`.' },
  { key: 'auth.jwt.issuer', kind: { type: 'string' },
    description: 'Required `iss` claim of bearer tokens.' },
  { key: 'auth.jwt.audience', kind: { type: 'string' },
    description: 'Required `aud` claim of bearer tokens.' },
  { key: 'auth.jwt.workspace_claim', kind: { type: 'string' }, default: 'workspace_id',
    description: 'Claim that names the workspace a token is for.' },
  { key: 'auth.verify_url', kind: HTTP_URL, flag: '--auth-verify-url',
    description: 'Verify bearer tokens by POSTing {"token"} here instead of checking a JWT.' },
  { key: 'auth.verify_cache', kind: { type: 'duration', min: 0, max: MAX_TIMER_MS }, default: 30_000,
    description: 'How long a positive answer of auth.verify_url is reused.' },
  { key: 'auth.verify_negative_cache', kind: { type: 'duration', min: 0, max: MAX_TIMER_MS }, default: 5000,
    description: 'How long a refusal (401/403) of auth.verify_url is reused; answers other than 200, 401 and 403 are never cached.' },
  { key: 'auth.verify_concurrency', kind: COUNT, default: 32,
    description: 'Requests to auth.verify_url in flight at most; further new tokens wait their turn (at most 5 s, then 503 GW_AUTH_UNAVAILABLE).' },
  { key: 'model.provider', kind: PROVIDER_ID, default: 'openai-api',
    description: 'Model provider id written to each child\'s config.toml (not one of codex\'s built-in ids openai, ollama, lmstudio).' },
  { key: 'model.name', kind: { type: 'string' }, default: 'gpt-5.1-codex',
    description: 'Model children use.' },
  { key: 'model.base_url', kind: HTTP_URL, default: 'https://api.openai.com/v1',
    description: 'Base URL of the model provider\'s API.' },
  { key: 'model.env_key', kind: ENV_VAR, default: 'OPENAI_API_KEY',
    description: 'Variable under which each child receives the API key.' },
  { key: 'model.wire_api', kind: { type: 'enum', values: ['responses', 'chat'] }, default: 'responses',
    description: 'Wire protocol of the model provider.' },
  { key: 'model.api_key_env', kind: ENV_VAR, default: 'OPENAI_API_KEY',
    description: 'Gateway variable whose value every child gets under model.env_key.' },
  { key: 'model.reasoning_effort', kind: { type: 'enum', values: ['minimal', 'low', 'medium', 'high', 'xhigh'] },
    description: 'Reasoning effort written to config.toml (default: codex\'s own).' },
  { key: 'spawn.env_url', kind: HTTP_URL,
    description: 'Endpoint that returns per-workspace child env (e.g. a scoped API key) at spawn time.' },
  { key: 'spawn.ready_timeout', kind: TIMEOUT, default: 5000,
    description: 'Time a new child has to answer /readyz.' },
  { key: 'spawn.nice', kind: { type: 'int', min: 0, max: 19 }, default: 10,
    description: 'Nice levels children run below the gateway, so it keeps serving frames when children compete for CPU (0: same priority).' },
  { key: 'spawn.stop_grace', kind: { type: 'duration', min: 0, max: MAX_TIMER_MS }, default: 10_000,
    description: 'Time between SIGTERM and SIGKILL when a child is stopped.' },
  { key: 'spawn.extra_env', kind: { type: 'list', item: /^[A-Za-z_][A-Za-z0-9_]*=/, itemExpected: 'NAME=value entries' }, default: [],
    description: 'Variables given to every child.' },
  { key: 'spawn.env_allowlist', kind: { type: 'list', item: ENV_NAME, itemExpected: 'environment variable names' }, default: DEFAULT_ENV_ALLOWLIST,
    description: 'Gateway variables children may inherit (replaces the default list).' },
  { key: 'spawn.user', kind: { type: 'string', pattern: /^(?:[A-Za-z_][A-Za-z0-9_.-]*\$?|\d+:\d+)$/, expected: 'a user name or numeric uid:gid, e.g. nobody or 61000:61000' },
    description: 'Run children as this user (a name from /etc/passwd, or uid:gid) instead of the gateway\'s; the gateway must run as root. Each workspace\'s home is that user\'s while its child runs; secrets and the store stay root-only (see "Trust boundary" in docs/operations.md).' },
  { key: 'spawn.sandbox', kind: { type: 'enum', values: ['none', 'bubblewrap'] }, default: 'none',
    description: 'bubblewrap: run each child under bwrap, seeing only its own workspace directory, read-only system paths, /proc, /dev and a private /tmp (network shared).' },
  { key: 'reaper.idle_after', kind: TIMEOUT, default: 30 * 60_000,
    description: 'Stop a child after this long without traffic and with no client attached.' },
  { key: 'reaper.interval', kind: TIMEOUT, default: 60_000,
    description: 'How often the idle reaper looks.' },
  { key: 'reaper.hard_idle_after', kind: TIMEOUT, default: 2 * 3_600_000,
    description: 'Stop a child after this long without traffic even with clients attached.' },
  { key: 'reaper.max_age', kind: TIMEOUT,
    description: 'Stop a child this long after it started, whatever its activity.' },
  { key: 'limits.max_children', kind: COUNT,
    description: 'Most children running at once (default: no limit).' },
  { key: 'limits.max_connections', kind: COUNT,
    description: 'Most client connections open at once; upgrades past it get HTTP 503 GW_TOO_MANY_CONNECTIONS (default: no limit).' },
  // The core count: a start is CPU-bound on the gateway's own cores. Measured on the 2-core VM
  // (bench/README.md, spawn-concurrency): 24 starts took 36 s with 1, 13.9 s with 2, 10.0 s with 4
  // and 9.7 s with 8, on a machine shared with other work, where extra permits take others' CPU.
  { key: 'limits.max_concurrent_spawns', kind: COUNT, default: (d) => d.cores, defaultText: 'available cores',
    description: 'Most children starting at once; others wait in order (a start is CPU-heavy for a moment).' },
  { key: 'limits.max_frame', kind: { type: 'size', min: KiB, max: 1024 ** 3 }, default: 64 * 1024 * KiB,
    description: 'Largest WebSocket frame accepted from a client or a child.' },
  { key: 'limits.max_buffered', kind: { type: 'size', min: 1024 * KiB, max: 2 ** 50 },
    default: (d) => Math.min(2 * 1024 ** 3, Math.max(64 * 1024 ** 2, Math.floor(d.memoryBytes / 16))), defaultText: '1/16 of memory (cgroup limit or host), from 64 MiB to 2 GiB',
    description: 'Client bytes in flight toward the children (received, not yet taken by a child\'s socket) over all connections; while a frame would pass it, a client with more than 1 MiB in flight is closed with 1013 GW_OVERLOADED.' },
  { key: 'limits.child_handshake_timeout', kind: TIMEOUT, default: 10_000,
    description: 'Time a child has to complete the WebSocket handshake of a client connection; past it the client is closed with 1011 GW_CHILD_CONNECT.' },
  { key: 'crash_loop.threshold', kind: COUNT, default: 3,
    description: 'Early exits in a row (before ready, or within crash_loop.window) after which a workspace backs off.' },
  { key: 'crash_loop.window', kind: TIMEOUT, default: 10_000,
    description: 'A child that exits sooner than this after it was ready counts as crashing.' },
  { key: 'crash_loop.backoff', kind: TIMEOUT, default: 5_000,
    description: 'First backoff of a crash-looping workspace; doubles up to crash_loop.backoff_max.' },
  { key: 'crash_loop.backoff_max', kind: TIMEOUT, default: 5 * 60_000,
    description: 'Longest backoff of a crash-looping workspace.' },
  { key: 'warm_restart.max', kind: { type: 'int', min: 0, max: 100_000 }, default: 64,
    description: 'Workspaces a start brings back before their clients return: those whose children ran at the last drain, most recently active first, from their warm homes where kept (0: off). They yield to every start a client waits for; those no client claims are stopped by the idle reaper.' },
  { key: 'restart.handover', kind: { type: 'bool' }, default: false,
    description: 'Handover restart: a gateway started with the same data.dir while another runs takes over its live codex children instead of having them stopped and started again (see docs/operations.md#handover-restart). Children then have no parent-death signal: a gateway that dies without handing over leaves them to the next start\'s recovery. Needs a fixed internal.port; not with spawn.sandbox or [cluster].' },
  { key: 'shutdown.budget', kind: TIMEOUT, default: 60_000,
    description: 'Time a drain may take (stop children, save their state) before the gateway exits anyway.' },
  { key: 'shutdown.workspace_budget', kind: TIMEOUT, default: 30_000,
    description: 'Time one workspace\'s stop and upload may take in a drain; what is not stored by then stays on disk for the next start.' },
  { key: 'shutdown.concurrency', kind: COUNT, default: 16,
    description: 'Children stopped at once during a drain.' },
  { key: 'turns.timeout', kind: TIMEOUT, default: 10 * 60_000,
    description: 'Deadline of an HTTP turn (POST /api/turns) whose request names no timeoutMs; past it the turn is interrupted and the answer is brokerTimeout.' },
  { key: 'turns.max_timeout', kind: TIMEOUT, default: 60 * 60_000,
    description: 'Largest timeoutMs an HTTP turn may ask for (larger: 400).' },
  { key: 'turns.max_body', kind: { type: 'size', min: KiB, max: 64 * 1024 * KiB }, default: 1024 * KiB,
    description: 'Largest body of POST /api/turns (larger: 413).' },
  { key: 'approvals.headless', kind: { type: 'enum', values: ['decline', 'accept'] }, default: 'decline',
    description: 'Answer to the approval requests codex pushes during an HTTP turn, where no person can answer (commands, file changes, permissions).' },
  { key: 'approvals.websocket', kind: { type: 'enum', values: ['client', 'decline', 'accept'] }, default: 'client',
    description: 'Who answers approval requests on WebSocket connections: the client, or the gateway with decline or accept (the client then never sees them).' },
  { key: 'admin.token', kind: { type: 'string', minLength: 16 }, secret: true,
    description: 'Bearer token for the admin API on the internal endpoint (unset: admin API off).' },
  { key: 'metrics.token', kind: { type: 'string', minLength: 16 }, secret: true,
    description: 'When set, GET /metrics needs `Authorization: Bearer <token>` (unset: /metrics is open).' },
  { key: 'log.level', kind: { type: 'enum', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] }, default: 'info', flag: '--log-level',
    description: 'Log level.' },
  { key: 'cluster.etcd.endpoints', kind: { type: 'list', item: /^https?:\/\/[^\s/]+\/?$/, itemExpected: 'etcd client URLs like http://10.0.0.2:2379' }, default: [],
    description: 'etcd client URLs of the cluster. Set: this gateway is one of several sharing one store, each workspace owned by one of them at a time through etcd leases, and stored state switched by the fencing token (docs/operations.md, "Cluster"). Empty: a single gateway, no etcd.' },
  { key: 'cluster.etcd.prefix', kind: { type: 'string', pattern: /^\/(?:[A-Za-z0-9._-]+\/)*$/, expected: 'a key prefix that starts and ends with /, like /cxg/' }, default: '/cxg/',
    description: 'Prefix of this cluster\'s keys in etcd (owner/, epoch/ and state/ of each workspace).' },
  { key: 'cluster.etcd.ca_file', kind: { type: 'path' },
    description: 'CA certificate (PEM) that signs etcd\'s server certificate; set it to reach etcd over TLS (https:// endpoints).' },
  { key: 'cluster.etcd.cert_file', kind: { type: 'path' },
    description: 'Client certificate (PEM) for etcd\'s client-certificate auth; needs cluster.etcd.key_file and cluster.etcd.ca_file.' },
  { key: 'cluster.etcd.key_file', kind: { type: 'path' },
    description: 'Private key (PEM) of cluster.etcd.cert_file.' },
  { key: 'cluster.etcd.username', kind: { type: 'string' },
    description: 'etcd user (etcd\'s own auth), with cluster.etcd.password.' },
  { key: 'cluster.etcd.password', kind: { type: 'string' }, secret: true,
    description: 'Password of cluster.etcd.username.' },
  { key: 'cluster.node_id', kind: { type: 'string', pattern: /^[A-Za-z0-9._-]{1,128}$/, expected: '1-128 characters of [A-Za-z0-9._-]' }, default: () => os.hostname(), defaultText: 'the host name',
    description: 'This gateway\'s name in the cluster (owner records, logs); unique per replica, stable across its restarts (a StatefulSet pod name).' },
  { key: 'cluster.advertise_url', kind: { type: 'url', protocols: ['ws:', 'wss:'] },
    description: 'How peers and operators reach this gateway (e.g. ws://10.0.0.5:8080, its public listener); written into the owner records of its workspaces. Set: peers forward clients of the workspaces it owns to it (needs cluster.secret). Unset: peers answer those clients 1013 GW_OWNED_ELSEWHERE.' },
  { key: 'cluster.secret', kind: { type: 'string', minLength: 32 }, secret: true,
    description: 'Key (at least 32 characters, the same on every gateway of the cluster) that signs the connections gateways forward to each other (docs/operations.md, "Forwarding between gateways"). Required with cluster.advertise_url; without it this gateway forwards nothing and peers cannot forward to it.' },
  { key: 'cluster.secret_file', kind: { type: 'path' },
    description: 'File holding cluster.secret (surrounding whitespace ignored), e.g. a mounted Kubernetes Secret; instead of cluster.secret.' },
  { key: 'cluster.lease_ttl', kind: { type: 'duration', min: 2000, max: 3_600_000 }, default: 15_000,
    description: 'TTL of this gateway\'s etcd lease: a gateway that cannot prove its lease alive for this long, less a margin, stops its children, and peers may take its workspaces over once etcd expires the lease.' },
  { key: 'cluster.keep_snapshots', kind: { type: 'int', min: 0, max: 1000 }, default: 2,
    description: 'Stored snapshots kept per workspace besides the current one; older ones are removed from the store when a newer one becomes current. Fenced uploads are never removed.' },
  { key: 'shards', kind: COUNT, default: (d) => d.cores, defaultText: 'available cores', flag: '--shards',
    description: 'Shard worker threads.' },
] as const satisfies readonly SettingSpec[];

export type SettingKey = (typeof SETTINGS)[number]['key'];

/** `auth.jwt.secret` → CXG_AUTH_JWT_SECRET. */
export function envName(key: string): string {
  return `CXG_${key.toUpperCase().replace(/\./g, '_')}`;
}

/**
 * CXG_* variables that are not settings: the config file, what the gateway
 * gives its children, and the knobs of the project's own tests, fault suite
 * and benchmarks (which start gateways that inherit them).
 */
export const CONFIG_ENV = 'CXG_CONFIG';
const NOT_SETTINGS = new Set([CONFIG_ENV, 'CXG_LOOPBACK_TOKEN', 'CXG_WORKSPACE_TOKEN']);
const NOT_SETTING_PREFIXES = ['CXG_TEST_', 'CXG_FAULTS_', 'CXG_BENCH_'];
export function isNonSettingEnv(name: string): boolean {
  return NOT_SETTINGS.has(name) || NOT_SETTING_PREFIXES.some((p) => name.startsWith(p));
}

/** `store.s3.force_path_style` (a bool) → ['store', 's3', 'forcePathStyle']; durations end in Ms, sizes in Bytes. */
export function fieldPath(spec: SettingSpec): string[] {
  const parts = spec.key.split('.').map(camel);
  const suffix = spec.kind.type === 'duration' ? 'Ms' : spec.kind.type === 'size' ? 'Bytes' : '';
  return [...parts.slice(0, -1), `${parts.at(-1) ?? ''}${suffix}`];
}

function camel(s: string): string {
  return s.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

// ---- the Settings type, derived from the table ----------------------------
// The same renaming as fieldPath, done by the type checker, so a consumer's
// `settings.reaper.idleAfterMs` is checked against the table.

type Camel<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<Camel<T>>}` : S;
type Leaf<S extends string, K> = K extends { type: 'duration' } ? `${Camel<S>}Ms` : K extends { type: 'size' } ? `${Camel<S>}Bytes` : Camel<S>;
type Nest<Key extends string, K, V> = Key extends `${infer H}.${infer T}`
  ? { readonly [P in Camel<H>]: Nest<T, K, V> }
  : { readonly [P in Leaf<Key, K>]: V };
type ValueOfSpec<E> = E extends { kind: infer K; default: unknown } ? KindValue<K> : E extends { kind: infer K } ? KindValue<K> | undefined : never;
type NestSpec<E> = E extends { key: infer Key extends string; kind: infer K } ? Nest<Key, K, ValueOfSpec<E>> : never;
type UnionToIntersection<U> = (U extends unknown ? (u: U) => void : never) extends (i: infer I) => void ? I : never;
type Expand<T> = T extends readonly unknown[] ? T : T extends object ? { readonly [P in keyof T]: Expand<T[P]> } : T;

/**
 * The resolved settings, nested by key with camelCase names, for example
 * `settings.listen.port: number`, `settings.auth.jwt.secret: string | undefined`,
 * `settings.limits.maxFrameBytes: number`, `settings.model.wireApi: 'responses' | 'chat'`.
 * Optional settings without a default are `T | undefined`.
 */
export type Settings = Expand<UnionToIntersection<NestSpec<(typeof SETTINGS)[number]>>>;
