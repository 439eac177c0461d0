/**
 * Durations and byte sizes as people write them in settings: `1h30m`,
 * `250ms`, `64MiB`. Parsing returns undefined on anything else so the caller
 * can say which setting was wrong and where it came from.
 */

const DURATION_UNITS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };
const DURATION_PART = /(\d+)(ms|h|m|s)/y;

/**
 * Milliseconds from `250ms`, `30s`, `5m`, `2h`, `1h30m` (units may be
 * combined, each once, largest first) or a bare integer of milliseconds.
 */
export function parseDuration(text: string): number | undefined {
  const s = text.trim();
  if (/^\d+$/.test(s)) return safeInt(Number(s));
  let total = 0;
  let lastUnit = Infinity;
  DURATION_PART.lastIndex = 0;
  while (DURATION_PART.lastIndex < s.length) {
    const m = DURATION_PART.exec(s);
    if (m === null) return undefined;
    const unit = DURATION_UNITS[m[2] as string] as number;
    // `1m1h` or `5s5s` is almost certainly a typo, not a sum.
    if (unit >= lastUnit) return undefined;
    lastUnit = unit;
    total += Number(m[1]) * unit;
  }
  return s.length === 0 ? undefined : safeInt(total);
}

/** The shortest `1h30m` form of a millisecond count (`0ms` for zero). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0ms';
  let rest = ms;
  let out = '';
  for (const [unit, size] of Object.entries(DURATION_UNITS)) {
    const n = Math.floor(rest / size);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * size;
    }
  }
  return out;
}

const SIZE_UNITS: Record<string, number> = { GiB: 1024 ** 3, MiB: 1024 ** 2, KiB: 1024, B: 1 };

/**
 * Bytes from `512KiB`, `64MiB`, `1GiB`, `100B` or a bare integer of bytes.
 * Decimal units (`MB`) are refused: whether they mean 10^6 or 2^20 is exactly
 * the ambiguity a frame limit should not have.
 */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+)\s*(GiB|MiB|KiB|B)?$/.exec(text.trim());
  if (m === null) return undefined;
  return safeInt(Number(m[1]) * (m[2] === undefined ? 1 : (SIZE_UNITS[m[2]] as number)));
}

/** The largest unit that divides the size exactly: `64MiB`, `1536KiB`, `1000B`. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of Object.entries(SIZE_UNITS)) {
    if (bytes !== 0 && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return `${bytes}B`;
}

function safeInt(n: number): number | undefined {
  return Number.isSafeInteger(n) ? n : undefined;
}
