/**
 * Two gateways (real processes, the fake codex) sharing one file store and
 * one real etcd, each with its own homes.root: a workspace runs on one of
 * them only; a frozen owner (SIGSTOP past its lease) is taken over, and
 * when it wakes it stops its child and its late upload never becomes the
 * state a client restores; etcd stopped and restarted: the owner stops its
 * child while it cannot prove its lease, and what it stored afterwards is
 * all there.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import type WebSocket from 'ws';
import { TestEtcd } from './fixtures/etcd.js';
import { closeOf, openWs, rpc } from './gateway-helpers.js';
import { startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { tempDir, waitFor } from './helpers.js';
import { admin, closeText, clusterLines, fakeCodexToml, within } from './cluster-helpers.js';
import { isRunning, killLeftovers } from './faults/markers.js';

const SECRET = 'cluster-secret-cluster-secret-cluster-0001';

interface Session {
  ws: WebSocket;
  closed: Promise<{ code: number; reason: string }>;
  info: { pid: number; codexHome: string };
}

/** A client of `ws` on `gw`: its child's info, or how the gateway closed it. */
async function attempt(gw: GatewayProcess, workspaceId: string): Promise<Session | { code: number; reason: string }> {
  const token = await signWorkspaceToken({ secret: SECRET, workspaceId, expiresIn: '10m' });
  const ws = await openWs(gw.url, token);
  const closed = closeOf(ws);
  try {
    const info = await rpc<{ pid: number; codexHome: string }>(ws, 'fake/info');
    return { ws, closed, info };
  } catch {
    return await closed;
  }
}

async function session(gw: GatewayProcess, workspaceId: string): Promise<Session> {
  const s = await attempt(gw, workspaceId);
  if (!('ws' in s)) throw new Error(`not served: ${s.code} ${s.reason}`);
  return s;
}

async function readMarker(s: Session): Promise<string | undefined> {
  return await rpc<{ content: string }>(s.ws, 'fake/readFile', { path: 'marker.txt' }).then(
    (r) => r.content,
    () => undefined,
  );
}

describe('cluster: two gateways, one store, one etcd (fake codex)', () => {
  let etcd: TestEtcd;
  let dir: string;
  const gateways: GatewayProcess[] = [];
  const stopped = new Set<number>();

  beforeAll(async () => {
    etcd = await TestEtcd.start();
    dir = await tempDir('cxg-cluster-');
  });
  afterAll(async () => {
    for (const pid of stopped) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        // Gone.
      }
    }
    for (const gw of gateways) await gw.stop('SIGKILL');
    if (dir !== undefined) await killLeftovers(dir);
    await etcd?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  async function gateway(name: string, prefix: string): Promise<GatewayProcess> {
    const own = path.join(dir, prefix.replace(/\//g, ''), name);
    await mkdir(path.dirname(own), { recursive: true });
    const config = await writeConfig(
      `${own}.toml`,
      fakeCodexToml({
        dir: own,
        store: path.join(dir, 'store'),
        jwtSecret: SECRET,
        extra: ['[spawn]', 'stop_grace = "2s"', ...clusterLines({ nodeId: name, endpoint: etcd.endpoint, prefix })],
      }),
    );
    // Generous: on a loaded machine a start (two shard workers, the first lease) can take a while.
    const gw = await startGatewayProcess(config, { CXG_LOG_LEVEL: 'info' }, 60_000);
    gateways.push(gw);
    return gw;
  }

  it('a workspace runs on one gateway only; a frozen owner is taken over, wakes, stops its child, and its late upload never becomes current', async () => {
    const id = 'ws-frozen';
    const a = await gateway('a', '/frozen/');
    const b = await gateway('b', '/frozen/');

    const onA = await session(a, id);
    await rpc(onA.ws, 'fake/writeFile', { path: 'marker.txt', content: 'from-a' });

    // B refuses the workspace A owns, with a code that says so, and starts no child for it.
    const refused = await attempt(b, id);
    expect('ws' in refused ? 'served' : closeText(refused)).toMatch(/^1013 GW_OWNED_ELSEWHERE/);
    expect((await admin(b, '/admin/workspaces')).body.workspaces).toEqual([]);

    // A freezes past its lease: B takes over once etcd has expired A's lease.
    const aPid = a.proc.pid as number;
    process.kill(aPid, 'SIGSTOP');
    stopped.add(aPid);
    let onB: Session | undefined;
    const t0 = Date.now();
    await waitFor(
      async () => {
        const s = await attempt(b, id);
        if ('ws' in s) onB = s;
        else expect(s.reason).toMatch(/^GW_OWNED_ELSEWHERE/);
        return onB !== undefined;
      },
      30_000,
      'B to take the workspace over',
    );
    const takeoverMs = Date.now() - t0;
    expect(takeoverMs).toBeLessThan(30_000);
    const b1 = onB as Session;
    expect(b1.info.codexHome).not.toBe(onA.info.codexHome);
    await rpc(b1.ws, 'fake/writeFile', { path: 'marker.txt', content: 'from-b' });
    b1.ws.close();
    await b1.closed;
    const stop = await admin(b, `/admin/workspaces/${id}/shutdown`, 'POST');
    expect(stop.status).toBe(200);
    expect(stop.body).toMatchObject({ saved: true });

    // A wakes: it finds its lease unprovable, stops its child, and its upload is fenced.
    process.kill(aPid, 'SIGCONT');
    stopped.delete(aPid);
    expect(closeText(await onA.closed)).toMatch(/^1013 GW_OWNERSHIP_LOST/);
    await waitFor(async () => !(await isRunning(onA.info.pid)), 20_000, 'A\'s child to stop');
    const fenced = await a.waitForLog((l) => l.msg.startsWith('home uploaded but fenced') && l.workspaceId === id, 60_000);
    expect(fenced.runEpoch).toBe(1);

    // What a client restoring the workspace sees is B's state, on either gateway.
    const again = await session(a, id);
    expect(await readMarker(again)).toBe('from-b');
    again.ws.close();
    await again.closed;
    // The admin API and /metrics count it: B took the workspace over, A lost its lease and had an upload fenced.
    expect((await admin(b, '/admin/cluster')).body).toMatchObject({ node_id: 'b', lease_alive: true, takeovers: 1, fenced_uploads: 0 });
    const aCluster = (await admin(a, '/admin/cluster')).body;
    expect(aCluster).toMatchObject({ node_id: 'a', lease_alive: true, lease_losses: 1 });
    expect(aCluster.fenced_uploads).toBeGreaterThanOrEqual(1);
    const metrics = await (await fetch(`${a.url.replace('ws://', 'http://')}/metrics`)).text();
    expect(metrics).toMatch(/^cxg_cluster_lease_losses_total 1$/m);
    // A's late snapshot is kept in the store for inspection, never current.
    const snapshots = (await readdir(path.join(dir, 'store', id))).filter((f) => f.endsWith('.tar.gz')).sort();
    expect(snapshots.some((f) => f.startsWith('e000000000001-'))).toBe(true);
    expect(snapshots.some((f) => f.startsWith('e000000000002-'))).toBe(true);
    // Without [cluster] a workspace's object is <ws>.tar.gz: the cluster never writes it.
    expect(existsSync(path.join(dir, 'store', `${id}.tar.gz`))).toBe(false);
    await Promise.all([a.stop(), b.stop()]);
  }, 180_000);

  it('etcd stopped and restarted: the owner stops its child while it cannot prove its lease; nothing stored is lost', async () => {
    const id = 'ws-outage';
    const a = await gateway('a', '/outage/');
    try {
      const s = await session(a, id);
      await rpc(s.ws, 'fake/writeFile', { path: 'marker.txt', content: 'kept' });

      await etcd.stop();
      expect(closeText(await within(s.closed, 30_000, 'the client to be closed'))).toMatch(/^1013 GW_OWNERSHIP_LOST/);
      await waitFor(async () => !(await isRunning(s.info.pid)), 20_000, 'the child to stop');
      // No start while the lease cannot be proven.
      const meanwhile = await within(attempt(a, id), 30_000, 'a start to be refused');
      expect('ws' in meanwhile ? 'served' : closeText(meanwhile)).toMatch(/^1013 GW_CLUSTER_UNAVAILABLE/);

      await etcd.start();
      await a.waitForLog((l) => l.msg === 'home uploaded and made current' && l.workspaceId === id, 90_000);
      const back = await within(session(a, id), 30_000, 'the workspace to start again');
      expect(await readMarker(back)).toBe('kept');
      back.ws.close();
      await back.closed;
    } catch (err) {
      // What the gateway did, for the failure message.
      throw new Error(`${(err as Error).message}\n${a.logs.slice(-25).map((l) => JSON.stringify(l)).join('\n')}`, { cause: err });
    }
  }, 180_000);
});
