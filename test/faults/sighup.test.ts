/**
 * Scenario 10: the gateway gets SIGHUP, as when the terminal it runs in is
 * closed. It drains like on SIGTERM: the child is stopped, the home stored,
 * the process exits 0; no codex child keeps running until the next start's
 * recovery finds it. Once by `kill -HUP`, once by really closing a
 * terminal (a pseudo-terminal from util-linux `script`, killed), after which
 * every write to that terminal fails with EIO and must not end the drain.
 * Real codex, the gateway as a real process.
 */
import { spawn } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { readFile, readlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { BIN, startGatewayProcess } from '../gateway-process.js';
import { waitFor } from '../helpers.js';
import { descendantsOf, isRunning, killGroups, processesUnder, recordLost, recordedChildPid } from './markers.js';
import { FAULT_SECRET, useFaultGateways } from './fault-gateways.js';


describe('fault: the gateway gets SIGHUP (real codex)', () => {
  const fx = useFaultGateways('cxg-faults-sighup-', ['Stored', ' on', ' hang-up.']);
  const { gateways, pids, env } = fx;

  /** A finished turn and a marker in the workspace's home; returns what must come back. */
  async function work(url: string, id: string): Promise<{ home: string; threadId: string; childPid: number }> {
    const token = await signWorkspaceToken({ secret: FAULT_SECRET, workspaceId: id, expiresIn: '10m' });
    const c = await AppServerClient.connect(url, { token });
    const init = await c.initialize();
    const threadId = await c.startThread();
    expect((await c.runTurn(threadId, 'keep this when the terminal closes')).status).toBe('completed');
    await writeFile(path.join(init.codexHome, 'fault-marker.txt'), id);
    const childPid = (await recordedChildPid(init.codexHome)) as number;
    pids.add(childPid);
    void c.close().catch(() => {});
    return { home: init.codexHome, threadId, childPid };
  }

  it('scenario 10: SIGHUP drains like SIGTERM → the child is stopped, the home stored, exit 0', async ({ task }) => {
    const { config, root } = await fx.configIn('kill-hup');
    const gw = await startGatewayProcess(config, env);
    gateways.push(gw);
    const id = 'sighup-kill';
    const { home, childPid } = await work(gw.url, id);
    const object = path.join(root, 'store', `${id}.tar.gz`);
    let lost = 1;
    try {
      gw.proc.kill('SIGHUP');
      const exit = await gw.exited;
      lost = existsSync(object) ? 0 : 1;
      expect(exit, 'the gateway drained and exited by itself').toEqual({ code: 0, signal: null });
      expect(gw.logs.some((l) => l.msg === 'draining' && l.signal === 'SIGHUP')).toBe(true);
      expect(gw.logs.find((l) => l.msg === 'gateway stopped')).toMatchObject({ saved: 1, unsaved: 0 });
      expect(await isRunning(childPid), 'the child outlived the gateway').toBe(false);
      expect(existsSync(object), 'the home was stored').toBe(true);
      expect(JSON.parse(await readFile(path.join(home, '.cxg-home.json'), 'utf8')), 'the home is marked stored').toMatchObject({ stored: true, pid: null });
    } finally {
      recordLost(task, lost);
    }
  }, 90_000);

  it('scenario 10: the terminal the gateway runs in is closed → it drains although the terminal is gone', async ({ task }) => {
    const { config, root } = await fx.configIn('terminal');
    // `script` gives the gateway a pseudo-terminal as its controlling terminal
    // and stdout; killing `script` closes the terminal's master side, as closing
    // a terminal window does: the kernel sends SIGHUP, and writes fail with EIO.
    // `exec`: script runs the command through $SHELL -c, and dash (the shell
    // when SHELL is unset or /bin/sh) would otherwise stay as the parent.
    const command = `exec ${[process.execPath, BIN, 'serve', '--config', config].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')}`;
    const term = spawn('script', ['-qfec', command, '/dev/null'], {
      cwd: fx.dir,
      env: { ...process.env, ...env, TERM: 'dumb', SHELL: '/bin/sh' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const termExited = new Promise<void>((resolve) => term.once('exit', () => resolve()));
    let screen = '';
    term.stdout.setEncoding('utf8');
    term.stdout.on('data', (s: string) => (screen += s));
    const id = 'sighup-terminal';
    const object = path.join(root, 'store', `${id}.tar.gz`);
    let gatewayPid: number | undefined;
    let lost = 1;
    try {
      // The terminal shows pino-pretty's lines: `url: "ws://127.0.0.1:PORT"`.
      let url: string | undefined;
      // eslint-disable-next-line no-control-regex
      const plain = (): string => screen.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
      await waitFor(() => (url = /gateway listening[\s\S]*?url: "(ws:\/\/[^"]+)"/.exec(plain())?.[1]) !== undefined, 30_000, `the gateway to listen; screen: ${plain().slice(-500)}`);
      const family = await descendantsOf(term.pid as number);
      for (const pid of family) pids.add(pid);
      const { home, childPid } = await work(url as string, id);
      // The gateway is the node process running the CLI, not a shell whose
      // command line merely names it.
      gatewayPid = (
        await Promise.all(
          family.map(async (pid) => ({
            pid,
            exe: await readlink(`/proc/${pid}/exe`).catch(() => ''),
            cmd: await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => ''),
          })),
        )
      ).find((p) => p.exe === realpathSync(process.execPath) && p.cmd.includes('codex-app-gateway.mjs'))?.pid;
      expect(gatewayPid, 'the gateway process under script').toBeDefined();

      term.kill('SIGKILL');
      await termExited;
      await waitFor(async () => !(await isRunning(gatewayPid as number)), 45_000, 'the gateway to drain and exit after its terminal closed');
      lost = existsSync(object) ? 0 : 1;
      expect(await isRunning(childPid), 'the child outlived the gateway').toBe(false);
      expect(existsSync(object), 'the home was stored before the gateway exited').toBe(true);
      expect(JSON.parse(await readFile(path.join(home, '.cxg-home.json'), 'utf8')), 'the home is marked stored').toMatchObject({ stored: true, pid: null });
      expect(await processesUnder(root)).toEqual([]);
    } finally {
      recordLost(task, lost);
      if (gatewayPid !== undefined && (await isRunning(gatewayPid))) killGroups([gatewayPid]);
      term.kill('SIGKILL');
    }
  }, 120_000);
});
