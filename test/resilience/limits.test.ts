/**
 * Supervisor `limits`: max_children (evict the least recently active child
 * without a client, or refuse with GW_CAPACITY) and max_concurrent_spawns
 * (starts beyond the limit wait, and all finish).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { WorkspaceStatus } from 'codex-app-gateway';
import { closeOf, openWs, rpc, startTestGateway } from '../gateway-helpers.js';
import { countingBuilder, homeState, processAlive, rejection, startTestSupervisor, waitFor } from '../helpers.js';
import { processesUnder } from '../faults/markers.js';
import { builderWith, readInHome, sleep, writeInHome } from './helpers.js';

async function statuses(sup: { stats(): Promise<Array<{ workspaces: WorkspaceStatus[] }>> }): Promise<WorkspaceStatus[]> {
  return (await sup.stats()).flatMap((s) => s.workspaces);
}

describe('limits.max_children (Supervisor)', () => {
  it('when full, the least recently active child is stopped to make room: its home is uploaded and the new child starts', async () => {
    const stopped: string[] = [];
    const t = await startTestSupervisor({ limits: { maxChildren: 2 }, onWorkspaceStopped: (e) => stopped.push(`${e.workspaceId}:${e.reason}:${String(e.saved)}`) });
    try {
      const build = countingBuilder();
      const a = await t.sup.ensureSubprocess({ workspaceId: 'mc-a' }, build);
      await writeInHome(a, 'state.txt', 'a-was-here');
      const b = await t.sup.ensureSubprocess({ workspaceId: 'mc-b' }, build);
      await sleep(20);
      // a is touched last: b is now the least recently active.
      t.sup.touch({ workspaceId: 'mc-a' });
      await writeInHome(b, 'state.txt', 'b-was-here');
      await sleep(20);

      const c = await t.sup.ensureSubprocess({ workspaceId: 'mc-c' }, build);
      expect(c.isAlive()).toBe(true);
      expect(await b.done()).toBeDefined();
      expect(processAlive(b.pid)).toBe(false);
      expect(a.isAlive()).toBe(true);
      // The slot is given back when the child exits; its upload ends after that.
      await waitFor(() => stopped.includes('mc-b:evict:true'), 30_000, "b's home to be stored");
      expect(existsSync(path.join(t.storeDir, 'mc-b.tar.gz'))).toBe(true);
      expect(await homeState(t.homeRoot, 'mc-b')).toMatchObject({ stored: true, pid: null });
      const live = await statuses(t.sup);
      expect(live.map((w) => w.workspaceId).sort()).toEqual(['mc-a', 'mc-c']);

      // Coming back evicts the next least recently active (a), and finds its state.
      t.sup.touch({ workspaceId: 'mc-c' });
      await sleep(20);
      const b2 = await t.sup.ensureSubprocess({ workspaceId: 'mc-b' }, build);
      expect(await readInHome(b2, 'state.txt')).toBe('b-was-here');
      await a.done();
      expect(c.isAlive()).toBe(true);
      await waitFor(() => stopped.includes('mc-a:evict:true'), 30_000, "a's home to be stored");
      expect(existsSync(path.join(t.storeDir, 'mc-a.tar.gz'))).toBe(true);
      const a2 = await t.sup.ensureSubprocess({ workspaceId: 'mc-a' }, build);
      expect(await readInHome(a2, 'state.txt')).toBe('a-was-here');
      expect((await statuses(t.sup)).length).toBe(2);
    } finally {
      await t.close();
    }
  });

  it('two concurrent starts into a full supervisor evict one idle child each; never more than max_children processes at once', async () => {
    const stored: string[] = [];
    const t = await startTestSupervisor({ limits: { maxChildren: 2 }, onWorkspaceStopped: (e) => { if (e.saved) stored.push(e.workspaceId); } });
    try {
      const build = countingBuilder();
      await t.sup.ensureSubprocess({ workspaceId: 'mcc-0' }, build);
      await t.sup.ensureSubprocess({ workspaceId: 'mcc-1' }, build);
      let max = 0;
      let polling = true;
      const poll = (async () => {
        while (polling) {
          max = Math.max(max, (await processesUnder(t.homeRoot)).length);
          await sleep(5);
        }
      })();
      const handles = await Promise.all(['mcc-2', 'mcc-3'].map((id) => t.sup.ensureSubprocess({ workspaceId: id }, build)));
      polling = false;
      await poll;
      expect(handles.every((h) => h.isAlive())).toBe(true);
      expect(max).toBeLessThanOrEqual(2);
      expect((await statuses(t.sup)).map((w) => w.workspaceId).sort()).toEqual(['mcc-2', 'mcc-3']);
      // The slot is given back when the evicted child exits; its upload ends after that.
      await waitFor(() => stored.length === 2, 30_000, 'both evicted homes to be stored');
      expect(stored.sort()).toEqual(['mcc-0', 'mcc-1']);
      for (const id of ['mcc-0', 'mcc-1']) expect(existsSync(path.join(t.storeDir, `${id}.tar.gz`))).toBe(true);
    } finally {
      await t.close();
    }
  });

  it('a start while every slot is held by a child still starting fails with GW_CAPACITY saying so', async () => {
    const t = await startTestSupervisor({ limits: { maxChildren: 1 } });
    try {
      const slow = t.sup.ensureSubprocess({ workspaceId: 'mcs-slow' }, builderWith(['FAKE_CODEX_MODE=slow-ready', 'FAKE_CODEX_READY_AFTER_MS=1500']));
      await waitFor(async () => (await t.sup.workspaceStatus({ workspaceId: 'mcs-slow' }))?.pid !== undefined, 10_000, 'the slow child to be spawned');
      const err = await rejection(t.sup.ensureSubprocess({ workspaceId: 'mcs-other' }, countingBuilder()));
      expect(err.code).toBe('GW_CAPACITY');
      expect(err.message).toMatch(/starting/);
      expect((await slow).isAlive()).toBe(true);
    } finally {
      await t.close();
    }
  });
});

describe('limits.max_children (gateway clients)', () => {
  it('when every child has a client attached, a new start fails with GW_CAPACITY and its client gets 1013; once a client leaves, its child makes room', async () => {
    const t = await startTestGateway({}, { limits: { maxChildren: 2 } });
    try {
      const a = await openWs(t.url, await t.token('cap-a'));
      const b = await openWs(t.url, await t.token('cap-b'));
      const infoA = await rpc<{ pid: number }>(a, 'fake/info');
      await rpc(a, 'fake/writeFile', { path: 'state.txt', content: 'a' });
      await rpc(b, 'fake/info');

      const c = await openWs(t.url, await t.token('cap-c'));
      const closed = await closeOf(c);
      expect(closed.code).toBe(1013);
      expect(closed.reason).toContain('GW_CAPACITY');
      const err = await rejection(t.gw.sup.ensureSubprocess({ workspaceId: 'cap-c' }, builderWith()));
      expect(err.code).toBe('GW_CAPACITY');
      expect(processAlive(infoA.pid)).toBe(true);

      a.close();
      await closeOf(a);
      await waitFor(async () => (await t.gw.sup.workspaceStatus({ workspaceId: 'cap-a' }))?.clients === 0, 5000, 'a to have no client');
      const c2 = await openWs(t.url, await t.token('cap-c'));
      await rpc(c2, 'fake/info');
      await waitFor(() => !processAlive(infoA.pid), 5000, "a's child to be stopped");
      await waitFor(() => existsSync(path.join(t.storeDir, 'cap-a.tar.gz')), 5000, "a's home to be uploaded");
      // b kept its client and its child.
      await rpc(b, 'fake/info');
      b.close();
      c2.close();
    } finally {
      await t.close();
    }
  });
});

describe('limits.max_concurrent_spawns', () => {
  it('starts beyond the limit wait: never more than K processes starting at once, and all of them succeed', async () => {
    const K = 2;
    const t = await startTestSupervisor({ limits: { maxConcurrentSpawns: K } });
    try {
      const build = builderWith(['FAKE_CODEX_MODE=slow-ready', 'FAKE_CODEX_READY_AFTER_MS=700']);
      const ids = Array.from({ length: 6 }, (_, i) => `mcs-${i}`);
      let maxSpawning = 0;
      let polling = true;
      const poll = (async () => {
        while (polling) {
          const ws = await statuses(t.sup);
          // A process exists (pid known) but is not ready yet. Starts still
          // waiting for a permit are 'starting' too, but have no process.
          maxSpawning = Math.max(maxSpawning, ws.filter((w) => w.state === 'starting' && w.pid !== undefined).length);
          await sleep(10);
        }
      })();
      const t0 = Date.now();
      const handles = await Promise.all(ids.map((id) => t.sup.ensureSubprocess({ workspaceId: id }, build)));
      const took = Date.now() - t0;
      polling = false;
      await poll;
      expect(handles.every((h) => h.isAlive())).toBe(true);
      expect(new Set(handles.map((h) => h.pid)).size).toBe(6);
      expect(maxSpawning).toBeLessThanOrEqual(K);
      expect(maxSpawning).toBe(K);
      // Three rounds of 700 ms readiness at least.
      expect(took).toBeGreaterThanOrEqual(3 * 700);
    } finally {
      await t.close();
    }
  });
});
