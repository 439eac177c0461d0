// The naive anchor: a single-thread WebSocket proxy written the obvious way
// with `ws`. One upstream connection per client, frames forwarded as they
// come, frames sent before the upstream opens are queued; no flow control.
// Usage: node naive-proxy.mjs ws://127.0.0.1:PORT ; prints `listening PORT`.
import { createServer } from 'node:http';
import WebSocket, { WebSocketServer } from 'ws';

const target = process.argv[2];
if (target === undefined) throw new Error('usage: naive-proxy.mjs ws://host:port');
process.on('SIGTERM', () => process.exit(0));

const server = createServer((_req, res) => res.writeHead(404).end());
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 65 * 1024 * 1024, skipUTF8Validation: true });
wss.on('connection', (client, req) => {
  const headers = req.headers.authorization === undefined ? {} : { authorization: req.headers.authorization };
  const upstream = new WebSocket(target, { headers, perMessageDeflate: false, maxPayload: 65 * 1024 * 1024, skipUTF8Validation: true });
  const queue = [];
  upstream.on('open', () => {
    for (const [data, binary] of queue) upstream.send(data, { binary });
    queue.length = 0;
  });
  client.on('message', (data, binary) => {
    if (upstream.readyState === WebSocket.OPEN) upstream.send(data, { binary });
    else queue.push([data, binary]);
  });
  upstream.on('message', (data, binary) => client.send(data, { binary }));
  const closeBoth = () => {
    if (client.readyState === WebSocket.OPEN) client.close(1000);
    if (upstream.readyState === WebSocket.OPEN) upstream.close(1000);
    else if (upstream.readyState === WebSocket.CONNECTING) upstream.terminate();
  };
  client.on('close', closeBoth);
  upstream.on('close', closeBoth);
  client.on('error', () => {});
  upstream.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`listening ${server.address().port}\n`));
