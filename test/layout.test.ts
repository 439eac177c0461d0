/**
 * The source tree keeps the shape README's "Layout" describes: src/shared
 * on the ground, src/main and src/workers above it and never importing each
 * other, no import circles (type-only imports count: a circle is a circle
 * to a reader), and no file a newcomer cannot read in one sitting.
 */
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '..');
const SRC = path.join(ROOT, 'src');
const MAX_LINES = 350;

function sources(): string[] {
  return readdirSync(SRC, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join('src', f))
    .sort();
}

/** Relative imports of a file (static, dynamic and re-exports), as repo paths of .ts files. */
function importsOf(file: string): string[] {
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  const out = new Set<string>();
  for (const m of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm)) {
    const spec = m[1] as string;
    out.add(path.normalize(path.join(path.dirname(file), spec)).replace(/\.js$/, '.ts'));
  }
  return [...out];
}

const files = sources();
const graph = new Map(files.map((f) => [f, importsOf(f).filter((t) => files.includes(t))]));

describe('src/ layout', () => {
  it(`no file is longer than ${MAX_LINES} lines`, () => {
    const long = files
      .map((f) => ({ f, lines: readFileSync(path.join(ROOT, f), 'utf8').split('\n').length - 1 }))
      .filter((x) => x.lines > MAX_LINES)
      .map((x) => `${x.f}: ${x.lines}`);
    expect(long).toEqual([]);
  });

  it('src/shared imports neither src/main nor src/workers; those two never import each other', () => {
    const layer = (f: string): string => f.split(path.sep)[1] ?? '';
    const bad: string[] = [];
    for (const [f, targets] of graph) {
      for (const t of targets) {
        const from = layer(f);
        const to = layer(t);
        if (from === to || to === 'shared') continue;
        if (from === 'index.ts') continue;
        bad.push(`${f} -> ${t}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('has no import circles', () => {
    const circles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const stack: string[] = [];
    const visit = (f: string): void => {
      state.set(f, 'open');
      stack.push(f);
      for (const t of graph.get(f) ?? []) {
        if (state.get(t) === 'open') circles.push([...stack.slice(stack.indexOf(t)), t].join(' -> '));
        else if (state.get(t) === undefined) visit(t);
      }
      stack.pop();
      state.set(f, 'done');
    };
    for (const f of files) if (state.get(f) === undefined) visit(f);
    expect(circles).toEqual([]);
  });

  it('the import reader sees the imports (a check that the checks above can fail)', () => {
    expect(graph.get(path.join('src', 'main', 'gateway.ts'))).toContain(path.join('src', 'main', 'front', 'front.ts'));
  });
});
