/**
 * Forwarding between gateways (real processes, the fake codex, one real
 * etcd, one file store): a client that reaches a node that does not own its
 * workspace is served by the owner's child through that node, frames and
 * close codes passed as they are; the hop between gateways refuses anyone
 * without a proof made with cluster.secret, never forwards twice, and
 * closes a forwarded client with a retry-later code when its workspace
 * changes hands; a node that advertises a URL does not start without a
 * secret.
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { signForward } from '../src/main/cluster/forward-token.js';
import { FORWARD_HEADER } from '../src/main/cluster/forward-token.js';
import { TestEtcd } from './fixtures/etcd.js';
import { CLUSTER_SECRET, admin, attempt, nodeToml, runningOn, session, startNode, within } from './fixtures/cluster-nodes.js';
import type { ClusterNodeProcess, NodeOptions } from './fixtures/cluster-nodes.js';
import { closeOf, rpc } from './gateway-helpers.js';
import { BIN, writeConfig } from './gateway-process.js';
import { tempDir, waitFor } from './helpers.js';
import { isRunning, killLeftovers } from './faults/markers.js';

function closeText(c: { code: number; reason: string }): string {
  return `${c.code} ${c.reason}`;
}

/** An upgrade on a node's forwarding hop with `proof`: the socket once open, or the HTTP status that refused it. */
async function hop(node: ClusterNodeProcess, proof: string | undefined, token?: string): Promise<WebSocket | number> {
  return await new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (proof !== undefined) headers[FORWARD_HEADER] = proof;
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}/cluster/forward`, { headers, perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('error', (err) => reject(err));
  });
}

function proofFor(to: string, workspaceId: string, secret = CLUSTER_SECRET, at = Date.now()): string {
  return signForward(Buffer.from(secret), { from: 'test', to, workspaceId, client: '127.0.0.1', conn: 1, at });
}

async function forwarding(node: ClusterNodeProcess): Promise<Record<string, number>> {
  return (await admin(node, '/admin/cluster')).body.forwarding as Record<string, number>;
}

describe('cluster: forwarding to the owner (fake codex)', () => {
  let etcd: TestEtcd;
  let dir: string;
  const nodes: ClusterNodeProcess[] = [];
  const stopped = new Set<number>();

  beforeAll(async () => {
    etcd = await TestEtcd.start();
    dir = await tempDir('cxg-routing-');
  });
  afterAll(async () => {
    for (const pid of stopped) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Gone.
      }
    }
    for (const n of nodes) await n.stop('SIGKILL');
    if (dir !== undefined) await killLeftovers(dir);
    await etcd?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  async function node(name: string, prefix: string, extra: Partial<NodeOptions> = {}): Promise<ClusterNodeProcess> {
    const n = await startNode({ name, dir, etcdEndpoint: etcd.endpoint, prefix, ...extra });
    nodes.push(n);
    return n;
  }

  it('a client on a node that does not own its workspace is served by the owner\'s child, frames and close codes as they are, counted on both nodes', async () => {
    const id = 'ws-forward';
    const a = await node('a', '/fwd/');
    const b = await node('b', '/fwd/');
    const onA = await session(a.url, id);
    const viaB = await session(b.url, id);
    // One child, on A; B runs nothing.
    expect(viaB.info.pid).toBe(onA.info.pid);
    expect(await runningOn(a)).toEqual([id]);
    expect(await runningOn(b)).toEqual([]);
    // Frames pass as they are, text as text and binary as binary (the fake codex echoes what is not fake/*).
    const echoed = new Promise<Array<{ data: Buffer; binary: boolean }>>((resolve) => {
      const got: Array<{ data: Buffer; binary: boolean }> = [];
      const on = (data: Buffer, binary: boolean): void => {
        got.push({ data, binary });
        if (got.length === 2) {
          viaB.ws.off('message', on);
          resolve(got);
        }
      };
      viaB.ws.on('message', on);
    });
    const bin = Buffer.from([0, 1, 2, 255, 254]);
    viaB.ws.send('{"jsonrpc":"2.0","method":"echo/me","params":{"x":"ü"}}');
    viaB.ws.send(bin, { binary: true });
    const got = await within(echoed, 20_000, 'the echoes');
    expect(got[0]).toEqual({ data: Buffer.from('{"jsonrpc":"2.0","method":"echo/me","params":{"x":"ü"}}'), binary: false });
    expect(got[1]).toEqual({ data: bin, binary: true });
    // Written through B, read on A: the same home.
    await rpc(viaB.ws, 'fake/writeFile', { path: 'marker.txt', content: 'via-b' });
    expect(await rpc<{ content: string }>(onA.ws, 'fake/readFile', { path: 'marker.txt' })).toEqual({ content: 'via-b' });

    expect(await forwarding(b)).toMatchObject({ out_open: 1, out_total: 1, out_failed: 0, in_total: 0 });
    expect(await forwarding(a)).toMatchObject({ in_open: 1, in_total: 1, in_refused: 0, out_total: 0 });
    const metrics = await (await fetch(`http://127.0.0.1:${b.port}/metrics`)).text();
    expect(metrics).toMatch(/^cxg_cluster_forwarded_connections_total\{direction="out"\} 1$/m);
    expect(metrics).toMatch(/^cxg_cluster_forwarded_connections\{direction="out"\} 1$/m);

    // The owner's close reaches the forwarded client as it is.
    const stop = await admin(a, `/admin/workspaces/${id}/shutdown`, 'POST');
    expect(stop.body).toMatchObject({ saved: true });
    expect(closeText(await within(viaB.closed, 20_000, 'the forwarded client to be closed'))).toMatch(/^1001 GW_STOPPED/);
    expect(closeText(await onA.closed)).toMatch(/^1001 GW_STOPPED/);
    await waitFor(async () => (await forwarding(b)).out_open === 0 && (await forwarding(a)).in_open === 0, 20_000, 'both nodes to count the forwarded connection closed');

    // Released by A once stored: the next client on B is served by B itself.
    const again = await session(b.url, id);
    expect(await runningOn(b)).toEqual([id]);
    again.ws.close();
    await again.closed;
    await Promise.all([a.stop(), b.stop()]);
  }, 180_000);

  it('backpressure is kept through the hop: a forwarded client that stops reading holds the owner back, and then gets every frame in order', async () => {
    const id = 'ws-flow';
    // A 1 MiB frame limit puts B's bound on a client's buffer at 17 MiB: without backpressure through the hop, B would close the client (GW_SLOW_CLIENT).
    const limits = { extra: ['[limits]', 'max_frame = "1MiB"'] };
    const a = await node('a', '/flow/', limits);
    const b = await node('b', '/flow/', limits);
    const onA = await session(a.url, id);
    const viaB = await session(b.url, id);
    expect(viaB.info.pid).toBe(onA.info.pid);
    const pauses = async (): Promise<number> => {
      const m = /^cxg_backpressure_events_total\{event="pause"\} (\d+)$/m.exec(await (await fetch(`http://127.0.0.1:${a.port}/metrics`)).text());
      return Number(m?.[1] ?? 0);
    };
    const before = await pauses();
    const COUNT = 256;
    const SIZE = 256 * 1024;
    const frames: Buffer[] = [];
    const done = new Promise<void>((resolve, reject) => {
      viaB.ws.on('message', (data: Buffer, binary: boolean) => {
        if (binary) frames.push(data);
        else if (data.toString().includes('fake/floodDone')) resolve();
      });
      viaB.ws.once('close', (code: number, reason: Buffer) => reject(new Error(`closed before the flood's end: ${code} ${reason.toString()}`)));
    });
    // The client stops reading; the child then sends 64 MiB, far more than any buffer on the way holds.
    viaB.ws.pause();
    viaB.ws.send(JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'fake/flood', params: { count: COUNT, size: SIZE, binary: true } }));
    // B stops reading A, so A's socket to B backs up: A's front counts a pause (and holds its child back).
    await waitFor(async () => (await pauses()) > before, 60_000, 'the owner to see backpressure from the forwarding node');
    viaB.ws.resume();
    await within(done, 120_000, 'the whole flood');
    expect(frames).toHaveLength(COUNT);
    frames.forEach((f, i) => {
      expect(f.byteLength).toBe(SIZE);
      expect(f.subarray(0, String(i).length).toString('latin1')).toBe(String(i));
    });
    expect(await rpc<{ pid: number }>(viaB.ws, 'fake/info')).toMatchObject({ pid: onA.info.pid });
    viaB.ws.close();
    onA.ws.close();
    await Promise.all([viaB.closed, onA.closed]);
    await Promise.all([a.stop(), b.stop()]);
  }, 240_000);

  it('the hop between gateways: no proof, a wrong secret, another node\'s proof or a used one is refused; a good proof is served where it lands, never forwarded again', async () => {
    const id = 'ws-hop';
    const a = await node('a', '/hop/');
    const c = await node('c', '/hop/');
    const onA = await session(a.url, id);

    // A client's own token does not open the hop.
    const { signWorkspaceToken } = await import('codex-app-gateway');
    const clientToken = await signWorkspaceToken({ secret: 'routing-jwt-secret-routing-jwt-secret-0001', workspaceId: id, expiresIn: '5m' });
    expect(await hop(c, undefined, clientToken)).toBe(401);
    expect(await hop(c, 'not-a-proof')).toBe(401);
    expect(await hop(c, proofFor('c', id, 'another-secret-another-secret-another-00'))).toBe(401);
    expect(await hop(c, proofFor('a', id))).toBe(401);
    expect(await hop(c, proofFor('c', id, CLUSTER_SECRET, Date.now() - 10 * 60_000))).toBe(401);
    expect(await forwarding(c)).toMatchObject({ in_refused: 5, in_total: 0 });

    // A good proof for C, for a workspace A owns: C serves it itself, where the claim refuses it; C forwards nothing.
    const proof = proofFor('c', id);
    const ws = await hop(c, proof);
    if (typeof ws === 'number') throw new Error(`refused: ${ws}`);
    const closed = closeOf(ws);
    ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'fake/info' }));
    expect(closeText(await within(closed, 20_000, 'the forwarded connection to be refused'))).toMatch(/^1013 GW_OWNED_ELSEWHERE/);
    expect(await forwarding(c)).toMatchObject({ in_total: 1, out_total: 0 });
    expect(await runningOn(c)).toEqual([]);
    // The same proof again: used.
    expect(await hop(c, proof)).toBe(401);
    onA.ws.close();
    await onA.closed;
    await Promise.all([a.stop(), c.stop()]);
  }, 180_000);

  it('a frozen owner: the forwarded client is closed with 1013 once the owner\'s lease ends, and its next attempt is served by the node it reached', async () => {
    const id = 'ws-moved';
    const a = await node('a', '/moved/');
    const b = await node('b', '/moved/');
    const onA = await session(a.url, id);
    const viaB = await session(b.url, id);
    expect(viaB.info.pid).toBe(onA.info.pid);

    const aPid = a.proc.pid as number;
    process.kill(aPid, 'SIGSTOP');
    stopped.add(aPid);
    // etcd expires A's lease (3 s TTL); B's watch sees the owner key go.
    expect(closeText(await within(viaB.closed, 30_000, 'B to close the forwarded client'))).toMatch(/^1013 GW_OWNERSHIP_LOST/);
    let onB: Awaited<ReturnType<typeof session>> | undefined;
    await waitFor(
      async () => {
        const s = await attempt(b.url, id);
        if ('ws' in s) onB = s;
        else expect(closeText(s)).toMatch(/^1013 (GW_OWNED_ELSEWHERE|GW_FORWARD_FAILED)/);
        return onB !== undefined;
      },
      30_000,
      'B to serve the workspace',
    );
    expect(await runningOn(b)).toEqual([id]);
    expect((onB as NonNullable<typeof onB>).info.pid).not.toBe(onA.info.pid);

    // A wakes, finds its lease gone and stops its child.
    process.kill(aPid, 'SIGCONT');
    stopped.delete(aPid);
    expect(closeText(await within(onA.closed, 30_000, 'A to close its client'))).toMatch(/^1013 GW_OWNERSHIP_LOST/);
    await waitFor(async () => !(await isRunning(onA.info.pid)), 20_000, 'A\'s child to stop');
    onB?.ws.close();
    await Promise.all([a.stop('SIGKILL'), b.stop()]);
  }, 180_000);

  it('a node that advertises a URL does not start without cluster.secret (GW_CLUSTER_SECRET)', async () => {
    const own = path.join(dir, 'nosecret');
    const config = await writeConfig(`${own}.toml`, nodeToml({ name: 'x', dir, own, port: 1, etcdEndpoint: etcd.endpoint, prefix: '/nosecret/', secret: null, advertise: true }));
    const res = await promisify(execFile)(process.execPath, [BIN, 'serve', '--config', config], { cwd: dir, timeout: 60_000 }).then(
      () => ({ code: 0, out: '' }),
      (err: { code?: number; stdout?: string; stderr?: string }) => ({ code: err.code, out: `${err.stdout ?? ''}${err.stderr ?? ''}` }),
    );
    expect(res.code).toBe(1);
    expect(res.out).toMatch(/GW_CLUSTER_SECRET: cluster\.advertise_url is set/);
    expect(res.out).not.toContain(CLUSTER_SECRET);
  }, 90_000);
});
