/**
 * Loading the gateway's settings: defaults < TOML file (--config FILE or
 * CXG_CONFIG) < CXG_* environment < flags. Every problem is collected and
 * reported at once in one GW_SETTINGS error, each line naming the setting,
 * where the value came from and what was expected.
 */
import os from 'node:os';
import path from 'node:path';
import { GatewayError } from '../../shared/errors.js';
import { readJwtSecretFile } from '../auth/jwt-secret.js';
import { expectedOf, parseValue, plainValue, tomlLiteral, typeLabel } from './kinds.js';
import type { SettingValue } from './kinds.js';
import { fieldPath, SETTINGS, envName } from './spec.js';
import type { DefaultInputs, SettingSpec, Settings } from './spec.js';
import { CONFIG_FLAG, readConfigFile, readEnv, readFlags } from './sources.js';
import type { RawInput } from './sources.js';
import { parseStoreUrl } from './store-url.js';
import type { StoreSpec } from '../../shared/store-spec.js';

export type { Settings, SettingKey } from './spec.js';
export { SETTINGS, envName } from './spec.js';
export { ensureJwtSecret } from '../auth/jwt-secret.js';

export interface LoadSettingsInput {
  /** Flags, e.g. `['--config', 'gw.toml', '--port', '9000']`. */
  argv?: readonly string[];
  env?: NodeJS.ProcessEnv;
  /** Relative paths (config file, data.dir, …) are resolved against it. */
  cwd?: string;
}

const SPECS: readonly SettingSpec[] = SETTINGS;
const DEFAULT_SOURCE = 'default';

/** Where each value of a loaded Settings came from, for `config check`. */
const sources = new WeakMap<Settings, ReadonlyMap<string, string>>();

export async function loadSettings(input: LoadSettingsInput = {}): Promise<Settings> {
  const env = input.env ?? process.env;
  const cwd = input.cwd ?? process.cwd();
  const flags = readFlags(input.argv ?? []);
  const fromEnv = readEnv(env);
  const config = flags.config ?? fromEnv.config;
  const file = config === undefined ? undefined : await readConfigFile(path.resolve(cwd, config.path));
  const errors = [...(file?.errors ?? []), ...fromEnv.errors, ...flags.errors];

  // Later inputs win. Every input is checked, even an overridden one: a
  // broken file stays broken whatever the environment says.
  const chosen = new Map<string, { value: SettingValue; source: string }>();
  for (const raw of [...(file?.inputs ?? []), ...fromEnv.inputs, ...flags.inputs]) {
    const value = parseValue(raw.spec.kind, raw.raw, raw.form, cwd);
    if (value === undefined) errors.push(badValue(raw));
    else chosen.set(raw.spec.key, { value, source: raw.source });
  }

  const resolved = new Map<string, { value: SettingValue | undefined; source: string }>();
  const defaultInputs = (): DefaultInputs => ({
    cwd,
    dataDir: resolved.get('data.dir')?.value as string,
    listenPort: resolved.get('listen.port')?.value as number,
    cores: os.availableParallelism(),
    memoryBytes: memoryBytes(),
  });
  for (const spec of SPECS) {
    const given = chosen.get(spec.key);
    if (given !== undefined || spec.default === undefined) {
      resolved.set(spec.key, given ?? { value: undefined, source: DEFAULT_SOURCE });
      continue;
    }
    const raw = typeof spec.default === 'function' ? spec.default(defaultInputs()) : spec.default;
    const value = parseValue(spec.kind, raw, 'toml', cwd);
    // Only a computed default can fail (internal.port = 65535 + 1).
    if (value === undefined) errors.push(`${spec.key} (default ${spec.defaultText ?? ''} = ${JSON.stringify(raw)}): expected ${expectedOf(spec.kind, 'toml')}; set ${spec.key}`);
    resolved.set(spec.key, { value, source: DEFAULT_SOURCE });
  }

  errors.push(...(await crossChecks(resolved)));
  if (errors.length > 0) {
    const message = errors.length === 1 ? (errors[0] as string) : `${errors.length} invalid settings:\n  ${errors.join('\n  ')}`;
    throw new GatewayError('GW_SETTINGS', message, { details: { errors } });
  }

  const settings = nest(resolved);
  sources.set(settings, new Map([...resolved].map(([k, r]) => [k, r.source])));
  return settings;
}

type Resolved = ReadonlyMap<string, { value: SettingValue | undefined; source: string }>;

async function crossChecks(r: Resolved): Promise<string[]> {
  const errors: string[] = [];
  const listen = r.get('listen.port');
  const internal = r.get('internal.port');
  if (listen?.value !== 0 && listen?.value === internal?.value) {
    errors.push(`internal.port (from ${internal?.source}): must differ from listen.port (${String(listen?.value)})`);
  }
  if (r.get('restart.handover')?.value === true) {
    // Adopted children call back to the internal port their first gateway gave them.
    if (internal?.value === 0) errors.push('restart.handover: needs a fixed internal.port (adopted children keep the internal URL they were started with)');
    if (r.get('spawn.sandbox')?.value === 'bubblewrap') errors.push('restart.handover: not with spawn.sandbox = bubblewrap (bwrap ends a child with the gateway that started it)');
    if (((r.get('cluster.etcd.endpoints')?.value as string[] | undefined) ?? []).length > 0) errors.push('restart.handover: not with [cluster] (a successor on another node cannot adopt; each start claims its workspaces)');
  }
  // An explicitly configured key file must work now, not at the first client.
  const secretFile = r.get('auth.jwt.secret_file');
  const needsFile = r.get('auth.jwt.secret')?.value === undefined && r.get('auth.verify_url')?.value === undefined;
  if (needsFile && secretFile !== undefined && secretFile.source !== DEFAULT_SOURCE) {
    try {
      await readJwtSecretFile(secretFile.value as string);
    } catch (err) {
      const reason = err instanceof GatewayError ? err.message.replace(/^auth\.jwt\.secret_file /, '') : `cannot read ${String(secretFile.value)} (${(err as NodeJS.ErrnoException).code ?? String(err)})`;
      errors.push(`auth.jwt.secret_file (from ${secretFile.source}): ${reason}`);
    }
  }
  return errors;
}

function badValue(raw: RawInput): string {
  return `${raw.spec.key} (from ${raw.source}): expected ${expectedOf(raw.spec.kind, raw.form)}, got ${shown(raw)}`;
}

function shown({ raw, spec }: RawInput): string {
  if (spec.secret === true) return typeof raw === 'string' ? `a hidden value of ${raw.length} characters` : `a ${typeof raw}`;
  if (typeof raw === 'string') return JSON.stringify(raw.length > 80 ? `${raw.slice(0, 80)}…` : raw);
  if (raw instanceof Date) return 'a date';
  if (Array.isArray(raw)) return JSON.stringify(raw).slice(0, 80);
  if (typeof raw === 'object' && raw !== null) return 'a table';
  return String(raw);
}

function nest(resolved: Resolved): Settings {
  const root: Record<string, unknown> = {};
  for (const spec of SPECS) {
    const parts = fieldPath(spec);
    let node = root;
    for (const part of parts.slice(0, -1)) node = (node[part] ??= {}) as Record<string, unknown>;
    node[parts.at(-1) as string] = resolved.get(spec.key)?.value;
  }
  return root as Settings;
}

function valueOf(settings: Settings, spec: SettingSpec): SettingValue | undefined {
  let node: unknown = settings;
  for (const part of fieldPath(spec)) node = (node as Record<string, unknown> | undefined)?.[part];
  return node as SettingValue | undefined;
}

/**
 * The resolved settings, one `key = value` line each, as TOML (so the output
 * of `config check` reads back as a settings file), with where each value
 * came from when it is not the default.
 */
export function describeSettings(settings: Settings, options: { maskSecrets?: boolean } = {}): string {
  const mask = options.maskSecrets ?? true;
  const from = sources.get(settings);
  const width = Math.max(...SPECS.map((s) => s.key.length));
  const lines = SPECS.map((spec) => {
    const value = valueOf(settings, spec);
    if (value === undefined) return `# ${spec.key} is unset`;
    const literal = spec.secret === true && mask ? '"********"' : tomlLiteral(spec.kind, value);
    const source = from?.get(spec.key);
    const note = source === undefined || source === DEFAULT_SOURCE ? '' : `  # from ${source}`;
    return `${spec.key.padEnd(width)} = ${literal}${note}`;
  });
  return `${lines.join('\n')}\n`;
}

/** Every setting with its type, default, environment variable and flag. */
export function settingsHelp(): string {
  const head = [
    'Settings, lowest precedence first: defaults, a TOML file (--config FILE or CXG_CONFIG), CXG_* environment variables, flags.',
    'In the file, a key lives in the table named by its prefix: [listen] port = 8080, [auth.jwt] secret = "…", shards = 2 at the top.',
    'Durations: 250ms, 30s, 5m, 2h, 1h30m; a bare integer (or a TOML integer) is milliseconds.',
    'Sizes: 512KiB, 64MiB, 1GiB; a bare integer is bytes. Lists: comma-separated in the environment, arrays in TOML.',
    'Unknown keys and unknown CXG_* variables are refused. An empty variable counts as unset.',
    '',
  ];
  const blocks = SPECS.map((spec) => {
    const where = [`env ${envName(spec.key)}`, ...(spec.flag === undefined ? [] : [`flag ${spec.flag}`])].join(', ');
    return [`  ${spec.key}  (${typeLabel(spec.kind)}${spec.secret === true ? ', secret' : ''}; default: ${defaultText(spec)})`, `      ${where}`, `      ${spec.description}`].join('\n');
  });
  return `${head.join('\n')}\n${blocks.join('\n')}\n  ${CONFIG_FLAG} FILE  (env CXG_CONFIG)\n      TOML settings file.\n`;
}

function defaultText(spec: SettingSpec): string {
  if (spec.defaultText !== undefined) return spec.defaultText;
  if (spec.default === undefined) return 'unset';
  return typeof spec.default === 'function' ? 'computed' : plainValue(spec.kind, spec.default);
}

/** The cgroup's memory limit when there is one (Node reports 0 or a huge number otherwise), else the host's memory. */
function memoryBytes(): number {
  const total = os.totalmem();
  const limit = process.constrainedMemory?.() ?? 0;
  return limit > 0 && limit < total ? limit : total;
}

/** The store the settings name, with the S3 options applied to an s3:// URL. */
export function storeSpecFromSettings(settings: Settings): StoreSpec {
  const loc = parseStoreUrl(settings.store.url);
  // loadSettings has already refused any other URL.
  if (loc === undefined) throw new Error(`store.url ${settings.store.url} is not a store URL`);
  if (loc.kind === 'file') return loc;
  const s3 = settings.store.s3;
  return {
    ...loc,
    region: s3.region,
    forcePathStyle: s3.forcePathStyle,
    ...(s3.endpoint === undefined ? {} : { endpoint: s3.endpoint }),
  };
}
