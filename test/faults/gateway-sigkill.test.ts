/**
 * Scenario 2: the gateway process is SIGKILLed mid-session (no drain, no
 * exit handlers) and started again with the same config. The codex child
 * follows it (parent-death signal), the home it left is uploaded by the new
 * gateway's start-up recovery (invariant 4: found again after a restart)
 * before a new child uses it, and after a reconnect the marker file is back
 * and the thread resumes and takes a new turn. Real codex, the gateway as a
 * real process (bin/codex-app-gateway.mjs).
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { startGatewayProcess } from '../gateway-process.js';
import { waitFor } from '../helpers.js';
import { countLosses, groupsUnder, isRunning, processesUnder, recordedChildPid } from './markers.js';
import { MARKER_FILE, whatComesBack } from './what-comes-back.js';
import { FAULT_SECRET, useFaultGateways } from './fault-gateways.js';


describe('fault: the gateway process is SIGKILLed mid-session (real codex)', () => {
  const fx = useFaultGateways('cxg-faults-gw-kill-', ['Back', ' after', ' a', ' SIGKILL.']);
  const { gateways, pids, env } = fx;
  let config: string;

  beforeAll(async () => {
    ({ config } = await fx.configIn());
  });

  it('scenario 2: gateway SIGKILLed mid-session, started again, the client reconnects at once → its child follows it, recovery uploads the home before it is used again; marker and thread back, the thread goes on', async (ctx) => {
    const losses = countLosses(ctx);
    const id = 'gateway-sigkill';
    const token = await signWorkspaceToken({ secret: FAULT_SECRET, workspaceId: id, expiresIn: '10m' });
    const homeRoot = path.join(fx.dir, 'homes');
    const object = path.join(fx.dir, 'store', `${id}.tar.gz`);

    const first = await startGatewayProcess(config, env);
    gateways.push(first);
    const c = await AppServerClient.connect(first.url, { token });
    const init = await c.initialize();
    const home = init.codexHome;
    expect(home.startsWith(path.join(homeRoot, id))).toBe(true);
    const threadId = await c.startThread();
    expect((await c.runTurn(threadId, 'survive a gateway SIGKILL')).status).toBe('completed');
    const marker = `${id} marker ${Date.now()}`;
    await writeFile(path.join(home, MARKER_FILE), marker);
    // What the reconnect below saw, or, when the test broke before it, what a new client of the running gateway sees.
    let seen: { marker: string | undefined; threads: string[]; continued?: boolean } | undefined;
    losses.countWith(async () => {
      if (seen === undefined) {
        const running = gateways.find((gw) => gw.proc.exitCode === null && gw.proc.signalCode === null);
        if (running === undefined) throw new Error('no gateway is running to ask');
        seen = await whatComesBack(running.url, token);
      }
      return (seen.marker === marker ? 0 : 1) + (seen.threads.includes(threadId) ? 0 : 1) + (seen.continued === false ? 1 : 0);
    });
    const childPid = (await recordedChildPid(home)) as number;
    pids.add(childPid);
    expect(await isRunning(childPid)).toBe(true);

    // SIGKILL the gateway only.
    const closed = c.whenClosed();
    first.proc.kill('SIGKILL');
    expect((await first.exited).signal).toBe('SIGKILL');
    expect((await closed).code).toBe(1006);
    // The child does not outlive the gateway (parent-death signal, scenario 11); its home is left unstored.
    await waitFor(async () => !(await isRunning(childPid)), 10_000, 'the child to follow the killed gateway');
    expect(existsSync(object)).toBe(false);

    // The same config again, and the client reconnects at once, racing start-up recovery:
    // its start waits until recovery has stored the home the dead child left.
    const second = await startGatewayProcess(config, env);
    gateways.push(second);
    let sampling = true;
    const overlaps: string[] = [];
    const sampler = (async () => {
      while (sampling) {
        // One codex child is one process group (its helpers share it).
        const groups = await groupsUnder(path.join(homeRoot, id));
        if (groups.length > 1) overlaps.push(`process groups ${groups.join(', ')}`);
        await sleep(10);
      }
    })();
    let c2: AppServerClient;
    let init2: { codexHome: string };
    try {
      c2 = await AppServerClient.connect(second.url, { token });
      init2 = await c2.initialize();
      // The start waited for recovery: the orphan's home was stored before the new child ran in it.
      expect(existsSync(object), `${object} is stored before the home is used again`).toBe(true);
    } finally {
      sampling = false;
      await sampler;
    }
    expect(overlaps, 'two codex processes of one workspace at once').toEqual([]);
    expect(await isRunning(childPid)).toBe(false);

    // The new child has the state the killed gateway's child wrote, in the same home (invariant 3).
    expect(init2.codexHome).toBe(home);
    const pid2 = (await recordedChildPid(init2.codexHome)) as number;
    pids.add(pid2);
    expect(await groupsUnder(path.join(homeRoot, id))).toEqual([pid2]);
    const markerBack = await readFile(path.join(init2.codexHome, MARKER_FILE), 'utf8').catch(() => undefined);
    const threads = await c2.listThreads();
    // Listed is not enough: the thread goes on.
    const resumed = await c2.request('thread/resume', { threadId }).then(
      () => true,
      () => false,
    );
    const turn = resumed ? await c2.runTurn(threadId, 'and on after the restart') : undefined;
    seen = { marker: markerBack, threads: threads.map((th) => th.id), continued: turn?.status === 'completed' };
    await c2.close();

    expect(markerBack).toBe(marker);
    expect(threads.map((th) => th.id)).toContain(threadId);
    expect(turn?.status).toBe('completed');

    expect((await second.stop('SIGTERM')).code).toBe(0);
    await waitFor(async () => (await processesUnder(homeRoot)).length === 0, 10_000, 'no codex process left under homes.root');
  }, 120_000);
});
