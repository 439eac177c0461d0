/**
 * Finds the native codex binary inside the installed `@openai/codex` package.
 * The package's `bin/codex.js` is a Node wrapper that costs a second process
 * (~44 MB) per child, so the gateway runs the native binary directly.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { GatewayError } from './errors.js';

const TARGETS: Record<string, { triple: string; pkg: string }> = {
  'linux-x64': { triple: 'x86_64-unknown-linux-musl', pkg: '@openai/codex-linux-x64' },
  'linux-arm64': { triple: 'aarch64-unknown-linux-musl', pkg: '@openai/codex-linux-arm64' },
  'darwin-x64': { triple: 'x86_64-apple-darwin', pkg: '@openai/codex-darwin-x64' },
  'darwin-arm64': { triple: 'aarch64-apple-darwin', pkg: '@openai/codex-darwin-arm64' },
};

export function defaultCodexBin(): string {
  const target = TARGETS[`${process.platform}-${process.arch}`];
  if (target === undefined) {
    throw new GatewayError('GW_CODEX_NOT_FOUND', `no codex binary is published for ${process.platform}-${process.arch}; set codexBin`);
  }
  const require = createRequire(import.meta.url);
  const candidates: string[] = [];
  for (const from of [target.pkg, '@openai/codex']) {
    try {
      const root = path.dirname(require.resolve(`${from}/package.json`));
      candidates.push(path.join(root, 'vendor', target.triple, 'bin', 'codex'));
      candidates.push(path.join(root, 'node_modules', target.pkg, 'vendor', target.triple, 'bin', 'codex'));
    } catch {
      // Not installed under that name; try the next.
    }
  }
  const found = candidates.find((c) => existsSync(c));
  if (found === undefined) {
    throw new GatewayError('GW_CODEX_NOT_FOUND', `the native codex binary for ${target.triple} was not found in node_modules (is @openai/codex installed?); set codexBin`);
  }
  return found;
}
