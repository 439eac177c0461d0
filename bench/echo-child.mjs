#!/usr/bin/env node
// The echo server behind every data-plane path of the benchmarks, and the
// light child of the `connections` bench: a stand-in for
// `codex app-server --listen ws://127.0.0.1:0` that speaks what the gateway
// needs of the real one (stderr banner, /readyz, capability-token auth) and
// echoes every frame unchanged. Unlike test/fixtures/fake-codex.mjs it has no
// control requests and no per-frame checks, so the echo costs as little as
// `ws` allows and thousands of connections per process stay cheap.
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import { WebSocketServer } from 'ws';

const argv = process.argv.slice(2);
// Like the real binary: `--print-startup-config` validates the config and exits.
if (argv.includes('--print-startup-config')) {
  process.stdout.write('{"appServerVersion":"bench-echo"}\n');
  process.exit(0);
}
let listen = 'ws://127.0.0.1:0';
let tokenSha256;
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--listen') listen = argv[++i] ?? listen;
  else if (argv[i] === '--ws-token-sha256') tokenSha256 = Buffer.from(String(argv[++i]), 'hex');
}

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));

const sha256 = (text) => createHash('sha256').update(text).digest();
function authorized(header) {
  if (tokenSha256 === undefined) return true;
  const m = /^Bearer (.+)$/.exec(header ?? '');
  if (m === null) return false;
  const got = sha256(m[1]);
  return got.length === tokenSha256.length && timingSafeEqual(got, tokenSha256);
}

const server = createServer((req, res) => {
  const ok = req.url === '/readyz' || req.url === '/healthz';
  res.writeHead(ok ? 200 : 404, { 'content-length': '0' }).end();
});
// 64 MiB frames plus headroom, like the gateway's default limit.
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 65 * 1024 * 1024, clientTracking: false, skipUTF8Validation: true });
server.on('upgrade', (req, socket, head) => {
  if (req.headers.origin !== undefined || !authorized(req.headers.authorization)) {
    socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});

const { hostname, port } = new URL(listen);
server.listen(Number(port), hostname, () => {
  const url = `ws://${hostname}:${server.address().port}`;
  process.stderr.write(`codex app-server (WebSockets)\n  listening on: ${url}\n  readyz: http://${hostname}:${server.address().port}/readyz\n`);
});
