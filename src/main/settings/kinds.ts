/**
 * The kinds of value a setting can hold, and how each is read from the two
 * shapes input arrives in: text (environment variables, flags) and typed TOML
 * values. Defaults are written in the TOML shape and go through the same
 * checks, so a computed default that falls out of range is reported like any
 * other bad value.
 */
import path from 'node:path';
import { formatDuration, formatSize, parseDuration, parseSize } from './units.js';

export type Kind =
  | { readonly type: 'string'; readonly minLength?: number; readonly pattern?: RegExp; readonly expected?: string }
  /** Resolved against the working directory. `command: true` keeps a bare name (no `/`) for a PATH lookup. */
  | { readonly type: 'path'; readonly command?: boolean }
  | { readonly type: 'int'; readonly min: number; readonly max: number }
  | { readonly type: 'bool' }
  /** Milliseconds. */
  | { readonly type: 'duration'; readonly min: number; readonly max: number }
  /** Bytes. */
  | { readonly type: 'size'; readonly min: number; readonly max: number }
  | { readonly type: 'url'; readonly protocols: readonly string[]; readonly check?: (u: URL) => boolean; readonly expected?: string }
  | { readonly type: 'enum'; readonly values: readonly string[] }
  | { readonly type: 'list'; readonly item?: RegExp; readonly itemExpected?: string };

export type SettingValue = string | number | boolean | readonly string[];

/** The TypeScript type of a resolved value of kind K. */
export type KindValue<K> = K extends { type: 'int' | 'duration' | 'size' }
  ? number
  : K extends { type: 'bool' }
    ? boolean
    : K extends { type: 'enum'; values: readonly (infer V)[] }
      ? V
      : K extends { type: 'list' }
        ? string[]
        : string;

/** Where a raw value came from decides how it is read. */
export type InputForm = 'text' | 'toml';

/** The value, or undefined when `raw` is not a valid value of this kind. */
export function parseValue(kind: Kind, raw: unknown, form: InputForm, cwd: string): SettingValue | undefined {
  switch (kind.type) {
    case 'string': {
      if (typeof raw !== 'string' || raw.length < (kind.minLength ?? 1)) return undefined;
      return kind.pattern === undefined || kind.pattern.test(raw) ? raw : undefined;
    }
    case 'path': {
      if (typeof raw !== 'string' || raw === '') return undefined;
      return kind.command === true && !raw.includes('/') ? raw : path.resolve(cwd, raw);
    }
    case 'int': {
      const n = form === 'text' ? (typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN) : raw;
      return typeof n === 'number' && Number.isSafeInteger(n) && n >= kind.min && n <= kind.max ? n : undefined;
    }
    case 'bool': {
      if (form === 'toml') return typeof raw === 'boolean' ? raw : undefined;
      const t = typeof raw === 'string' ? raw.trim().toLowerCase() : '';
      return t === 'true' || t === '1' ? true : t === 'false' || t === '0' ? false : undefined;
    }
    case 'duration':
    case 'size': {
      // A TOML integer is milliseconds (durations) or bytes (sizes), like a bare number in text.
      const parse = kind.type === 'duration' ? parseDuration : parseSize;
      const n = typeof raw === 'string' ? parse(raw) : form === 'toml' && Number.isSafeInteger(raw) ? (raw as number) : undefined;
      return n !== undefined && n >= kind.min && n <= kind.max ? n : undefined;
    }
    case 'url': {
      if (typeof raw !== 'string') return undefined;
      let u: URL;
      try {
        u = new URL(raw);
      } catch {
        return undefined;
      }
      if (!kind.protocols.includes(u.protocol)) return undefined;
      if ((u.protocol === 'http:' || u.protocol === 'https:') && u.hostname === '') return undefined;
      // The text as given, not `u.href`: normalising adds a trailing `/` that
      // changes what `base_url + "/responses"` means.
      return kind.check === undefined || kind.check(u) ? raw : undefined;
    }
    case 'enum':
      return typeof raw === 'string' && kind.values.includes(raw) ? raw : undefined;
    case 'list': {
      const items = form === 'text' ? (typeof raw === 'string' ? splitList(raw) : undefined) : raw;
      if (!Array.isArray(items) || !items.every((i): i is string => typeof i === 'string' && i !== '')) return undefined;
      // A copy: a default list must not be shared with (and mutated by) a consumer.
      return kind.item === undefined || items.every((i) => kind.item?.test(i) === true) ? [...items] : undefined;
    }
  }
}

function splitList(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** What a valid value looks like, for `expected …` in error messages. */
export function expectedOf(kind: Kind, form: InputForm): string {
  switch (kind.type) {
    case 'string':
      return kind.expected ?? ((kind.minLength ?? 1) > 1 ? `a string of at least ${kind.minLength} characters` : 'a non-empty string');
    case 'path':
      return kind.command === true ? 'a path or a command name' : 'a path';
    case 'int':
      return kind.max === Number.MAX_SAFE_INTEGER ? `an integer of at least ${kind.min}` : `an integer ${kind.min}-${kind.max}`;
    case 'bool':
      return form === 'text' ? 'true, false, 1 or 0' : 'true or false';
    case 'duration':
      return `a duration like 250ms, 30s, 5m or 1h30m (a bare integer is milliseconds) from ${formatDuration(kind.min)} to ${formatDuration(kind.max)}`;
    case 'size':
      return `a size like 512KiB, 64MiB or 1GiB (a bare integer is bytes) from ${formatSize(kind.min)} to ${formatSize(kind.max)}`;
    case 'url':
      return kind.expected ?? `an ${kind.protocols.map((p) => p.replace(/:$/, '')).join(' or ')} URL`;
    case 'enum':
      return `one of ${kind.values.join(', ')}`;
    case 'list':
      return `a list of ${kind.itemExpected ?? 'non-empty strings'}${form === 'text' ? ', comma-separated' : ''}`;
  }
}

/** A short type label for the help text. */
export function typeLabel(kind: Kind): string {
  switch (kind.type) {
    case 'int':
      return kind.max === Number.MAX_SAFE_INTEGER ? `int >= ${kind.min}` : `int ${kind.min}-${kind.max}`;
    case 'enum':
      return kind.values.join('|');
    case 'list':
      return 'list';
    default:
      return kind.type;
  }
}

/** A value as a TOML literal, so `config check` output reads back as a settings file. */
export function tomlLiteral(kind: Kind, value: SettingValue): string {
  if (kind.type === 'duration') return JSON.stringify(formatDuration(value as number));
  if (kind.type === 'size') return JSON.stringify(formatSize(value as number));
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => JSON.stringify(v)).join(', ')}]`;
  return String(value);
}

/** A value as people write it, for the help text (`30s`, `64MiB`, `a, b`). */
export function plainValue(kind: Kind, value: SettingValue): string {
  if (kind.type === 'duration') return formatDuration(value as number);
  if (kind.type === 'size') return formatSize(value as number);
  if (Array.isArray(value)) return value.length === 0 ? '(empty)' : value.join(', ');
  return String(value);
}
