/**
 * Three gateways behind HAProxy (Debian's, with the shipped config), one
 * etcd, one file store, the real codex behind a Responses mock: a
 * workspace's connections all land on one node, which alone runs its child
 * (asked of every node's admin API after each connection); a turn, then a
 * reconnect with `thread/resume` and another turn, work through HAProxy;
 * and a client that reaches another node directly is forwarded to that
 * child, where the thread goes on.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppServerClient } from './fixtures/app-server-client.js';
import { admin, runningOn, startNode, tokenFor } from './fixtures/cluster-nodes.js';
import type { ClusterNodeProcess } from './fixtures/cluster-nodes.js';
import { TestEtcd } from './fixtures/etcd.js';
import { TestHaproxy } from './fixtures/haproxy.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { tempDir } from './helpers.js';
import { killLeftovers } from './faults/markers.js';

const DELTAS = ['Routed', ' by', ' the', ' workspace.'];

interface Turn {
  status: string;
  items: Array<{ type: string; text?: string }>;
}

describe('cluster behind HAProxy (real codex)', () => {
  let etcd: TestEtcd;
  let mock: ResponsesMock;
  let dir: string;
  let haproxy: TestHaproxy | undefined;
  const nodes: ClusterNodeProcess[] = [];

  beforeAll(async () => {
    etcd = await TestEtcd.start();
    mock = await startResponsesMock({ deltas: DELTAS });
    dir = await tempDir('cxg-routing-haproxy-');
    for (const name of ['a', 'b', 'c']) {
      nodes.push(await startNode({ name, dir, etcdEndpoint: etcd.endpoint, prefix: '/real/', leaseTtl: '10s', realCodex: { mockBaseUrl: mock.baseUrl } }));
    }
    haproxy = await TestHaproxy.start(path.join(dir, 'haproxy.cfg'), nodes.map((n, i) => ({ name: `gw-${i}`, port: n.port })));
  }, 240_000);
  afterAll(async () => {
    await haproxy?.close();
    for (const n of nodes) await n.stop('SIGKILL');
    if (dir !== undefined) await killLeftovers(dir);
    await mock?.close();
    await etcd?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  /** The nodes whose admin API lists the workspace's child. */
  async function runners(id: string): Promise<string[]> {
    const lists = await Promise.all(nodes.map((n) => runningOn(n)));
    return nodes.filter((_, i) => (lists[i] as string[]).includes(id)).map((n) => n.name);
  }

  it('one workspace lands on one node; a turn, a reconnect with thread/resume and a turn, through HAProxy; a client on another node is forwarded to the same child', async () => {
    const id = 'ws-haproxy-real';
    const token = await tokenFor(id);
    const lb = (haproxy as TestHaproxy).url;

    let c = await AppServerClient.connect(lb, { token, timeoutMs: 60_000 });
    const init = await c.initialize();
    const owner = await runners(id);
    expect(owner).toHaveLength(1);
    const ownerNode = nodes.find((n) => n.name === owner[0]) as ClusterNodeProcess;
    expect(init.codexHome.startsWith(path.join(dir, 'real', ownerNode.name))).toBe(true);
    const threadId = await c.startThread();
    const t1 = await c.runTurn(threadId, 'turn 1 through HAProxy', 120_000);
    expect(t1.status).toBe('completed');
    expect(t1.deltas).toEqual(DELTAS);

    // More connections while the first is open: each lands on the same node, which alone runs the child.
    for (let i = 0; i < 4; i++) {
      const x = await AppServerClient.connect(lb, { token, timeoutMs: 60_000 });
      expect((await x.initialize()).codexHome).toBe(init.codexHome);
      expect(await runners(id)).toEqual(owner);
      await x.close();
    }
    await c.close();

    // Reconnect through HAProxy: resume the thread by id, and a new turn.
    c = await AppServerClient.connect(lb, { token, timeoutMs: 60_000 });
    expect((await c.initialize()).codexHome).toBe(init.codexHome);
    const resumed = await c.request<{ thread: { id: string } }>('thread/resume', { threadId });
    expect(resumed.thread.id).toBe(threadId);
    const t2 = await c.runTurn(threadId, 'turn 2 after a reconnect', 120_000);
    expect(t2.status).toBe('completed');
    expect(t2.deltas).toEqual(DELTAS);
    expect(await runners(id)).toEqual(owner);
    await c.close();
    // HAProxy sent every connection to the owner itself: nothing needed forwarding.
    for (const n of nodes) expect(((await admin(n, '/admin/cluster')).body.forwarding as Record<string, number>).out_total).toBe(0);

    // A client that reaches another node directly is forwarded to the owner's child: the thread goes on there.
    const other = nodes.find((n) => n !== ownerNode) as ClusterNodeProcess;
    c = await AppServerClient.connect(other.url, { token, timeoutMs: 60_000 });
    expect((await c.initialize()).codexHome).toBe(init.codexHome);
    await c.request('thread/resume', { threadId });
    const t3 = await c.runTurn(threadId, 'turn 3 through another node', 120_000);
    expect(t3.status).toBe('completed');
    expect(t3.deltas).toEqual(DELTAS);
    expect(await runners(id)).toEqual(owner);
    expect((await admin(other, '/admin/cluster')).body.forwarding).toMatchObject({ out_total: 1, out_failed: 0 });
    expect((await admin(ownerNode, '/admin/cluster')).body.forwarding).toMatchObject({ in_total: 1, in_refused: 0 });

    const read = await c.request<{ thread: { turns: Turn[] } }>('thread/read', { threadId, includeTurns: true });
    expect(read.thread.turns).toHaveLength(3);
    for (const t of read.thread.turns) {
      expect(t.status).toBe('completed');
      expect(t.items.filter((i) => i.type === 'agentMessage').map((i) => i.text)).toEqual([DELTAS.join('')]);
    }
    await c.close();
    // The shipped health check (GET /readyz) kept every gateway up.
    expect((haproxy as TestHaproxy).output).not.toMatch(/is DOWN|no server available/);
  }, 300_000);
});
