/**
 * Handover restart (restart.handover), as nginx upgrades its binary: a new
 * gateway started on the same host with the same data.dir asks the running
 * one, over `<data.dir>/handover.sock` (mode 0600 in the private data.dir),
 * to hand over its live children instead of stopping them. The old one stops
 * accepting, closes its clients with 1012 (reconnect), lets go of its
 * children, closes its listeners, sends their records and exits; the new
 * one adopts them before its recovery runs and starts listening. A client
 * that reconnects finds its codex process still running: no cold start.
 *
 * The exchange is one JSON line each way on one connection:
 *   new → old  {"type":"handover","pid":N}
 *   old → new  {"type":"records","records":[HandoverRecord…]}, then end.
 * The old gateway answers only once its listeners are closed (so the new one
 * can bind the same ports) and its stops and uploads under way are over (so
 * the new one's recovery never touches a home in use). The new one waits
 * for the end of the connection: should the old one die half-way, the
 * connection ends without records, and recovery stops whatever it left
 * running and stores the homes (their state files name the pids).
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import type { Logger } from 'pino';
import { parseHandoverRecords } from '../../shared/handover.js';
import type { HandoverRecord } from '../../shared/handover.js';

/** Largest answer read: records are a few hundred bytes each. */
const MAX_ANSWER = 64 * 1024 * 1024;

/**
 * Asks a gateway running on `socketPath` to hand over. Undefined when none
 * listens there (a first start, or the last one is gone: a cold start);
 * otherwise the records it sent (none if it died half-way).
 */
export async function requestHandover(socketPath: string, log: Logger): Promise<HandoverRecord[] | undefined> {
  const answer = await new Promise<string | undefined>((resolve, reject) => {
    const sock = net.connect(socketPath);
    let text = '';
    let connected = false;
    sock.setEncoding('utf8');
    sock.on('connect', () => {
      connected = true;
      log.info({ socket: socketPath }, 'handover: asking the running gateway to hand over its children');
      sock.write(`${JSON.stringify({ type: 'handover', pid: process.pid })}\n`);
    });
    sock.on('data', (chunk: string) => {
      text += chunk;
      if (text.length > MAX_ANSWER) sock.destroy(new Error('handover answer too large'));
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (!connected && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')) resolve(undefined);
      else if (!connected) reject(err);
      else resolve(text);
    });
    sock.on('close', () => resolve(connected ? text : undefined));
  });
  if (answer === undefined) return undefined;
  let raw: unknown;
  try {
    raw = (JSON.parse(answer.trim()) as { records?: unknown }).records;
  } catch {
    log.error('handover: the running gateway ended without handing over; recovery takes over what it left');
    return [];
  }
  const { records, refused } = parseHandoverRecords(raw);
  if (refused > 0) log.error({ refused }, 'handover: malformed records ignored; recovery stops those children and stores their homes');
  log.info({ children: records.length }, 'handover: records received');
  return records;
}

export interface HandoverListener {
  close(): void;
}

/**
 * Listens on `socketPath` for a successor's request; `handOver` runs the
 * handover (Gateway.handOver) and calls `send` with the records, which
 * resolves once the successor has them (or is gone). One handover per
 * process: the listener closes after the first request.
 */
export async function listenForHandover(socketPath: string, log: Logger, handOver: (send: (records: HandoverRecord[]) => Promise<void>) => Promise<unknown>): Promise<HandoverListener> {
  // A socket file left by a gateway that died: nobody answered on it (requestHandover ran first).
  await fs.rm(socketPath, { force: true });
  let taken = false;
  const server = net.createServer((sock) => {
    sock.setEncoding('utf8');
    let line = '';
    sock.on('error', () => {});
    sock.on('data', (chunk: string) => {
      line += chunk;
      if (line.length > 4096) return void sock.destroy();
      if (!line.includes('\n') || taken) return;
      let ask: { type?: unknown; pid?: unknown };
      try {
        ask = JSON.parse(line.slice(0, line.indexOf('\n'))) as typeof ask;
      } catch {
        return void sock.destroy();
      }
      if (ask.type !== 'handover') return void sock.destroy();
      taken = true;
      server.close();
      log.info({ successorPid: ask.pid }, 'handover: a successor asked for the children');
      const send = (records: HandoverRecord[]): Promise<void> =>
        new Promise((resolve) => {
          sock.once('close', () => resolve());
          sock.end(`${JSON.stringify({ type: 'records', records })}\n`);
        });
      handOver(send).catch((err: unknown) => {
        log.error({ err: String(err) }, 'handover failed');
        sock.destroy();
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  await fs.chmod(socketPath, 0o600);
  return {
    close: () => {
      server.close();
    },
  };
}
