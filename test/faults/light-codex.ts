/**
 * A minimal stand-in for `codex app-server`, for the scenarios that start a
 * thousand children and never talk to them (scenario 4). It keeps only what
 * the gateway's lifecycle depends on: the banner on stderr, `/readyz` and
 * `/healthz` answering 200, a clean exit on SIGTERM, and running with cwd =
 * CODEX_HOME (the gateway's choice). No WebSocket, no imports beyond
 * node:http, so a start costs about a third of the CPU of
 * test/fixtures/fake-codex.mjs (which loads `ws`): on two cores that is the
 * difference between ~40 s and ~150 s for a thousand generations.
 *
 * The script is written into a test directory at run time, so it is not a
 * loose .mjs file outside the lint project.
 */
import { chmod, writeFile } from 'node:fs/promises';
import path from 'node:path';

const SCRIPT = `#!/usr/bin/env node
import { createServer } from 'node:http';
const listen = new URL(process.argv[process.argv.indexOf('--listen') + 1] || 'ws://127.0.0.1:0');
const server = createServer((req, res) => {
  const p = (req.url || '/').split('?')[0];
  res.writeHead(p === '/readyz' || p === '/healthz' ? 200 : 400, { 'content-length': '0' }).end();
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
server.listen(Number(listen.port), listen.hostname, () => {
  const { port } = server.address();
  process.stderr.write('codex app-server (WebSockets)\\n  listening on: ws://127.0.0.1:' + port + '\\n  readyz: http://127.0.0.1:' + port + '/readyz\\n');
});
`;

/** Writes the light stand-in into `dir` and returns its path (executable). */
export async function writeLightCodex(dir: string): Promise<string> {
  const file = path.join(dir, 'light-codex.mjs');
  await writeFile(file, SCRIPT);
  await chmod(file, 0o755);
  return file;
}
