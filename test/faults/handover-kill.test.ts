/**
 * Scenario 15: a handover restart (restart.handover) whose successor is
 * SIGKILLed half-way: it has received the children's records from the old
 * gateway (which has let go of them and exits 0) and dies before or while
 * it adopts them. The codex child is then nobody's: it keeps running (no
 * parent-death signal under restart.handover). The next start finds no
 * predecessor on the handover socket, starts cold, and its recovery stops
 * the child (its home's state file names it) and stores the home before a
 * new child uses it. After a reconnect the marker file is back, the thread
 * resumes and takes a new turn, and no process is left. Real codex, the
 * gateways as real processes.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { BIN, realCodexToml, startGatewayProcess, writeConfig } from '../gateway-process.js';
import { freePort, waitFor } from '../helpers.js';
import { countLosses, isRunning, processesUnder, recordedChildPid } from './markers.js';
import { MARKER_FILE, whatComesBack } from './what-comes-back.js';
import { FAULT_SECRET, useFaultGateways } from './fault-gateways.js';

describe('fault: the successor of a handover restart is SIGKILLed half-way (real codex)', () => {
  const fx = useFaultGateways('cxg-faults-handover-', ['Back', ' after', ' a', ' lost', ' handover.']);
  const { gateways, pids, env } = fx;
  let config: string;

  beforeAll(async () => {
    const extra = ['[internal]', `port = ${await freePort()}`, '[restart]', 'handover = true', '[warm_restart]', 'max = 0', '[spawn]', 'stop_grace = "3s"', 'ready_timeout = "15s"', '[shutdown]', 'budget = "30s"'];
    config = await writeConfig(path.join(fx.dir, 'gateway.toml'), realCodexToml({ dir: fx.dir, secret: FAULT_SECRET, mockBaseUrl: (fx.mock as { baseUrl: string }).baseUrl, extra }));
  });

  it('scenario 15: the successor dies after it got the records → the child keeps running, the next start stops it and stores its home; marker and thread back, the thread goes on, no process left', async (ctx) => {
    const losses = countLosses(ctx);
    const id = 'handover-lost';
    const token = await signWorkspaceToken({ secret: FAULT_SECRET, workspaceId: id, expiresIn: '10m' });
    const homeRoot = path.join(fx.dir, 'homes');
    const object = path.join(fx.dir, 'store', `${id}.tar.gz`);

    const old = await startGatewayProcess(config, env, 60_000);
    gateways.push(old);
    const c = await AppServerClient.connect(old.url, { token });
    const { codexHome: home } = await c.initialize();
    const threadId = await c.startThread();
    expect((await c.runTurn(threadId, 'survive a lost handover')).status).toBe('completed');
    const marker = `${id} marker ${Date.now()}`;
    await writeFile(path.join(home, MARKER_FILE), marker);
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

    // The successor, started by hand (startGatewayProcess waits for it to listen) and SIGKILLed as soon as it has the records.
    const closed = c.whenClosed();
    const successor = spawn(process.execPath, [BIN, 'serve', '--config', config], { cwd: fx.dir, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const successorExited = new Promise<void>((resolve) => successor.once('exit', () => resolve()));
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        for (const stream of [successor.stdout, successor.stderr]) {
          stream.setEncoding('utf8');
          stream.on('data', (chunk: string) => {
            out += chunk;
            if (out.includes('"msg":"handover: records received"')) resolve();
          });
        }
        void successorExited.then(() => reject(new Error(`the successor exited before it got the records: ${out.slice(-2000)}`)));
      });
    } finally {
      successor.kill('SIGKILL');
      await successorExited;
    }
    // The old gateway handed over and exits 0 whatever its successor does next.
    expect((await old.exited).code).toBe(0);
    expect((await closed).code).toBe(1012);
    expect(await isRunning(childPid), 'the child outlives both gateways').toBe(true);
    expect(existsSync(object)).toBe(false);

    // The next start: no predecessor answers; recovery stops the child and stores the home.
    const third = await startGatewayProcess(config, env, 60_000);
    gateways.push(third);
    await waitFor(async () => !(await isRunning(childPid)), 30_000, 'recovery to stop the left child');
    const c2 = await AppServerClient.connect(third.url, { token });
    const init2 = await c2.initialize();
    expect(init2.codexHome).toBe(home);
    expect(existsSync(object), 'the home was stored before a new child used it').toBe(true);
    pids.add((await recordedChildPid(home)) as number);
    const back = await whatComesBack(third.url, token);
    const resumed = await c2.request('thread/resume', { threadId }).then(
      () => true,
      () => false,
    );
    const turn = resumed ? await c2.runTurn(threadId, 'and on after the lost handover') : undefined;
    seen = { ...back, continued: turn?.status === 'completed' };
    await c2.close();
    expect(back.marker).toBe(marker);
    expect(back.threads).toContain(threadId);
    expect(turn?.status).toBe('completed');

    expect((await third.stop('SIGTERM')).code).toBe(0);
    await waitFor(async () => (await processesUnder(homeRoot)).length === 0, 10_000, 'no codex process left under homes.root');
  }, 180_000);
});
