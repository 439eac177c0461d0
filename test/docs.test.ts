/**
 * The documentation cannot drift from the code: the configuration reference
 * is generated from the settings table and must be current; every TOML
 * example loads through the real settings loader; every setting key, CXG_*
 * variable, error code, metric, close code, admin route and link the docs
 * name exists; and the README's library example type-checks against
 * src/index.ts.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { CONFIG_DOCS_PATH, renderConfigDocs } from '../scripts/gen-config-docs.js';
import { REPO_ROOT, typecheckSnippets } from '../scripts/typecheck-snippets.js';
import { GatewayMetrics } from '../src/main/metrics.js';
import { loadSettings } from '../src/main/settings/load.js';
import { CONFIG_ENV, SETTINGS, envName, isNonSettingEnv } from '../src/main/settings/spec.js';
import { CloseCode } from '../src/shared/close-codes.js';
import { ERROR_CODES } from '../src/shared/errors.js';
import { testTempRoot } from './temp-root.js';

const DOCS = ['README.md', 'docs/configuration.md', 'docs/operations.md', 'deploy/README.md'];
const text: Record<string, string> = {};
let scratch: string;

beforeAll(async () => {
  for (const d of DOCS) text[d] = await readFile(path.join(REPO_ROOT, d), 'utf8');
  const base = testTempRoot();
  await mkdir(base, { recursive: true });
  scratch = await mkdtemp(path.join(base, 'docs-'));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

/** Fenced code blocks of one language. */
function blocks(markdown: string, lang: string): string[] {
  return [...markdown.matchAll(/^```(\w*)\n([\s\S]*?)^```$/gm)].filter((m) => m[1] === lang).map((m) => m[2] as string);
}

/** The text of a `## heading` section, up to the next heading of that level. */
function section(markdown: string, heading: string): string {
  const start = markdown.indexOf(`\n## ${heading}\n`);
  if (start < 0) throw new Error(`no section "## ${heading}"`);
  const next = markdown.indexOf('\n## ', start + 1);
  return markdown.slice(start, next < 0 ? undefined : next);
}

/** Rows of the first Markdown table in `markdown`, as cells (header and rule excluded). */
function tableRows(markdown: string): string[][] {
  const lines = markdown.split('\n');
  const first = lines.findIndex((l) => l.startsWith('|'));
  const rows: string[][] = [];
  for (const line of lines.slice(first + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(line.slice(1, -1).split(/(?<!\\)\|/).map((c) => c.trim()));
  }
  return rows;
}

/** Inline code spans, outside fenced blocks (whose backticks would pair up with the wrong ones). */
function codeSpans(markdown: string): string[] {
  const prose = markdown.replace(/^```[\s\S]*?^```$/gm, '');
  return [...prose.matchAll(/`([^`\n]+)`/g)].map((m) => m[1] as string);
}

describe('docs/configuration.md', () => {
  it('is what npm run docs:config generates from the settings table', async () => {
    const have = await readFile(CONFIG_DOCS_PATH, 'utf8');
    // On failure: run `npm run docs:config` and commit the result.
    expect(have === renderConfigDocs(), 'docs/configuration.md is out of date: run npm run docs:config').toBe(true);
  });

  it('lists every setting with its environment variable and flag', () => {
    const doc = text['docs/configuration.md'] as string;
    for (const s of SETTINGS) {
      const row = doc.split('\n').find((l) => l.startsWith(`| \`${s.key}\` |`));
      expect(row, s.key).toBeDefined();
      expect(row).toContain(`\`${envName(s.key)}\``);
      if ('flag' in s && s.flag !== undefined) expect(row).toContain(`\`${s.flag}\``);
    }
  });
});

describe('examples in README.md and docs/', () => {
  it('every TOML example is a valid settings file', async () => {
    let n = 0;
    for (const d of DOCS) {
      for (const toml of blocks(text[d] as string, 'toml')) {
        const file = path.join(scratch, `example-${n++}.toml`);
        await writeFile(file, toml);
        // A secret, so that an example naming auth.jwt.secret_file is not asked to have that file here.
        await expect(loadSettings({ argv: ['--config', file], env: { CXG_AUTH_JWT_SECRET: 'x'.repeat(32) }, cwd: scratch }), `${d}:\n${toml}`).resolves.toBeDefined();
      }
    }
    expect(n).toBeGreaterThanOrEqual(2);
  });

  it('every CXG_* variable named anywhere is one the gateway accepts', async () => {
    const accepted = new Set(SETTINGS.map((s) => envName(s.key)));
    const sources = [...DOCS, 'Dockerfile', ...(await deployFiles())];
    const bad: string[] = [];
    for (const f of sources) {
      const body = text[f] ?? (await readFile(path.join(REPO_ROOT, f), 'utf8'));
      for (const m of body.matchAll(/\bCXG_[A-Z0-9_]*[A-Z0-9]\b/g)) {
        const name = m[0];
        // CXG_<SECTION>_<KEY> is the pattern itself, not a variable.
        if (name === 'CXG_' || /^CXG_<|CXG_SECTION/.test(name)) continue;
        // CXG_PORT is named as the example of a variable Kubernetes would inject and the gateway refuses.
        if (!accepted.has(name) && !isNonSettingEnv(name) && name !== CONFIG_ENV && name !== 'CXG_PORT') bad.push(`${f}: ${name}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('every setting key in backticks exists', () => {
    const keys = new Set<string>(SETTINGS.map((s) => s.key));
    const sections = new Set([...keys].map((k) => k.split('.')[0] as string));
    const bad: string[] = [];
    for (const d of DOCS) {
      for (const span of codeSpans(text[d] as string)) {
        for (const m of span.matchAll(/(?<![\w./])([a-z_]+(?:\.[a-z_0-9]+)+)(?![\w(])/g)) {
          const word = m[1] as string;
          // File names (`auth.json`) are not keys.
          if (/\.(json|jsonl|toml|ya?ml|md|ts|m?js|gz)$/.test(word)) continue;
          if (sections.has(word.split('.')[0] as string) && !keys.has(word) && !keys.has(word.replace(/\.\*$/, ''))) {
            // A table prefix (`store.s3`, `auth.jwt`, `model.*`) is fine too.
            if (![...keys].some((k) => k.startsWith(`${word}.`))) bad.push(`${d}: ${word}`);
          }
        }
      }
    }
    expect(bad).toEqual([]);
  });

  it('every codex-app-gateway command named exists', () => {
    const commands = new Set(['serve', 'config', 'token', 'drain', 'help']);
    const bad: string[] = [];
    for (const d of DOCS) {
      for (const m of (text[d] as string).matchAll(/codex-app-gateway (\w[\w-]*)/g)) {
        const word = m[1] as string;
        // Prose like "codex-app-gateway on Kubernetes" is not a command line.
        if (/^[a-z]+$/.test(word) && !commands.has(word) && !['on', 'is', 'runs', 'in'].includes(word)) bad.push(`${d}: ${word}`);
      }
    }
    expect(bad).toEqual([]);
  });

  it('relative links point at files and headings that exist', async () => {
    const bad: string[] = [];
    for (const d of DOCS) {
      for (const m of (text[d] as string).matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1] as string;
        if (/^[a-z]+:/.test(target)) continue;
        const [file, anchor] = target.split('#') as [string, string | undefined];
        const abs = file === '' ? path.join(REPO_ROOT, d) : path.resolve(REPO_ROOT, path.dirname(d), file);
        let body: string;
        try {
          body = await readFile(abs, 'utf8');
        } catch {
          // The benchmarks' README is written with the benchmarks, outside this suite's files.
          if (target === 'bench/README.md') continue;
          bad.push(`${d}: ${target} (no such file)`);
          continue;
        }
        if (anchor !== undefined && !headingSlugs(body).has(anchor)) bad.push(`${d}: ${target} (no such heading)`);
      }
    }
    expect(bad).toEqual([]);
  });
});

/** GitHub's anchors of a Markdown file's headings. */
function headingSlugs(markdown: string): Set<string> {
  const slugs = new Set<string>();
  for (const m of markdown.matchAll(/^#{1,6} (.+)$/gm)) {
    slugs.add(
      (m[1] as string)
        .trim()
        .toLowerCase()
        .replace(/[^\p{L}\p{N}\s_-]/gu, '')
        .replace(/\s/g, '-'),
    );
  }
  return slugs;
}

async function deployFiles(): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(path.join(REPO_ROOT, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) await walk(rel);
      else out.push(rel);
    }
  };
  await walk('deploy');
  return out;
}

describe('docs/operations.md', () => {
  it('every error code the gateway can raise has a troubleshooting row', () => {
    const rows = tableRows(section(text['docs/operations.md'] as string, 'Troubleshooting by error code'));
    const documented = rows.map((r) => codeSpans(r[0] ?? '')[0]);
    expect(documented.sort()).toEqual(Object.keys(ERROR_CODES).sort());
  });

  it('names only error codes that exist in the source', async () => {
    const known = new Set<string>(Object.keys(ERROR_CODES));
    // HTTP APIs answer a few codes of their own (GW_NOT_FOUND, …): any code the source spells counts.
    for (const dir of ['src/main', 'src/shared', 'src/workers']) {
      for (const f of await readdir(path.join(REPO_ROOT, dir), { recursive: true })) {
        if (!f.endsWith('.ts')) continue;
        for (const m of (await readFile(path.join(REPO_ROOT, dir, f), 'utf8')).matchAll(/'(GW_[A-Z_]+)'/g)) known.add(m[1] as string);
      }
    }
    const bad = DOCS.flatMap((d) => [...(text[d] as string).matchAll(/\bGW_[A-Z_]*[A-Z]\b/g)].map((m) => m[0]).filter((c) => !known.has(c)).map((c) => `${d}: ${c}`));
    expect(bad).toEqual([]);
  });

  it('the metrics table lists every gateway metric with its type and labels', () => {
    const metrics = new GatewayMetrics();
    try {
      const actual = metrics.registry
        .getMetricsAsArray()
        .map((m) => m as unknown as { name: string; type: string; labelNames?: string[] })
        .filter((m) => m.name.startsWith('cxg_'))
        .map((m) => ({ name: m.name, type: m.type, labels: [...(m.labelNames ?? [])].sort() }));
      const rows = tableRows(section(text['docs/operations.md'] as string, 'Metrics')).map((r) => ({
        name: codeSpans(r[0] ?? '')[0] ?? '',
        type: r[1] ?? '',
        labels: codeSpans(r[2] ?? '').sort(),
      }));
      const byName = (a: { name: string }, b: { name: string }): number => a.name.localeCompare(b.name);
      expect(rows.sort(byName)).toEqual(actual.sort(byName));
    } finally {
      metrics.close();
    }
  });

  it('every shipped alert rule appears with its exact expression', async () => {
    const raw = await readFile(path.join(REPO_ROOT, 'deploy/monitoring/prometheusrule.yaml'), 'utf8');
    const doc = parseAllDocuments(raw).map((d) => d.toJS() as { spec: { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> } })[0];
    const rules = doc?.spec.groups.flatMap((g) => g.rules) ?? [];
    expect(rules.length).toBeGreaterThan(5);
    const ops = section(text['docs/operations.md'] as string, 'What to alert on').replace(/\s+/g, ' ');
    const missing = rules.filter((r) => !ops.includes(`**${r.alert}**`) || !ops.includes(`\`${r.expr.trim().replace(/\s+/g, ' ')}\``));
    expect(missing.map((r) => r.alert)).toEqual([]);
  });

  it('the close-code table covers every code a client can see', () => {
    const rows = tableRows(section(text['docs/operations.md'] as string, 'What clients see').split('Close codes of an open connection:')[1] ?? '');
    const documented = rows.map((r) => Number(r[0]));
    const codes = Object.values(CloseCode).filter((c) => c !== CloseCode.Normal);
    expect(documented.sort()).toEqual([...codes].sort());
  });

  it('the admin API table lists exactly the routes admin-api.ts registers', async () => {
    const src = await readFile(path.join(REPO_ROOT, 'src/main/http/admin-api.ts'), 'utf8');
    const registered = [...src.matchAll(/app\.(get|post)\('(\/admin\/[^']+)'/g)].map((m) => `${(m[1] as string).toUpperCase()} ${m[2] as string}`);
    const rows = tableRows(section(text['docs/operations.md'] as string, 'Admin API and the drain command'));
    const documented = rows.map((r) => codeSpans(r[0] ?? '')[0]);
    expect(documented.sort()).toEqual(registered.sort());
  });
});

describe('README.md library API', () => {
  it('the example and the call table type-check against src/index.ts', () => {
    const readme = section(text['README.md'] as string, 'Library API');
    const examples = blocks(readme, 'ts');
    expect(examples.length).toBeGreaterThan(0);
    const snippets = new Map<string, string>();
    examples.forEach((code, i) => snippets.set(`README example ${i + 1}`, `declare function keyFor(workspaceId: string): Promise<string>;\n${code}\nexport {};\n`));

    // `sup.touch(key)` → a reference to Supervisor#touch, and so on for each row of the table.
    const receivers: Record<string, string> = { sup: 'sup', handle: 'handle', reaper: 'reaper', Supervisor: 'Supervisor' };
    const refs: string[] = [];
    for (const row of tableRows(readme)) {
      for (const call of codeSpans(row[0] ?? '')) {
        const m = /^(?:new )?([A-Za-z0-9]+)(?:\.([A-Za-z0-9]+))?\(/.exec(call);
        if (m === null) throw new Error(`unrecognised call ${call}`);
        const [, head, member] = m as unknown as [string, string, string | undefined];
        refs.push(member === undefined ? `void ${head};` : `void ${receivers[head] ?? head}.${member};`);
      }
    }
    snippets.set(
      'README call table',
      [
        "import { ChildHandle, FileObjectStore, IdleReaper, S3ObjectStore, Supervisor, signWorkspaceToken } from 'codex-app-gateway';",
        'declare const sup: Supervisor;',
        'declare const handle: ChildHandle;',
        'declare const reaper: IdleReaper;',
        'void FileObjectStore; void S3ObjectStore; void signWorkspaceToken;',
        ...refs,
        'export {};',
      ].join('\n'),
    );
    expect(refs.length).toBeGreaterThan(10);
    const problems = typecheckSnippets(snippets);
    expect(problems.map((p) => `${p.snippet} line ${p.line}: ${p.message}`)).toEqual([]);
  }, 120_000);
});
