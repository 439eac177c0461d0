/**
 * Scenario 11: children do not outlive the gateway, however it dies. The
 * gateway process is SIGKILLed (no drain, no exit handler runs) with an idle
 * codex child on each of its two shards: within 2 s no codex process of it
 * is left (each child gets the parent-death signal, SIGTERM, and exits), and
 * the next start's recovery stores both homes and the threads come back.
 * Real codex, the gateway as a real process.
 */
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { shardOf } from '../../src/shared/workspace-id.js';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { startGatewayProcess } from '../gateway-process.js';
import { waitFor } from '../helpers.js';
import { isRunning, processesUnder, recordLost, recordedChildPid } from './markers.js';
import { MARKER_FILE, whatComesBack } from './what-comes-back.js';
import { FAULT_SECRET, useFaultGateways } from './fault-gateways.js';

/** The promise: no child of a killed gateway is left after this long. */
const ORPHAN_DEADLINE_MS = 2000;

describe('fault: the gateway is SIGKILLed and leaves no orphans (real codex)', () => {
  const fx = useFaultGateways('cxg-faults-orphans-', ['No', ' orphans.']);
  const { gateways, pids, env } = fx;
  let config: string;

  beforeAll(async () => {
    ({ config } = await fx.configIn());
  });

  it('scenario 11: gateway SIGKILLed with a child on each shard → none is left within 2 s; the next start stores both homes and the threads come back', async ({ task }) => {
    const homeRoot = path.join(fx.dir, 'homes');
    // One workspace per shard (shards = 2): both shard threads forked a child.
    const ids: string[] = [];
    for (let i = 0; ids.length < 2; i++) {
      const id = `orphan-${i}`;
      if (!ids.some((x) => shardOf(x, 2) === shardOf(id, 2))) ids.push(id);
    }
    const first = await startGatewayProcess(config, env);
    gateways.push(first);
    const state = new Map<string, { threadId: string; marker: string; pid: number }>();
    for (const id of ids) {
      const c = await AppServerClient.connect(first.url, { token: await signWorkspaceToken({ secret: FAULT_SECRET, workspaceId: id, expiresIn: '10m' }) });
      const init = await c.initialize();
      const threadId = await c.startThread();
      expect((await c.runTurn(threadId, 'outlive nothing')).status).toBe('completed');
      const marker = `${id} ${Date.now()}`;
      await writeFile(path.join(init.codexHome, MARKER_FILE), marker);
      const pid = (await recordedChildPid(init.codexHome)) as number;
      pids.add(pid);
      state.set(id, { threadId, marker, pid });
      await c.close();
    }
    expect(await processesUnder(homeRoot)).toHaveLength(2);

    let lost = 2 * ids.length;
    try {
      first.proc.kill('SIGKILL');
      const t0 = Date.now();
      await first.exited;
      // Polled, not slept: the verdict is whether they are gone by the deadline.
      let left = await processesUnder(homeRoot);
      while (left.length > 0 && Date.now() - t0 < ORPHAN_DEADLINE_MS) {
        await sleep(25);
        left = await processesUnder(homeRoot);
      }
      const goneAfterMs = Date.now() - t0;
      const stillRunning = (await Promise.all([...state.values()].map(async ({ pid }) => ((await isRunning(pid)) ? [pid] : [])))).flat();

      // The next start's recovery stores what the children left.
      const second = await startGatewayProcess(config, env);
      gateways.push(second);
      await waitFor(() => ids.every((id) => existsSync(path.join(fx.dir, 'store', `${id}.tar.gz`))), 30_000, 'both homes to be stored by recovery');
      lost = 0;
      for (const id of ids) {
        const s = state.get(id) as { threadId: string; marker: string };
        const back = await whatComesBack(second.url, await signWorkspaceToken({ secret: FAULT_SECRET, workspaceId: id, expiresIn: '10m' }));
        pids.add((await recordedChildPid(back.codexHome)) as number);
        if (back.marker !== s.marker) lost += 1;
        if (!back.threads.includes(s.threadId)) lost += 1;
      }
      expect(lost).toBe(0);
      expect(left, `codex processes of the killed gateway still running after ${goneAfterMs} ms`).toEqual([]);
      expect(stillRunning).toEqual([]);
      expect((await second.stop('SIGTERM')).code).toBe(0);
      await waitFor(async () => (await processesUnder(homeRoot)).length === 0, 10_000, 'no codex process left under homes.root');
    } finally {
      recordLost(task, lost);
    }
  }, 150_000);
});
