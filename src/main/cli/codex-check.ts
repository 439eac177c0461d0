/**
 * A start-up check that the codex binary runs and accepts the config.toml
 * the settings render, so a wrong model setting is refused when the gateway
 * starts rather than when the first client connects.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { GatewayError } from '../../shared/errors.js';

interface StartupConfigError {
  error?: { message?: string };
}

export async function checkCodexAcceptsConfig(codexBin: string, configToml: string, timeoutMs = 20_000): Promise<void> {
  const home = await mkdtemp(path.join(os.tmpdir(), 'cxg-config-check-'));
  try {
    await writeFile(path.join(home, 'config.toml'), configToml, { mode: 0o600 });
    const result = await new Promise<{ code: number | null; stdout: string; stderr: string; spawnError?: NodeJS.ErrnoException }>((resolve) => {
      execFile(
        codexBin,
        ['app-server', '--strict-config', '--print-startup-config'],
        { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, CODEX_HOME: home }, timeout: timeoutMs, maxBuffer: 1024 * 1024 },
        (err, stdout, stderr) => {
          const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
          // Killed at the timeout: codex did not answer, which says nothing about the config.
          if (e?.killed === true) resolve({ code: null, stdout, stderr, spawnError: Object.assign(e, { code: 'ETIMEDOUT' }) });
          else if (e !== null && typeof e.code === 'string') resolve({ code: null, stdout, stderr, spawnError: e });
          else resolve({ code: e === null ? 0 : typeof e.code === 'number' ? e.code : 1, stdout, stderr });
        },
      );
    });
    if (result.spawnError !== undefined) {
      const why = result.spawnError.code === 'ETIMEDOUT' ? `it did not answer within ${timeoutMs} ms` : String(result.spawnError.code);
      throw new GatewayError('GW_SETTINGS', `codex.bin: cannot run ${codexBin} (${why})`, { cause: result.spawnError });
    }
    if (result.code === 0) return;
    let reason = result.stderr.split('\n').find((l) => l.startsWith('Error: '))?.slice(7) ?? `exit code ${String(result.code)}`;
    try {
      reason = (JSON.parse(result.stdout) as StartupConfigError).error?.message ?? reason;
    } catch {
      // Not JSON: keep the stderr line.
    }
    throw new GatewayError('GW_SETTINGS', `model settings: codex (${codexBin}) refuses the config.toml they produce: ${reason.replaceAll(home, '<CODEX_HOME>')}`);
  } finally {
    await rm(home, { recursive: true, force: true });
  }
}
