/**
 * An in-process gateway on the fake codex, for the front-door tests.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import WebSocket from 'ws';
import { DEFAULT_FRONT_LIMITS, FileObjectStore, Gateway, JwtAuthenticator, signWorkspaceToken } from 'codex-app-gateway';
import type { GatewayOptions, SpawnConfig } from 'codex-app-gateway';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { quietLogger, spawnConfig, tempDir } from './helpers.js';

export const JWT_SECRET = 'test-secret-that-is-long-enough-for-hs256-000000';

export interface TestGateway {
  gw: Gateway;
  url: string;
  httpUrl: string;
  internalUrl: string;
  homeRoot: string;
  storeDir: string;
  /** Per-workspace extra env for the fake child (e.g. FAKE_CODEX_MODE). */
  childEnv: Map<string, string[]>;
  token(workspaceId: string, opts?: { expiresIn?: string }): Promise<string>;
  close(): Promise<void>;
}

export async function startTestGateway(patch: Partial<GatewayOptions> = {}, sup: Partial<GatewayOptions['supervisor']> = {}): Promise<TestGateway> {
  const root = await tempDir('cxg-gw-');
  const homeRoot = path.join(root, 'homes');
  const storeDir = path.join(root, 'store');
  const childEnv = new Map<string, string[]>();
  let gw: Gateway;
  try {
    gw = await Gateway.start({
      supervisor: {
        codexBin: fakeCodexBin(),
        homeRoot,
        store: new FileObjectStore(storeDir),
        shards: 2,
        stopGraceMs: 2000,
        // Generous: a loaded two-core CI machine starts node slowly.
        readyTimeoutMs: 15_000,
        configBuilder: (_tok, { workspaceId }): SpawnConfig => {
          const cfg = spawnConfig();
          cfg.env = [...(cfg.env ?? []), ...(childEnv.get(workspaceId) ?? [])];
          return cfg;
        },
        ...sup,
      },
      auth: new JwtAuthenticator({ secret: JWT_SECRET }),
      listen: { host: '127.0.0.1', port: 0 },
      internal: { host: '127.0.0.1', port: 0 },
      limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 64 * 1024 * 1024 },
      shutdownBudgetMs: 20_000,
      log: quietLogger,
      ...patch,
    });
  } catch (err) {
    // A gateway that does not start leaves nothing to close but its directory.
    await rm(root, { recursive: true, force: true });
    throw err;
  }
  return {
    gw,
    url: gw.url,
    httpUrl: gw.url.replace(/^ws:/, 'http:'),
    internalUrl: `http://127.0.0.1:${gw.internal.port}`,
    homeRoot,
    storeDir,
    childEnv,
    token: (workspaceId, opts) => signWorkspaceToken({ secret: JWT_SECRET, workspaceId, expiresIn: opts?.expiresIn ?? '1h' }),
    async close() {
      await gw.drain();
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** Result of an upgrade the gateway refused: the HTTP status and JSON body. */
export async function refusedUpgrade(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, perMessageDeflate: false });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => {
        ws.terminate();
        resolve({ status: res.statusCode ?? 0, body });
      });
    });
    ws.once('open', () => {
      ws.terminate();
      reject(new Error('upgrade was accepted'));
    });
    ws.on('error', () => {});
  });
}

export function closeOf(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}

export function openWs(url: string, token: string, opts: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false, maxPayload: 256 * 1024 * 1024, ...opts });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

/** Collects frames as they arrive. */
export function collect(ws: WebSocket): Array<{ data: Buffer; binary: boolean }> {
  const out: Array<{ data: Buffer; binary: boolean }> = [];
  ws.on('message', (data: Buffer, binary: boolean) => out.push({ data, binary }));
  return out;
}

/** One JSON-RPC request over a raw socket; fails, with the close code and reason, when the socket closes first. */
export function rpc<T>(ws: WebSocket, method: string, params: unknown = {}, id = Math.floor(Math.random() * 1e9)): Promise<T> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      ws.off('message', onMessage);
      ws.off('close', onClose);
    };
    const onMessage = (data: Buffer, binary: boolean): void => {
      if (binary) return;
      let msg: { id?: number; result?: T; error?: { message: string } };
      try {
        msg = JSON.parse(data.toString()) as typeof msg;
      } catch {
        return;
      }
      if (msg.id !== id) return;
      done();
      if (msg.error !== undefined) reject(new Error(msg.error.message));
      else resolve(msg.result as T);
    };
    const onClose = (code: number, reason: Buffer): void => {
      done();
      reject(new Error(`${method}: the connection closed with ${code} ${JSON.stringify(reason.toString())} before the answer`));
    };
    if (ws.readyState !== ws.OPEN) {
      reject(new Error(`${method}: the connection is not open (readyState ${ws.readyState})`));
      return;
    }
    ws.on('message', onMessage);
    ws.once('close', onClose);
    ws.send(JSON.stringify({ id, method, params }));
  });
}
