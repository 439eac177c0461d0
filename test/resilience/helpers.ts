/**
 * Shared set-up for the resilience suite: a logger that records what it is
 * told, a file store that can be taken down and brought back, a long-lived
 * process in its own group (for recovery), and fake-codex queries through a
 * ChildHandle.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import type { Logger } from 'pino';
import type { ChildHandle } from 'codex-app-gateway';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { spawnConfig } from '../helpers.js';

export interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** A pino logger whose lines land in `lines` (parsed), for asserting warnings. */
export function recordingLogger(level = 'info'): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) {
        if (l.trim() !== '') lines.push(JSON.parse(l) as LogLine);
      }
      cb();
    },
  });
  return { log: pino({ level }, sink), lines };
}

/** A FileObjectStore directory that can be made unusable (a file in its place) and restored. */
export function breakableStore(storeDir: string): { down(): Promise<void>; up(): Promise<void> } {
  let isDown = false;
  return {
    async down() {
      if (isDown) return;
      isDown = true;
      await rm(`${storeDir}.real`, { recursive: true, force: true });
      await rename(storeDir, `${storeDir}.real`).catch(async () => {
        // Nothing stored yet: an empty store.
        const { mkdir } = await import('node:fs/promises');
        await mkdir(`${storeDir}.real`, { recursive: true });
      });
      await writeFile(storeDir, 'the store is down');
    },
    async up() {
      if (!isDown) return;
      isDown = false;
      await rm(storeDir, { force: true });
      await rename(`${storeDir}.real`, storeDir);
    },
  };
}

/** Extra env for the fake child, on top of the usual test config. */
export function builderWith(env: string[] = []): () => ReturnType<typeof spawnConfig> {
  return () => {
    const cfg = spawnConfig();
    cfg.env = [...(cfg.env ?? []), ...env];
    return cfg;
  };
}

export async function withClient<T>(h: ChildHandle, fn: (c: AppServerClient) => Promise<T>): Promise<T> {
  const c = await AppServerClient.connect(h.wsUrl, { token: h.wsToken });
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}

export async function writeInHome(h: ChildHandle, file: string, content: string): Promise<void> {
  await withClient(h, (c) => c.request('fake/writeFile', { path: file, content }));
}

export async function readInHome(h: ChildHandle, file: string): Promise<string> {
  return (await withClient(h, (c) => c.request<{ content: string }>('fake/readFile', { path: file }))).content;
}

export async function childEnvOf(h: ChildHandle): Promise<Record<string, string>> {
  return (await withClient(h, (c) => c.request<{ env: Record<string, string> }>('fake/info', {}))).env;
}

/** Start time of a process in clock ticks since boot (/proc/PID/stat field 22). */
export async function startTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
}

/** A `sleep` in its own process group (like a codex child), killed by `stop`. */
export async function groupLeader(): Promise<{ child: ChildProcess; pid: number; ticks: number; stop(): Promise<void> }> {
  const child = spawn('sleep', ['1000'], { detached: true, stdio: 'ignore' });
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid as number));
    child.once('error', reject);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    child,
    pid,
    ticks: await startTicks(pid),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
        await exited;
      }
    },
  };
}

export { sleep };
