/**
 * Type-checks TypeScript that exists only in memory against the project's
 * sources and node_modules, with the project's tsconfig.json (so
 * `codex-app-gateway` resolves to src/index.ts). The tests use it for the
 * README's library example and for the Kubernetes manifests in deploy/,
 * written out as typed object literals: TypeScript's excess-property check
 * is what finds a misspelt field (`readinessProbee`) that a JSON schema
 * without `additionalProperties: false` lets through.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface SnippetProblem {
  /** The snippet's name as given. */
  snippet: string;
  /** 1-based line in the snippet. */
  line: number;
  /** Property names and array indexes from the outermost literal down to the problem. */
  path: string[];
  message: string;
}

function compilerOptions(): ts.CompilerOptions {
  const configPath = path.join(REPO_ROOT, 'tsconfig.json');
  const read = ts.readConfigFile(configPath, (f) => ts.sys.readFile(f));
  if (read.error !== undefined) throw new Error(ts.flattenDiagnosticMessageText(read.error.messageText, '\n'));
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, REPO_ROOT);
  return { ...parsed.options, noEmit: true, skipLibCheck: true };
}

/**
 * Problems in the given snippets (name → source), checked as if each were a
 * file in test/. Problems in the project's own files are not reported.
 */
export function typecheckSnippets(snippets: ReadonlyMap<string, string>): SnippetProblem[] {
  const options = compilerOptions();
  const byFile = new Map<string, { name: string; text: string }>();
  let i = 0;
  for (const [name, text] of snippets) byFile.set(path.join(REPO_ROOT, 'test', `__snippet_${i++}.ts`), { name, text });

  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  const readFile = host.readFile.bind(host);
  host.getSourceFile = (fileName, languageVersion, ...rest) => {
    const v = byFile.get(path.resolve(fileName));
    return v === undefined ? getSourceFile(fileName, languageVersion, ...rest) : ts.createSourceFile(fileName, v.text, languageVersion, true);
  };
  host.fileExists = (fileName) => byFile.has(path.resolve(fileName)) || fileExists(fileName);
  host.readFile = (fileName) => byFile.get(path.resolve(fileName))?.text ?? readFile(fileName);

  const program = ts.createProgram([...byFile.keys()], options, host);
  const problems: SnippetProblem[] = [];
  for (const [file, { name }] of byFile) {
    const sf = program.getSourceFile(file);
    if (sf === undefined) throw new Error(`snippet ${name} was not compiled`);
    for (const d of [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)]) {
      const start = d.start ?? 0;
      problems.push({
        snippet: name,
        line: sf.getLineAndCharacterOfPosition(start).line + 1,
        path: literalPath(sf, start),
        message: ts.flattenDiagnosticMessageText(d.messageText, '\n'),
      });
    }
  }
  return problems;
}

/** Where `pos` sits inside nested object and array literals: ['spec', 'template', 'spec', 'containers', '0', …]. */
function literalPath(sf: ts.SourceFile, pos: number): string[] {
  let node: ts.Node = sf;
  const chain: ts.Node[] = [];
  for (;;) {
    const child: ts.Node | undefined = node.getChildren(sf).find((c) => c.getStart(sf) <= pos && pos < c.getEnd());
    if (child === undefined) break;
    chain.push(child);
    node = child;
  }
  const out: string[] = [];
  for (const n of chain) {
    if (ts.isPropertyAssignment(n)) out.push(n.name.getText(sf).replace(/^["']|["']$/g, ''));
    const parent = n.parent as ts.Node | undefined;
    if (parent !== undefined && ts.isArrayLiteralExpression(parent)) out.push(String(parent.elements.indexOf(n as ts.Expression)));
  }
  return out;
}
