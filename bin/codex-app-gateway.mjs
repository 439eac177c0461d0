#!/usr/bin/env node
// The installed command. All logic is in dist/main/cli/main.js (built from
// src/main/cli/main.ts); this file only finds it and turns its result into the
// exit code.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const cliUrl = new URL('../dist/main/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(cliUrl))) {
  console.error(`codex-app-gateway: ${fileURLToPath(cliUrl)} is missing; run npm run build`);
  process.exit(1);
}
const { main } = await import(cliUrl.href);
// exitCode, not exit(): output written to a pipe is flushed before the process ends.
process.exitCode = await main(process.argv.slice(2));
