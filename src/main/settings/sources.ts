/**
 * Raw setting values from the three places they can come from: a TOML file,
 * CXG_* environment variables and command-line flags. Nothing is parsed here
 * beyond finding which setting a value belongs to; a name that belongs to no
 * setting is an error, because a misspelt setting silently left at its
 * default is worse than a refusal to start.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseToml, TomlDate } from 'smol-toml';
import type { InputForm } from './kinds.js';
import { CONFIG_ENV, envName, isNonSettingEnv, SETTINGS } from './spec.js';
import type { SettingSpec } from './spec.js';

export interface RawInput {
  spec: SettingSpec;
  raw: unknown;
  form: InputForm;
  /** Where it came from, as shown in errors: a file path, an env var or a flag. */
  source: string;
}

export interface SourceResult {
  inputs: RawInput[];
  errors: string[];
  /** The config file named by this source, if any. */
  config?: { path: string; source: string };
}

const SPECS: readonly SettingSpec[] = SETTINGS;
const BY_KEY = new Map(SPECS.map((s) => [s.key, s]));
const BY_ENV = new Map(SPECS.map((s) => [envName(s.key), s]));
const BY_FLAG = new Map<string, SettingSpec>(SPECS.flatMap((s) => (s.flag === undefined ? [] : [[s.flag, s] as const])));
export const CONFIG_FLAG = '--config';
/** Every proper prefix of a key (`auth`, `auth.jwt`): the TOML tables settings live in. */
const TABLES = new Set(SPECS.flatMap((s) => s.key.split('.').slice(0, -1).map((_p, i, parts) => parts.slice(0, i + 1).join('.'))));

export function readFlags(argv: readonly string[]): SourceResult {
  const out: SourceResult = { inputs: [], errors: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--')) {
      out.errors.push(`unexpected argument ${JSON.stringify(arg)}`);
      continue;
    }
    const eq = arg.indexOf('=');
    const flag = eq === -1 ? arg : arg.slice(0, eq);
    const spec = BY_FLAG.get(flag);
    if (spec === undefined && flag !== CONFIG_FLAG) {
      out.errors.push(`unknown flag ${flag}${didYouMean(flag, [...BY_FLAG.keys(), CONFIG_FLAG])}`);
      // Its value, if it has one, would only add a second, confusing error.
      if (eq === -1 && argv[i + 1]?.startsWith('--') === false) i++;
      continue;
    }
    let value: string | undefined = eq === -1 ? undefined : arg.slice(eq + 1);
    if (value === undefined) {
      const next = argv[i + 1];
      if (spec?.kind.type === 'bool' && (next === undefined || next.startsWith('--'))) {
        value = 'true';
      } else if (next === undefined) {
        out.errors.push(`${flag} needs a value`);
        continue;
      } else {
        value = next;
        i++;
      }
    }
    if (spec === undefined) out.config = { path: value, source: flag };
    else out.inputs.push({ spec, raw: value, form: 'text', source: flag });
  }
  return out;
}

/** CXG_* variables. An empty variable counts as unset (the usual meaning in compose files). */
export function readEnv(env: NodeJS.ProcessEnv): SourceResult {
  const out: SourceResult = { inputs: [], errors: [] };
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('CXG_') || value === undefined || value === '') continue;
    if (name === CONFIG_ENV) {
      out.config = { path: value, source: name };
      continue;
    }
    if (isNonSettingEnv(name)) continue;
    const spec = BY_ENV.get(name);
    if (spec === undefined) out.errors.push(`unknown environment variable ${name}: CXG_* names are reserved for settings${didYouMean(name, [...BY_ENV.keys()])}`);
    else out.inputs.push({ spec, raw: value, form: 'text', source: name });
  }
  return out;
}

export async function readConfigFile(file: string): Promise<SourceResult> {
  const out: SourceResult = { inputs: [], errors: [] };
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    out.errors.push(`config file ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    return out;
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text);
  } catch (err) {
    out.errors.push(`config file ${file}: not valid TOML: ${err instanceof Error ? err.message : String(err)}`);
    return out;
  }
  walkTable(doc, '', file, out);
  return out;
}

function walkTable(table: Record<string, unknown>, prefix: string, file: string, out: SourceResult): void {
  for (const [name, value] of Object.entries(table)) {
    const key = prefix === '' ? name : `${prefix}.${name}`;
    const spec = BY_KEY.get(key);
    if (spec !== undefined) out.inputs.push({ spec, raw: value, form: 'toml', source: file });
    else if (TABLES.has(key) && isTable(value)) walkTable(value, key, file, out);
    else if (TABLES.has(key)) out.errors.push(`${key} (from ${file}): expected a table of settings ([${key}])`);
    else out.errors.push(`unknown setting ${key} (from ${file})${didYouMean(key, [...BY_KEY.keys()])}`);
  }
}

function isTable(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof TomlDate);
}

/** `; did you mean X?` when one candidate is a likely typo of `word`. */
function didYouMean(word: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 4)) + 1;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best === undefined ? '' : `; did you mean ${best}?`;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_v, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min((prev[j] as number) + 1, (cur[j - 1] as number) + 1, (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length] as number;
}
