/**
 * Scenario 14: a memory flood. Sixteen clients of four workspaces send 24 MiB
 * each in 1 MiB frames, as fast as their sockets take them, to children
 * that stopped reading (fake codex, `fake/stopReading`); two more clients
 * have their child send them 32 MiB and never read. The gateway runs as a
 * real process with `limits.max_buffered` = 32 MiB, and its VmRSS
 * (/proc/<pid>/status, every 50 ms) must stay under its own baseline (taken
 * after a first client's round trip) plus the stated ALLOWANCE. Meanwhile a
 * client of another workspace keeps making round trips; after the flood the
 * gateway holds no connection and no buffered byte, and a new client works.
 * When the shard acked client bytes on receipt, this flood took the gateway
 * from 112 MiB of RSS to 566 MiB (+455 MiB; the bound is +192 MiB); now it
 * closes flooders (1013 GW_OVERLOADED, 1008 GW_SLOW_CHILD) and stays
 * 90-150 MiB over its baseline.
 */
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { signWorkspaceToken } from 'codex-app-gateway';
import { TEST_API_KEY } from '../fixtures/codex-home.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from '../gateway-process.js';
import type { GatewayProcess } from '../gateway-process.js';
import { tempDir, waitFor } from '../helpers.js';
import { killLeftovers, recordLost, withDeadline } from './markers.js';

const SECRET = 'faults-secret-faults-secret-faults-secret-00';
const ADMIN = 'memory-flood-admin-token-0123456789';
const FAKE_CODEX = fileURLToPath(new URL('../fixtures/fake-codex.mjs', import.meta.url));
const MiB = 1024 * 1024;
/** limits.max_buffered of the gateway under test. */
const CAP = 32 * MiB;
const FRAME = MiB;
const FLOOD_WORKSPACES = 4;
const CLIENTS_PER_WORKSPACE = 4;
const FRAMES_PER_CLIENT = 24;
/**
 * RSS the gateway may add to its baseline: what it may hold (the cap, plus
 * per flooding client one frame being received by uWS and the 1 MiB share
 * the cap never refuses), twice, for the copies a frame has on its way (the
 * batch posted to the shard, ws's masked copy) and for garbage the GC has not
 * taken back yet, plus 64 MiB for allocator slack. docs/operations.md
 * (Memory) sizes by the same rule.
 */
const ALLOWANCE = 2 * (CAP + FLOOD_WORKSPACES * CLIENTS_PER_WORKSPACE * (FRAME + MiB)) + 64 * MiB;

async function vmRss(pid: number): Promise<number> {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  return m === null ? 0 : Number(m[1]) * 1024;
}

function open(url: string, token: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false, maxPayload: 64 * MiB });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

let rpcId = 0;
function rpc<T>(ws: WebSocket, method: string, params: unknown = {}): Promise<T> {
  const id = ++rpcId;
  return new Promise((resolve, reject) => {
    const onMessage = (data: Buffer, binary: boolean): void => {
      if (binary) return;
      const msg = JSON.parse(data.toString('utf8')) as { id?: number; result?: T; error?: unknown };
      if (msg.id !== id) return;
      ws.off('message', onMessage);
      ws.off('close', onClose);
      if (msg.error !== undefined) reject(new Error(JSON.stringify(msg.error)));
      else resolve(msg.result as T);
    };
    const onClose = (code: number, reason: Buffer): void => reject(new Error(`closed ${code} ${reason.toString()}`));
    ws.on('message', onMessage);
    ws.once('close', onClose);
    ws.send(JSON.stringify({ id, method, params }));
  });
}

interface Flooder {
  ws: WebSocket;
  sent: number;
  /** How the gateway closed it, if it did. */
  close: { code: number; reason: string } | undefined;
  /** All frames written to the socket, or closed. */
  settled: Promise<void>;
}

/**
 * Bytes of the given client connections that the gateway has not read yet:
 * the client sockets' send queues plus the gateway sockets' receive queues
 * (/proc/net/tcp, `tx_queue:rx_queue` in hex). Zero once uWS has read
 * everything the flooders wrote.
 */
async function unreadBytes(gatewayPort: number, clientPorts: Set<number>): Promise<number> {
  let n = 0;
  for (const line of (await readFile('/proc/net/tcp', 'utf8')).split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    const local = parseInt((f[1] ?? '').split(':')[1] ?? '', 16);
    const remote = parseInt((f[2] ?? '').split(':')[1] ?? '', 16);
    const [tx, rx] = (f[4] ?? '0:0').split(':').map((h) => parseInt(h, 16));
    if (clientPorts.has(local) && remote === gatewayPort) n += tx ?? 0;
    else if (local === gatewayPort && clientPorts.has(remote)) n += rx ?? 0;
  }
  return n;
}

/** Sends FRAMES_PER_CLIENT frames, each once the socket took the one before. */
function flood(ws: WebSocket, frame: Buffer): Flooder {
  const f: Flooder = { ws, sent: 0, close: undefined, settled: Promise.resolve() };
  f.settled = new Promise((resolve) => {
    ws.once('close', (code, reason) => {
      f.close = { code, reason: reason.toString() };
      resolve();
    });
    // Node passes null, not undefined, to a write callback that succeeded.
    const next = (err?: Error | null): void => {
      if ((err !== undefined && err !== null) || ws.readyState !== WebSocket.OPEN) return;
      if (f.sent === FRAMES_PER_CLIENT) {
        resolve();
        return;
      }
      f.sent++;
      ws.send(frame, { binary: true }, next);
    };
    // Their children send nothing: reading only lets the gateway's close frame in.
    next();
  });
  return f;
}

interface DataPlaneStats {
  connections: number;
  buffered_bytes: number;
  max_buffered_bytes: number | null;
  overload_closes: number;
  slow_child_closes: number;
}

describe('fault: clients flood the gateway and never read (fake codex, the gateway as a process)', () => {
  let dir: string;
  let gw: GatewayProcess | undefined;

  beforeAll(async () => {
    dir = await tempDir('cxg-faults-memory-');
  });
  afterAll(async () => {
    await gw?.stop('SIGKILL');
    if (dir !== undefined) await killLeftovers(dir);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it('scenario 14: memory flood → the gateway\'s RSS stays under its baseline plus limits.max_buffered plus the allowance; other workspaces keep working; nothing is left after', async ({ task }) => {
    const root = path.join(dir, 'gw');
    const config = await writeConfig(
      `${root}.toml`,
      realCodexToml({
        dir: root,
        secret: SECRET,
        mockBaseUrl: 'http://127.0.0.1:9/v1',
        extra: ['[codex]', `bin = ${JSON.stringify(FAKE_CODEX)}`, '[limits]', `max_buffered = ${CAP}`, `max_frame = ${2 * FRAME}`, '[admin]', `token = "${ADMIN}"`],
      }),
    );
    gw = await startGatewayProcess(config, { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' });
    const g = gw;
    const pid = g.proc.pid as number;
    const token = (ws: string): Promise<string> => signWorkspaceToken({ secret: SECRET, workspaceId: ws, expiresIn: '10m' });
    const dataPlane = async (): Promise<DataPlaneStats | undefined> => {
      const res = await fetch(`${g.internalUrl}/admin/workspaces`, { headers: { authorization: `Bearer ${ADMIN}` } });
      return ((await res.json()) as { data_plane?: DataPlaneStats }).data_plane;
    };

    let failedRoundTrips = 0;
    let probeError = '';
    let finalFailed = 1;
    const clients: WebSocket[] = [];
    let sampler: NodeJS.Timeout | undefined;
    try {
      // Baseline: every thread up, one child started and one round trip made.
      const warm = await open(g.url, await token('memory-warmup'));
      clients.push(warm);
      await rpc(warm, 'fake/info');
      const baseline = await vmRss(pid);
      let peak = baseline;
      let samples = 0;
      sampler = setInterval(() => {
        void vmRss(pid).then((r) => {
          peak = Math.max(peak, r);
          samples++;
        }, () => {});
      }, 50);

      // The flooders' children stop reading first.
      const flooders: WebSocket[] = [];
      for (let w = 0; w < FLOOD_WORKSPACES; w++) {
        for (let c = 0; c < CLIENTS_PER_WORKSPACE; c++) {
          const ws = await open(g.url, await token(`memory-flood-${w}`));
          clients.push(ws);
          await rpc(ws, 'fake/stopReading');
          flooders.push(ws);
        }
      }
      // Toward clients: their child sends them 32 MiB, which they never read.
      for (let r = 0; r < 2; r++) {
        const ws = await open(g.url, await token(`memory-sink-${r}`));
        clients.push(ws);
        await rpc(ws, 'fake/info');
        ws.pause();
        ws.send(JSON.stringify({ id: ++rpcId, method: 'fake/flood', params: { count: 32, size: FRAME, binary: true } }));
      }
      const probe = await open(g.url, await token('memory-bystander'));
      clients.push(probe);
      await rpc(probe, 'fake/info');

      const frame = Buffer.alloc(FRAME, 0x61);
      const floods = flooders.map((ws) => flood(ws, frame));
      const ended = Promise.all(floods.map((f) => f.settled));
      let floodOver = false;
      // The bystander makes round trips for as long as the flood runs, and a few more.
      let roundTrips = 0;
      const probing = (async () => {
        while (!floodOver || roundTrips < 3) {
          try {
            await withDeadline(rpc(probe, 'fake/info'), 30_000, () => 'a bystander round trip during the flood');
            roundTrips++;
          } catch (err) {
            failedRoundTrips++;
            probeError = String(err);
            return;
          }
        }
      })();
      await withDeadline(ended, 90_000, () => `flooders sent ${floods.map((f) => f.sent).join(',')}`);
      // Written is not yet read: the flood is over once the gateway has read
      // what the flooders it did not close wrote.
      const gatewayPort = Number(new URL(g.url).port);
      const ports = new Set(floods.filter((f) => f.close === undefined).map((f) => (f.ws as unknown as { _socket: { localPort: number } })._socket.localPort));
      await waitFor(async () => (await unreadBytes(gatewayPort, ports)) === 0, 60_000, 'the gateway to read what the flooders wrote');
      floodOver = true;
      await probing;
      const after = samples;
      await waitFor(() => samples >= after + 10, 10_000, 'RSS samples after the flood');
      clearInterval(sampler);
      sampler = undefined;

      const closes = floods.map((f) => f.close).filter((c) => c !== undefined);
      const sent = floods.reduce((n, f) => n + f.sent, 0);
      const stats = await dataPlane();
      const grew = peak - baseline;
      console.log(`scenario 14: baseline RSS ${(baseline / MiB).toFixed(0)} MiB, peak ${(peak / MiB).toFixed(0)} MiB (+${(grew / MiB).toFixed(0)} MiB, bound +${(ALLOWANCE / MiB).toFixed(0)} MiB); flooders sent ${sent} MiB, ${closes.length} closed (${[...new Set(closes.map((c) => `${c.code} ${c.reason.split(':')[0]}`))].join(', ')}); bystander round trips ${roundTrips}; data plane ${JSON.stringify(stats)}`);
      expect(failedRoundTrips, `a bystander round trip failed during the flood: ${probeError}`).toBe(0);
      expect(roundTrips).toBeGreaterThanOrEqual(3);
      expect(grew, `RSS grew by ${(grew / MiB).toFixed(0)} MiB`).toBeLessThan(ALLOWANCE);
      expect(stats?.max_buffered_bytes).toBe(CAP);
      expect(closes.length, 'the flood reached a bound').toBeGreaterThan(0);
      // A client cut while it is still sending may see 1006: the TCP reset
      // for its unread bytes can overtake the close frame. The gateway's own
      // counts say which bound closed it.
      for (const c of closes) expect(['1013 GW_OVERLOADED', '1008 GW_SLOW_CHILD', '1006 ']).toContain(`${c.code} ${c.reason.split(':')[0]}`);
      expect((stats?.overload_closes ?? 0) + (stats?.slow_child_closes ?? 0)).toBe(closes.length);

      // After the flood: every client gone, nothing buffered, and a new client works.
      for (const ws of clients) ws.terminate();
      await waitFor(async () => {
        const d = await dataPlane();
        return d !== undefined && d.connections === 0 && d.buffered_bytes === 0;
      }, 30_000, 'no connection and no buffered byte left in the gateway');
      const last = await open(g.url, await token('memory-after'));
      clients.push(last);
      await rpc(last, 'fake/info');
      last.close();
      finalFailed = 0;
    } finally {
      if (sampler !== undefined) clearInterval(sampler);
      for (const ws of clients) ws.terminate();
      recordLost(task, failedRoundTrips + finalFailed);
    }
  }, 180_000);
});
