/**
 * The run's leak check (test/leak-check.ts) sees what a test can leave
 * behind, and the gateway-process harness leaves nothing when a gateway
 * never says it is listening.
 */
import { spawn } from 'node:child_process';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { startGatewayProcess, writeConfig } from './gateway-process.js';
import { tempDir, waitFor } from './helpers.js';
import { leftovers } from './leak-check.js';
import { RUN_ENV, TMP_ROOT_ENV } from './temp-root.js';

const run = process.env[RUN_ENV] as string;
const root = process.env[TMP_ROOT_ENV] as string;

describe('leak check', () => {
  it('runs: the workers carry the run marker and the run temp dir', () => {
    expect(run).toMatch(/\S/);
    expect(path.basename(root)).toBe(`run-${run}`);
  });

  it('finds a detached process without the marker whose cwd is in the run temp dir (a codex child after its gateway was SIGKILLed)', async () => {
    const dir = await tempDir('leak-probe-');
    // As the gateway starts codex: its own group, only an allowlist of the environment.
    const child = spawn('sleep', ['300'], { cwd: dir, detached: true, stdio: 'ignore', env: { PATH: process.env.PATH } });
    const pid = child.pid as number;
    try {
      const found = (await leftovers(run, root)).find((l) => l.pid === pid);
      expect(found?.why).toBe(`cwd ${dir}`);
    } finally {
      process.kill(-pid, 'SIGKILL');
      await new Promise((r) => child.once('exit', r));
      await rm(dir, { recursive: true, force: true });
    }
    expect((await leftovers(run, root)).map((l) => l.pid)).not.toContain(pid);
  });

  it('finds a process that inherited the marker, wherever it runs', async () => {
    const child = spawn('sleep', ['300'], { cwd: '/', detached: true, stdio: 'ignore' });
    const pid = child.pid as number;
    try {
      expect((await leftovers(run, root)).find((l) => l.pid === pid)?.why).toBe(`${RUN_ENV} in its environment`);
    } finally {
      process.kill(-pid, 'SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
  });
});

describe('gateway process harness', () => {
  it('a gateway that does not say it is listening in time is stopped, not left running', async () => {
    const dir = await tempDir('cxg-no-listen-');
    try {
      await mkdir(path.join(dir, 'data'));
      const config = await writeConfig(
        path.join(dir, 'gw.toml'),
        ['shards = 1', '[data]', `dir = ${JSON.stringify(path.join(dir, 'data'))}`, '[listen]', 'port = 0', '[codex]', `bin = ${JSON.stringify(fakeCodexBin())}`, ''].join('\n'),
      );
      // No gateway starts in 1 ms: the harness gives up before the listening line.
      await expect(startGatewayProcess(config, {}, 1)).rejects.toThrow(/log line not seen within 1 ms/);
      const gateways = async (): Promise<number> => (await leftovers(run, root)).filter((l) => l.cmd.includes(config)).length;
      await waitFor(async () => (await gateways()) === 0, 10_000, 'the gateway process to be gone');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
