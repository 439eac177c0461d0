/**
 * A fourth gateway joins a cluster of three behind HAProxy (the shipped
 * config), and HAProxy reloads for real (SIGUSR2 to its master, as
 * Debian's systemd unit does): the workspaces whose hash moves to the new
 * node keep running where they ran, and their new clients, landing on the
 * new node, are forwarded to that child. Every node's admin API is polled
 * from start to end: at no sample does a workspace run on two nodes, and
 * no workspace that was running ever shows up on another node. Fake codex.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { admin, runningOn, session, startNode } from './fixtures/cluster-nodes.js';
import type { ClusterNodeProcess, Session } from './fixtures/cluster-nodes.js';
import { TestEtcd } from './fixtures/etcd.js';
import { TestHaproxy } from './fixtures/haproxy.js';
import { rpc } from './gateway-helpers.js';
import { tempDir } from './helpers.js';
import { killLeftovers } from './faults/markers.js';

/** With consistent hashing about a quarter of them move to a fourth node: that none does has odds of about 0.1 %. */
const WORKSPACES = 24;

/** Polls every node's admin API until stopped, recording each sample's doubles and where each workspace was seen. */
class RunnerPoll {
  readonly doubles: string[] = [];
  readonly seenOn = new Map<string, Set<string>>();
  samples = 0;
  errors = 0;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(private readonly nodes: () => ClusterNodeProcess[]) {
    this.done = this.loop();
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      const ns = this.nodes();
      const lists = await Promise.all(ns.map((n) => runningOn(n).catch(() => undefined)));
      const count = new Map<string, string[]>();
      lists.forEach((list, i) => {
        if (list === undefined) {
          this.errors += 1;
          return;
        }
        for (const id of list) {
          count.set(id, [...(count.get(id) ?? []), (ns[i] as ClusterNodeProcess).name]);
          const seen = this.seenOn.get(id) ?? new Set<string>();
          seen.add((ns[i] as ClusterNodeProcess).name);
          this.seenOn.set(id, seen);
        }
      });
      for (const [id, on] of count) if (on.length > 1) this.doubles.push(`${id} on ${on.join(', ')} (sample ${this.samples})`);
      this.samples += 1;
      // Each sample is four HTTP round trips; a short pause keeps the poll from taking a core of two.
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}

describe('cluster: a fourth node and an HAProxy reload (fake codex)', () => {
  let etcd: TestEtcd;
  let dir: string;
  let haproxy: TestHaproxy | undefined;
  const nodes: ClusterNodeProcess[] = [];
  const sessions: Session[] = [];

  beforeAll(async () => {
    etcd = await TestEtcd.start();
    dir = await tempDir('cxg-routing-reload-');
  });
  afterAll(async () => {
    for (const s of sessions) s.ws.terminate();
    await haproxy?.close();
    for (const n of nodes) await n.stop('SIGKILL');
    if (dir !== undefined) await killLeftovers(dir);
    await etcd?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const node = async (name: string): Promise<ClusterNodeProcess> => {
    const n = await startNode({ name, dir, etcdEndpoint: etcd.endpoint, prefix: '/reload/', leaseTtl: '10s' });
    nodes.push(n);
    return n;
  };
  const backends = (): Array<{ name: string; port: number }> => nodes.map((n, i) => ({ name: `gw-${i}`, port: n.port }));
  const forwarding = async (n: ClusterNodeProcess): Promise<Record<string, number>> => (await admin(n, '/admin/cluster')).body.forwarding as Record<string, number>;

  it('clients that land on the new node reach the current owner; no workspace ever runs on two nodes', async () => {
    for (const name of ['a', 'b', 'c']) await node(name);
    haproxy = await TestHaproxy.start(path.join(dir, 'haproxy.cfg'), backends());
    const lb = haproxy.url;
    // The forwarding hop is not reachable through the proxy.
    expect((await fetch(`http://127.0.0.1:${haproxy.port}/cluster/forward`, { headers: { 'x-cxg-forward': 'x.y' } })).status).toBe(403);
    const poll = new RunnerPoll(() => [...nodes]);
    try {
      // Every workspace starts through HAProxy and keeps a client open.
      const ids = Array.from({ length: WORKSPACES }, (_, i) => `ws-reload-${i}`);
      const pidOf = new Map<string, number>();
      for (const id of ids) {
        const s = await session(lb, id);
        sessions.push(s);
        pidOf.set(id, s.info.pid);
      }
      const ownerOf = new Map<string, string>();
      for (const n of nodes) for (const id of await runningOn(n)) ownerOf.set(id, n.name);
      expect(ownerOf.size).toBe(WORKSPACES);

      // A fourth node joins and HAProxy reloads with it.
      const d = await node('d');
      await haproxy.reload(backends());

      // Old connections stay with the old worker and keep working.
      for (const s of sessions.slice(0, 3)) expect((await rpc<{ pid: number }>(s.ws, 'fake/info')).pid).toBe(s.info.pid);
      // New connections follow the new hash; wherever they land, they reach the child that runs.
      for (const id of ids) {
        const s = await session(lb, id);
        expect(s.info.pid, id).toBe(pidOf.get(id));
        s.ws.close();
        await s.closed;
      }
      // Those that hashed to d were forwarded by it; d started none of them.
      const dOut = await forwarding(d);
      expect(dOut.out_total).toBeGreaterThan(0);
      expect(dOut.out_failed).toBe(0);
      expect(await runningOn(d)).toEqual([]);
      let inTotal = 0;
      for (const n of nodes.slice(0, 3)) inTotal += (await forwarding(n)).in_total ?? 0;
      expect(inTotal).toBe(dOut.out_total);

      // A new workspace whose hash is d's starts on d; whichever node it lands on, it runs on one.
      for (let i = 0; i < 4; i++) {
        const s = await session(lb, `ws-reload-new-${i}`);
        sessions.push(s);
      }
    } catch (err) {
      throw new Error(`${(err as Error).message}\nhaproxy: ${haproxy.output.slice(-3000)}`, { cause: err });
    } finally {
      await poll.stop();
    }
    expect(poll.doubles, 'samples where a workspace ran on two nodes').toEqual([]);
    expect(poll.samples).toBeGreaterThan(5);
    for (const [id, on] of poll.seenOn) expect([...on], `nodes ${id} was seen on`).toHaveLength(1);
    // The shipped health check (GET /readyz) kept every gateway up, before and after the reload.
    expect(haproxy.output).not.toMatch(/is DOWN|no server available/);
  }, 300_000);
});
