import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, expectTypeOf, it } from 'vitest';
import { DEFAULT_ENV_ALLOWLIST } from '../src/shared/child-env.js';
import { GatewayError } from '../src/shared/errors.js';
import { describeSettings, ensureJwtSecret, envName, loadSettings, SETTINGS, settingsHelp, storeSpecFromSettings } from '../src/main/settings/load.js';
import type { Settings } from '../src/main/settings/load.js';
import { formatDuration, formatSize, parseDuration, parseSize } from '../src/main/settings/units.js';
import { testTempRoot } from './temp-root.js';

let dir: string;

beforeEach(async () => {
  // Not /tmp: the project's tests keep scratch space under the user's cache.
  const base = testTempRoot();
  await mkdir(base, { recursive: true });
  dir = await mkdtemp(path.join(base, 'settings-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const SECRET = 'an-hs256-key-of-at-least-32-characters';

async function toml(text: string, name = 'gw.toml'): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, text);
  return file;
}

function load(o: { argv?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Settings> {
  return loadSettings({ argv: o.argv ?? [], env: o.env ?? {}, cwd: dir });
}

async function settingsError(p: Promise<unknown>): Promise<GatewayError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(GatewayError);
  expect((err as GatewayError).code).toBe('GW_SETTINGS');
  return err as GatewayError;
}

describe('loadSettings › defaults', () => {
  it('resolve against cwd, with internal.port = listen.port + 1 and homes, store and key file under data.dir', async () => {
    const s = await load();
    expect(s.data.dir).toBe(path.join(dir, 'data'));
    expect(s.listen).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(s.internal).toEqual({ host: '127.0.0.1', port: 8081, upstreamUrl: undefined });
    expect(s.homes.root).toBe(path.join(dir, 'data', 'homes'));
    expect(s.store.url).toBe(pathToFileURL(path.join(dir, 'data', 'store')).href);
    expect(s.store.s3).toEqual({ endpoint: undefined, region: 'us-east-1', forcePathStyle: false });
    expect(s.auth.jwt).toEqual({ secret: undefined, secretFile: path.join(dir, 'data', 'jwt.secret'), issuer: undefined, audience: undefined, workspaceClaim: 'workspace_id' });
    expect(s.auth.verifyCacheMs).toBe(30_000);
    expect(s.model).toEqual({
      provider: 'openai-api',
      name: 'gpt-5.1-codex',
      baseUrl: 'https://api.openai.com/v1',
      envKey: 'OPENAI_API_KEY',
      wireApi: 'responses',
      apiKeyEnv: 'OPENAI_API_KEY',
      reasoningEffort: undefined,
    });
    expect(s.spawn).toEqual({ envUrl: undefined, readyTimeoutMs: 5000, nice: 10, stopGraceMs: 10_000, extraEnv: [], envAllowlist: [...DEFAULT_ENV_ALLOWLIST], user: undefined, sandbox: 'none' });
    expect(s.reaper).toEqual({ idleAfterMs: 30 * 60_000, intervalMs: 60_000, hardIdleAfterMs: 2 * 3_600_000, maxAgeMs: undefined });
    // limits.max_buffered: 1/16 of memory (the cgroup limit when there is one), 64 MiB to 2 GiB.
    const limit = process.constrainedMemory?.() ?? 0;
    const memory = limit > 0 && limit < os.totalmem() ? limit : os.totalmem();
    const maxBufferedBytes = Math.min(2 * 1024 ** 3, Math.max(64 * 1024 ** 2, Math.floor(memory / 16)));
    expect(s.limits).toEqual({ maxConnections: undefined, maxChildren: undefined, maxConcurrentSpawns: os.availableParallelism(), maxFrameBytes: 64 * 1024 * 1024, maxBufferedBytes, childHandshakeTimeoutMs: 10_000 });
    expect(s.shutdown).toEqual({ budgetMs: 60_000, workspaceBudgetMs: 30_000, concurrency: 16 });
    expect(s.crashLoop).toEqual({ threshold: 3, windowMs: 10_000, backoffMs: 5_000, backoffMaxMs: 300_000 });
    expect(s.admin.token).toBeUndefined();
    expect(s.log.level).toBe('info');
    expect(s.codex.bin).toBeUndefined();
    expect(s.shards).toBe(os.availableParallelism());
  });

  it('the Settings type is derived from the table: camelCase, Ms for durations, Bytes for sizes, undefined for optional', () => {
    expectTypeOf<Settings['listen']['port']>().toEqualTypeOf<number>();
    expectTypeOf<Settings['store']['s3']['forcePathStyle']>().toEqualTypeOf<boolean>();
    expectTypeOf<Settings['auth']['jwt']['secret']>().toEqualTypeOf<string | undefined>();
    expectTypeOf<Settings['reaper']['maxAgeMs']>().toEqualTypeOf<number | undefined>();
    expectTypeOf<Settings['limits']['maxFrameBytes']>().toEqualTypeOf<number>();
    expectTypeOf<Settings['model']['wireApi']>().toEqualTypeOf<'responses' | 'chat'>();
    expectTypeOf<Settings['model']['reasoningEffort']>().toEqualTypeOf<'minimal' | 'low' | 'medium' | 'high' | 'xhigh' | undefined>();
    expectTypeOf<Settings['spawn']['extraEnv']>().toEqualTypeOf<string[]>();
  });

  it('computed defaults follow the settings they come from', async () => {
    const s = await load({ argv: ['--data-dir', 'elsewhere'], env: { CXG_LISTEN_PORT: '9000' } });
    expect(s.internal.port).toBe(9001);
    expect(s.homes.root).toBe(path.join(dir, 'elsewhere', 'homes'));
    expect(s.store.url).toBe(pathToFileURL(path.join(dir, 'elsewhere', 'store')).href);
    expect(s.auth.jwt.secretFile).toBe(path.join(dir, 'elsewhere', 'jwt.secret'));
    // Port 0 means "any free port" for both endpoints, not 0 and 1.
    expect((await load({ env: { CXG_LISTEN_PORT: '0' } })).internal.port).toBe(0);
  });
});

describe('loadSettings › sources', () => {
  it('precedence: defaults < file < environment < flags', async () => {
    const file = await toml('[listen]\nport = 1000\nhost = "0.0.0.0"\n[reaper]\nidle_after = "10m"\n');
    const all = await load({ argv: ['--config', file, '--port', '3000'], env: { CXG_LISTEN_PORT: '2000', CXG_REAPER_IDLE_AFTER: '20m' } });
    expect(all.listen).toEqual({ host: '0.0.0.0', port: 3000 });
    expect(all.reaper.idleAfterMs).toBe(20 * 60_000);
    const noFlag = await load({ argv: ['--config', file], env: { CXG_LISTEN_PORT: '2000' } });
    expect(noFlag.listen.port).toBe(2000);
    expect(noFlag.reaper.idleAfterMs).toBe(10 * 60_000);
    const fileOnly = await load({ argv: ['--config', file] });
    expect(fileOnly.listen.port).toBe(1000);
  });

  it('CXG_CONFIG names the file; --config wins over it; a relative path is resolved against cwd', async () => {
    await toml('shards = 3\n', 'a.toml');
    await toml('shards = 5\n', 'b.toml');
    expect((await load({ env: { CXG_CONFIG: 'a.toml' } })).shards).toBe(3);
    expect((await load({ argv: ['--config=b.toml'], env: { CXG_CONFIG: 'a.toml' } })).shards).toBe(5);
  });

  it('the TOML file mirrors the keys: tables per prefix, arrays for lists, integers as ms and bytes', async () => {
    const file = await toml(`
shards = 2
[listen]
port = 9000
[auth.jwt]
secret = "${SECRET}"
issuer = "me"
[store]
url = "s3://my-bucket/some/prefix/"
[store.s3]
endpoint = "http://127.0.0.1:4569"
force_path_style = true
[spawn]
extra_env = ["A=1", "B=x=y"]
env_allowlist = ["PATH"]
ready_timeout = 250
stop_grace = "1h30m"
[limits]
max_frame = 1048576
max_children = 10
[model]
wire_api = "chat"
reasoning_effort = "high"
`);
    const s = await load({ argv: ['--config', file] });
    expect(s.shards).toBe(2);
    expect(s.listen.port).toBe(9000);
    expect(s.auth.jwt.secret).toBe(SECRET);
    expect(s.auth.jwt.issuer).toBe('me');
    expect(s.spawn).toMatchObject({ extraEnv: ['A=1', 'B=x=y'], envAllowlist: ['PATH'], readyTimeoutMs: 250, stopGraceMs: 5_400_000 });
    expect(s.limits).toMatchObject({ maxFrameBytes: 1024 * 1024, maxChildren: 10 });
    expect(s.model).toMatchObject({ wireApi: 'chat', reasoningEffort: 'high' });
    expect(storeSpecFromSettings(s)).toEqual({ kind: 's3', bucket: 'my-bucket', prefix: 'some/prefix', endpoint: 'http://127.0.0.1:4569', region: 'us-east-1', forcePathStyle: true });
  });

  it('environment values: lists comma-separated, booleans as true/false/1/0, an empty variable is unset', async () => {
    const s = await load({
      env: {
        CXG_SPAWN_EXTRA_ENV: 'A=1, B=2,',
        CXG_STORE_S3_FORCE_PATH_STYLE: '1',
        CXG_SHARDS: '',
        CXG_STORE_URL: 'file:///srv/cxg/store',
        CXG_CODEX_BIN: 'codex',
        CXG_HOMES_ROOT: 'h',
      },
    });
    expect(s.spawn.extraEnv).toEqual(['A=1', 'B=2']);
    expect(s.store.s3.forcePathStyle).toBe(true);
    expect(s.shards).toBe(os.availableParallelism());
    expect(storeSpecFromSettings(s)).toEqual({ kind: 'file', dir: '/srv/cxg/store' });
    // A bare command name is left for a PATH lookup; a path is resolved.
    expect(s.codex.bin).toBe('codex');
    expect(s.homes.root).toBe(path.join(dir, 'h'));
  });

  it('variables that are not settings are left alone: CXG_CONFIG, the test, fault-suite and bench knobs, the child tokens, other prefixes', async () => {
    const s = await load({ env: { CXG_LOG_LEVEL: 'debug', CXG_TEST_ANYTHING: 'x', CXG_FAULTS_CLIENTS: '1000', CXG_BENCH_LOG_LEVEL: 'info', CXG_LOOPBACK_TOKEN: 't', CXG_WORKSPACE_TOKEN: 't', PATH: '/bin', CXGX: '1' } });
    expect(s.log.level).toBe('debug');
  });
});

interface BadCase {
  name: string;
  env?: Record<string, string>;
  file?: string;
  argv?: string[];
  /** The start of the error line; `FILE` stands for the config file's path. */
  message: string;
}

const BAD: BadCase[] = [
  { name: 'integer with junk', env: { CXG_LISTEN_PORT: '80a' }, message: 'listen.port (from CXG_LISTEN_PORT): expected an integer 0-65535, got "80a"' },
  { name: 'port out of range', argv: ['--port', '70000'], message: 'listen.port (from --port): expected an integer 0-65535, got "70000"' },
  { name: 'port as a TOML string', file: '[listen]\nport = "8080"\n', message: 'listen.port (from FILE): expected an integer 0-65535, got "8080"' },
  { name: 'zero shards', file: 'shards = 0\n', message: 'shards (from FILE): expected an integer of at least 1, got 0' },
  { name: 'negative count', env: { CXG_SHUTDOWN_CONCURRENCY: '-1' }, message: 'shutdown.concurrency (from CXG_SHUTDOWN_CONCURRENCY): expected an integer of at least 1' },
  { name: 'fractional count', file: '[limits]\nmax_children = 1.5\n', message: 'limits.max_children (from FILE): expected an integer of at least 1, got 1.5' },
  { name: 'bool word', env: { CXG_STORE_S3_FORCE_PATH_STYLE: 'maybe' }, message: 'store.s3.force_path_style (from CXG_STORE_S3_FORCE_PATH_STYLE): expected true, false, 1 or 0, got "maybe"' },
  { name: 'bool as TOML string', file: '[store.s3]\nforce_path_style = "true"\n', message: 'store.s3.force_path_style (from FILE): expected true or false' },
  { name: 'duration with a space', env: { CXG_SPAWN_READY_TIMEOUT: '5 sec' }, message: 'spawn.ready_timeout (from CXG_SPAWN_READY_TIMEOUT): expected a duration' },
  { name: 'duration units out of order', env: { CXG_REAPER_IDLE_AFTER: '1m1h' }, message: 'reaper.idle_after (from CXG_REAPER_IDLE_AFTER): expected a duration' },
  { name: 'duration zero where a timeout is needed', file: '[spawn]\nready_timeout = 0\n', message: 'spawn.ready_timeout (from FILE): expected a duration' },
  { name: 'duration beyond a timer', env: { CXG_REAPER_MAX_AGE: '1000h' }, message: 'reaper.max_age (from CXG_REAPER_MAX_AGE): expected a duration' },
  { name: 'decimal size unit', env: { CXG_LIMITS_MAX_FRAME: '64MB' }, message: 'limits.max_frame (from CXG_LIMITS_MAX_FRAME): expected a size like 512KiB, 64MiB or 1GiB' },
  { name: 'size below the minimum', file: '[limits]\nmax_frame = 512\n', message: 'limits.max_frame (from FILE): expected a size' },
  { name: 'not a URL', env: { CXG_MODEL_BASE_URL: 'api.openai.com' }, message: 'model.base_url (from CXG_MODEL_BASE_URL): expected an http or https URL, got "api.openai.com"' },
  { name: 'URL of the wrong scheme', argv: ['--auth-verify-url', 'ftp://x/verify'], message: 'auth.verify_url (from --auth-verify-url): expected an http or https URL' },
  { name: 'store URL of another scheme', env: { CXG_STORE_URL: 'http://bucket' }, message: 'store.url (from CXG_STORE_URL): expected file:///absolute/dir or s3://bucket[/prefix], got "http://bucket"' },
  { name: 'store URL with a bad bucket', env: { CXG_STORE_URL: 's3://Bad_Bucket/x' }, message: 'store.url (from CXG_STORE_URL): expected file:///absolute/dir or s3://bucket[/prefix]' },
  { name: 'relative file store URL', file: '[store]\nurl = "file://relative/dir"\n', message: 'store.url (from FILE): expected file:///absolute/dir or s3://bucket[/prefix]' },
  { name: 'enum value', env: { CXG_MODEL_WIRE_API: 'grpc' }, message: 'model.wire_api (from CXG_MODEL_WIRE_API): expected one of responses, chat, got "grpc"' },
  { name: 'log level', argv: ['--log-level=loud'], message: 'log.level (from --log-level): expected one of fatal, error, warn, info, debug, trace, silent, got "loud"' },
  { name: 'env entry without =', env: { CXG_SPAWN_EXTRA_ENV: 'FOO' }, message: 'spawn.extra_env (from CXG_SPAWN_EXTRA_ENV): expected a list of NAME=value entries, comma-separated, got "FOO"' },
  { name: 'allowlist with a bad name', file: '[spawn]\nenv_allowlist = ["OK", "NOT-OK"]\n', message: 'spawn.env_allowlist (from FILE): expected a list of environment variable names' },
  { name: 'list as a TOML string', file: '[spawn]\nextra_env = "A=1"\n', message: 'spawn.extra_env (from FILE): expected a list of NAME=value entries, got "A=1"' },
  { name: 'env var name', env: { CXG_MODEL_ENV_KEY: 'OPENAI KEY' }, message: 'model.env_key (from CXG_MODEL_ENV_KEY): expected an environment variable name like OPENAI_API_KEY' },
  { name: 'empty string in TOML', file: '[listen]\nhost = ""\n', message: 'listen.host (from FILE): expected a non-empty string, got ""' },
  { name: 'table where a value belongs', file: '[listen.port]\nx = 1\n', message: 'listen.port (from FILE): expected an integer 0-65535, got a table' },
  { name: 'value where a table belongs', file: 'listen = 5\n', message: 'listen (from FILE): expected a table of settings ([listen])' },
  { name: 'short JWT secret', env: { CXG_AUTH_JWT_SECRET: 'hunter2' }, message: 'auth.jwt.secret (from CXG_AUTH_JWT_SECRET): expected a string of at least 32 characters, got a hidden value of 7 characters' },
  { name: 'internal port equal to the public one', argv: ['--port', '9000', '--internal-port', '9000'], message: 'internal.port (from --internal-port): must differ from listen.port (9000)' },
  { name: 'computed default out of range', env: { CXG_LISTEN_PORT: '65535' }, message: 'internal.port (default listen.port + 1 = 65536): expected an integer 0-65535; set internal.port' },
  { name: 'unknown flag', argv: ['--prot', '80'], message: 'unknown flag --prot; did you mean --port?' },
  { name: 'flag without its value', argv: ['--port'], message: '--port needs a value' },
  { name: 'stray argument', argv: ['now'], message: 'unexpected argument "now"' },
];

describe('loadSettings › bad input is GW_SETTINGS naming the key, the source and what was expected', () => {
  it.each(BAD)('$name', async (c) => {
    const file = c.file === undefined ? undefined : await toml(c.file);
    const argv = [...(file === undefined ? [] : ['--config', file]), ...(c.argv ?? [])];
    const err = await settingsError(load({ argv, env: c.env ?? {} }));
    const lines = err.details?.errors as string[];
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(c.message.replace('FILE', file ?? ''));
    expect(err.message).toBe(lines[0]);
  });

  it('a secret is never echoed back', async () => {
    const err = await settingsError(load({ env: { CXG_AUTH_JWT_SECRET: 'hunter2', CXG_ADMIN_TOKEN: 'swordfish' } }));
    expect(err.message).not.toContain('hunter2');
    expect(err.message).not.toContain('swordfish');
  });

  it('every problem is reported at once', async () => {
    const file = await toml('[listen]\nport = "x"\nprot = 1\n');
    const err = await settingsError(load({ argv: ['--config', file, '--shards', '0'], env: { CXG_LOG_LEVEL: 'loud', CXG_NOPE: '1' } }));
    const lines = err.details?.errors as string[];
    expect(lines).toHaveLength(5);
    expect(err.message.split('\n')[0]).toBe('5 invalid settings:');
    for (const fragment of ['listen.port (from', 'unknown setting listen.prot', 'unknown environment variable CXG_NOPE', 'log.level (from CXG_LOG_LEVEL)', 'shards (from --shards)']) {
      expect(err.message).toContain(fragment);
    }
  });

  it('an unknown key in the file is refused, with a suggestion when it is a likely typo', async () => {
    const file = await toml('[listen]\nprot = 8080\n[nope]\nx = 1\n');
    const err = await settingsError(load({ argv: ['--config', file] }));
    expect(err.details?.errors).toEqual([`unknown setting listen.prot (from ${file}); did you mean listen.port?`, `unknown setting nope (from ${file})`]);
  });

  it('an unknown CXG_ variable is refused', async () => {
    const err = await settingsError(load({ env: { CXG_LISTEN_PROT: '8080' } }));
    expect(err.message).toBe('unknown environment variable CXG_LISTEN_PROT: CXG_* names are reserved for settings; did you mean CXG_LISTEN_PORT?');
  });

  it('a config file that cannot be read or parsed is refused', async () => {
    const missing = path.join(dir, 'missing.toml');
    expect((await settingsError(load({ argv: ['--config', missing] }))).message).toBe(`config file ${missing}: cannot read it (ENOENT)`);
    const broken = await toml('[listen\nport = 1\n');
    expect((await settingsError(load({ env: { CXG_CONFIG: broken } }))).message).toMatch(new RegExp(`^config file ${broken}: not valid TOML`));
  });

  it('an explicit auth.jwt.secret_file must be readable when it is the key in use', async () => {
    const missing = path.join(dir, 'nope.secret');
    const err = await settingsError(load({ env: { CXG_AUTH_JWT_SECRET_FILE: missing } }));
    expect(err.message).toBe(`auth.jwt.secret_file (from CXG_AUTH_JWT_SECRET_FILE): cannot read ${missing} (ENOENT)`);
    const short = await toml('short\n', 'short.secret');
    expect((await settingsError(load({ env: { CXG_AUTH_JWT_SECRET_FILE: short } }))).message).toContain('expected at least 32 characters, got 5');
    // Not in use: a configured secret or a remote verifier makes the file irrelevant.
    await expect(load({ env: { CXG_AUTH_JWT_SECRET_FILE: missing, CXG_AUTH_JWT_SECRET: SECRET } })).resolves.toBeDefined();
    await expect(load({ env: { CXG_AUTH_JWT_SECRET_FILE: missing, CXG_AUTH_VERIFY_URL: 'http://127.0.0.1:9/verify' } })).resolves.toBeDefined();
  });
});

describe('durations and sizes', () => {
  it.each([
    ['250ms', 250],
    ['30s', 30_000],
    ['5m', 300_000],
    ['2h', 7_200_000],
    ['1h30m', 5_400_000],
    ['1m30s500ms', 90_500],
    ['1500', 1500],
    [' 10s ', 10_000],
  ])('parseDuration(%j) = %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['', '5x', '1.5s', '-1s', '1m1h', '5s5s', 's', '10 s'])('parseDuration(%j) is refused', (text) => {
    expect(parseDuration(text)).toBeUndefined();
  });

  it.each([
    ['64MiB', 64 * 1024 * 1024],
    ['512KiB', 512 * 1024],
    ['1GiB', 1024 ** 3],
    ['100B', 100],
    ['1048576', 1_048_576],
  ])('parseSize(%j) = %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['64MB', '1.5MiB', 'MiB', '-1', '64 mib'])('parseSize(%j) is refused', (text) => {
    expect(parseSize(text)).toBeUndefined();
  });

  it('format back to the shortest form', () => {
    expect([0, 250, 30_000, 5_400_000, 90_500].map(formatDuration)).toEqual(['0ms', '250ms', '30s', '1h30m', '1m30s500ms']);
    expect([64 * 1024 * 1024, 1536 * 1024, 1000].map(formatSize)).toEqual(['64MiB', '1536KiB', '1000B']);
  });

  it('reach the settings from env and TOML alike', async () => {
    const file = await toml('[reaper]\ninterval = 250\nhard_idle_after = "1h30m"\n');
    const s = await load({ argv: ['--config', file], env: { CXG_LIMITS_MAX_FRAME: '512KiB', CXG_SPAWN_STOP_GRACE: '0' } });
    expect(s.reaper.intervalMs).toBe(250);
    expect(s.reaper.hardIdleAfterMs).toBe(5_400_000);
    expect(s.limits.maxFrameBytes).toBe(512 * 1024);
    expect(s.spawn.stopGraceMs).toBe(0);
  });
});

describe('describeSettings', () => {
  it('one line per setting, secrets masked, sources named', async () => {
    const s = await load({ argv: ['--port', '9000'], env: { CXG_AUTH_JWT_SECRET: SECRET, CXG_ADMIN_TOKEN: 'an-admin-token-0123' } });
    const text = describeSettings(s, { maskSecrets: true });
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(SETTINGS.length);
    expect(text).not.toContain(SECRET);
    expect(text).not.toContain('an-admin-token-0123');
    expect(lines).toContainEqual(expect.stringMatching(/^auth\.jwt\.secret += "\*\*\*\*\*\*\*\*" {2}# from CXG_AUTH_JWT_SECRET$/));
    expect(lines).toContainEqual(expect.stringMatching(/^admin\.token += "\*\*\*\*\*\*\*\*"/));
    expect(lines).toContainEqual(expect.stringMatching(/^listen\.port += 9000 {2}# from --port$/));
    expect(lines).toContainEqual(expect.stringMatching(/^reaper\.idle_after += "30m"$/));
    expect(lines).toContainEqual('# auth.verify_url is unset');
    expect(describeSettings(s, { maskSecrets: false })).toContain(SECRET);
  });

  it('reads back as a settings file that loads to the same settings', async () => {
    const original = await load({ argv: ['--port', '9000'], env: { CXG_AUTH_JWT_SECRET: SECRET, CXG_SPAWN_EXTRA_ENV: 'A=1' } });
    const file = await toml(describeSettings(original, { maskSecrets: false }), 'described.toml');
    expect(await load({ argv: ['--config', file] })).toEqual(original);
  });
});

describe('settingsHelp', () => {
  it('lists every setting with its env var, its default and its flag', () => {
    const help = settingsHelp();
    for (const spec of SETTINGS) {
      const block = help.slice(help.indexOf(`  ${spec.key}  (`));
      expect(block.startsWith(`  ${spec.key}  (`), spec.key).toBe(true);
      const [head, where] = block.split('\n');
      expect(head).toContain('default: ');
      expect(where).toContain(`env ${envName(spec.key)}`);
      if ('flag' in spec) expect(where).toContain(`flag ${spec.flag}`);
    }
    expect(help).toContain('default: 8080');
    expect(help).toContain('default: listen.port + 1');
    expect(help).toContain('default: 64MiB');
    expect(help).toContain('default: 30m');
  });
});

describe('the settings table', () => {
  it('keys and env var names are unique and mechanical', () => {
    const keys = SETTINGS.map((s) => s.key);
    expect(new Set(keys).size).toBe(keys.length);
    expect(new Set(keys.map(envName)).size).toBe(keys.length);
    expect(envName('auth.jwt.secret')).toBe('CXG_AUTH_JWT_SECRET');
    expect(envName('shards')).toBe('CXG_SHARDS');
    expect(envName('store.s3.force_path_style')).toBe('CXG_STORE_S3_FORCE_PATH_STYLE');
  });

  it('computed defaults come after data.dir and listen.port, which they read', () => {
    const keys: string[] = SETTINGS.map((s) => s.key);
    for (const spec of SETTINGS) {
      if ('default' in spec && typeof spec.default === 'function') {
        expect(keys.indexOf(spec.key), spec.key).toBeGreaterThan(Math.max(keys.indexOf('data.dir'), keys.indexOf('listen.port')));
      }
    }
  });
});

describe('ensureJwtSecret', () => {
  it('creates <data.dir>/jwt.secret (64 hex characters, 0600 in a 0700 directory) once and reuses it', async () => {
    const s = await load();
    const secret = await ensureJwtSecret(s);
    expect(secret).toMatch(/^[0-9a-f]{64}$/);
    const file = path.join(dir, 'data', 'jwt.secret');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(path.join(dir, 'data'))).mode & 0o777).toBe(0o700);
    expect((await readFile(file, 'utf8')).trim()).toBe(secret);
    expect(await ensureJwtSecret(await load())).toBe(secret);
  });

  it('concurrent first calls agree on one key', async () => {
    const s = await load();
    const secrets = await Promise.all(Array.from({ length: 8 }, () => ensureJwtSecret(s)));
    expect(new Set(secrets).size).toBe(1);
    expect(await readdir(path.join(dir, 'data'))).toEqual(['jwt.secret']);
  });

  it('a configured secret wins; an explicit file is read as it is, trimmed', async () => {
    expect(await ensureJwtSecret(await load({ env: { CXG_AUTH_JWT_SECRET: SECRET } }))).toBe(SECRET);
    const file = await toml(`  ${SECRET}\n`, 'key');
    expect(await ensureJwtSecret(await load({ env: { CXG_AUTH_JWT_SECRET_FILE: file } }))).toBe(SECRET);
  });

  it('with a remote verifier and no secret there is nothing to sign with', async () => {
    const s = await load({ env: { CXG_AUTH_VERIFY_URL: 'http://127.0.0.1:9/verify' } });
    const err = await settingsError(ensureJwtSecret(s));
    expect(err.message).toContain('auth.verify_url is set');
  });
});
