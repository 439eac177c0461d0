/**
 * Ownership through a real etcd (Debian's etcd-server on loopback): one
 * winner among concurrent takeovers, a live owner's workspace refused to
 * others, takeover once the owner's lease is gone, and a pointer that only
 * the current owner can switch.
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterNode } from '../src/main/cluster/ownership.js';
import type { ClusterOptions } from '../src/main/cluster/ownership.js';
import { snapshotName } from '../src/shared/cluster.js';
import { isGatewayError } from '../src/shared/errors.js';
import { TestEtcd } from './fixtures/etcd.js';

const log = pino({ level: 'silent' });

describe('cluster ownership (real etcd)', () => {
  let etcd: TestEtcd;
  const nodes: ClusterNode[] = [];

  beforeAll(async () => {
    etcd = await TestEtcd.start();
  });

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.close().catch(() => {})));
    await etcd?.close();
  });

  async function node(nodeId: string, over: Partial<ClusterOptions> = {}): Promise<ClusterNode> {
    const n = await ClusterNode.create({ nodeId, leaseTtlMs: 15_000, etcd: { endpoints: [etcd.endpoint], prefix: '/test/' }, keepSnapshots: 1, log, ...over });
    nodes.push(n);
    await n.start();
    expect(n.stats().leaseAlive).toBe(true);
    return n;
  }

  it('50 concurrent takeovers of one workspace: exactly one winner, the others see it owned elsewhere', async () => {
    const contenders = await Promise.all(Array.from({ length: 50 }, (_, i) => node(`n${i}`)));
    const outcomes = await Promise.allSettled(contenders.map((n) => n.claim('race')));
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    expect(won).toHaveLength(1);
    expect((won[0] as PromiseFulfilledResult<{ epoch: number; taken: boolean }>).value).toMatchObject({ epoch: 1, taken: true });
    for (const o of outcomes) {
      if (o.status === 'rejected') expect(isGatewayError(o.reason, 'GW_OWNED_ELSEWHERE') || isGatewayError(o.reason, 'GW_CLUSTER_UNAVAILABLE')).toBe(true);
    }
    expect(outcomes.filter((o) => o.status === 'rejected' && isGatewayError(o.reason, 'GW_OWNED_ELSEWHERE')).length).toBeGreaterThan(0);
    const winner = contenders[outcomes.findIndex((o) => o.status === 'fulfilled')] as ClusterNode;
    expect((await winner.owner('race'))?.node).toBe(winner.stats().nodeId);
    // Claiming again from the owner is not a takeover.
    expect(await winner.claim('race')).toMatchObject({ epoch: 1, taken: false });
    await winner.release('race');
    await Promise.all(contenders.map((n) => n.close()));
    nodes.length = 0;
  }, 120_000);

  it('the pointer moves only under ownership: a released or taken-over owner\'s commit is fenced', async () => {
    const a = await node('a');
    const b = await node('b');
    const ca = await a.claim('ws1');
    expect(ca).toMatchObject({ epoch: 1, current: null, taken: true });
    await expect(b.claim('ws1')).rejects.toMatchObject({ code: 'GW_OWNED_ELSEWHERE' });
    const s1 = { snapshot: snapshotName(1, 'g1'), epoch: 1, generation: 'g1' };
    expect(await a.commit('ws1', 1, s1)).toEqual({ current: true, drop: [] });
    await a.release('ws1');
    const cb = await b.claim('ws1');
    expect(cb).toMatchObject({ epoch: 2, taken: true, current: { snapshot: s1.snapshot, epoch: 1 } });
    // a's late upload from its epoch-1 run is refused: a does not hold the workspace (it may claim it and try again)…
    const late = { snapshot: snapshotName(1, 'g1b'), epoch: 1, generation: 'g1b' };
    expect(await a.commit('ws1', 1, late)).toMatchObject({ current: false, final: false });
    const s2 = { snapshot: snapshotName(2, 'g2'), epoch: 2, generation: 'g2' };
    expect(await b.commit('ws1', 2, s2)).toEqual({ current: true, drop: [] });
    // …and for good once state of a later epoch is current.
    expect(await a.commit('ws1', 1, late)).toMatchObject({ current: false, final: true });
    const s3 = { snapshot: snapshotName(2, 'g3'), epoch: 2, generation: 'g3' };
    // One snapshot is kept besides the current one; the one before it is dropped.
    expect(await b.commit('ws1', 2, s3)).toEqual({ current: true, drop: [s1.snapshot] });
    expect(await a.current('ws1')).toMatchObject({ snapshot: s3.snapshot, epoch: 2 });
    expect(a.stats().fencedCommits).toBe(2);
    await b.release('ws1');
  });

  it('a frozen owner\'s workspace is taken over once its lease expires; its commit then fails', async () => {
    const a = await node('fa', { leaseTtlMs: 2000 });
    const b = await node('fb', { leaseTtlMs: 2000 });
    await a.claim('ws2');
    const lost = new Promise<void>((resolve) => a.once('lost', () => resolve()));
    // Stop a's keep-alives without telling etcd: the lease runs out as if a were frozen.
    await (a as unknown as { lease: { stopRenewing(): Promise<void> } }).lease.stopRenewing();
    await lost;
    expect(a.stats().leaseAlive).toBe(false);
    await expect(a.claim('other')).rejects.toMatchObject({ code: 'GW_CLUSTER_UNAVAILABLE' });
    let claim;
    for (const until = Date.now() + 20_000; ; ) {
      claim = await b.claim('ws2').catch((err: unknown) => err);
      if (!isGatewayError(claim, 'GW_OWNED_ELSEWHERE') || Date.now() > until) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(claim).toMatchObject({ epoch: 2, taken: true });
    expect(await a.commit('ws2', 1, { snapshot: snapshotName(1, 'gx'), epoch: 1, generation: 'gx' })).toMatchObject({ current: false, final: false });
    await b.release('ws2');
  }, 60_000);
});
