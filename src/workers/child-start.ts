/**
 * One start of a workspace's codex child, for the workspace table: its
 * config from the builder, its home (HomeStore: spool, warm cache, store),
 * the spawn gate, the state file that tells recovery a process may run in
 * the home, and the spawn itself (spawn.ts). A start that fails puts the
 * home back as it was, or persists it once a process has run in it.
 */
import { stripVTControlCharacters } from 'node:util';
import path from 'node:path';
import type { Logger } from 'pino';
import { buildChildEnv, parseEnvEntries } from '../shared/child-env.js';
import { renderCodexConfig } from '../shared/codex-config.js';
import type { SpawnConfig } from '../shared/codex-config.js';
import { withTimeout } from '../shared/concurrency.js';
import { GatewayError, toGatewayError } from '../shared/errors.js';
import type { ChildInfo } from '../shared/protocol.js';
import { closeWorkspaceDir, openHomeTo } from './home-owner.js';
import { ensureWorkDir, writeHomeState, writePrivateFile } from './home.js';
import { processStartTicks } from '../shared/proc.js';
import type { Home } from './home.js';
import { spawnAppServer } from './spawn.js';
import { PROCESS_FAILURES } from './workspace-entry.js';
import type { Entry, TableCore } from './workspace-entry.js';

/** A client waits for this start from now on: a queued pre-start moves ahead of the others. */
export function claimStart(core: TableCore, e: Entry): void {
  e.prestarted = undefined;
  if (e.priority === 'client') return;
  e.priority = 'client';
  // Sent after the entry's enterSpawn (if any) on the same port, so the gate has it queued or admitted;
  // a start that has not asked yet asks with the new priority.
  if (core.init.gatedSpawns) core.host.promoteSpawn(e.generation);
}

export async function startChild(core: TableCore, e: Entry, builderId: number): Promise<ChildInfo> {
  const t0 = Date.now();
  const log = core.log.child({ workspaceId: e.workspaceId, generation: e.generation });
  const spawnConfig = await build(core, e, builderId);
  const toml = renderCodexConfig(spawnConfig.config, e.loopbackToken);
  parseEnvEntries(spawnConfig.env, 'config builder env');

  const home = await core.homes.prepare(e.workspaceId);
  e.home = home;
  // What the home holds before this run, for a start that fails before any process ran in it.
  const before = { generation: home.generation, stored: home.origin !== 'spool' };
  let gated = false;
  let queuedMs = 0;
  try {
    await writePrivateFile(path.join(home.dir, 'config.toml'), toml);
    await ensureWorkDir(home);
    if (core.init.gatedSpawns) {
      const admitted = await core.host.enterSpawn(e.workspaceId, e.generation, e.priority, e.rank);
      queuedMs = Math.round(admitted.queuedMs);
      gated = true;
    }
    // The new generation is recorded before the process exists: recovery then knows this home may hold unsaved work.
    await writeHomeState(home.dir, { generation: e.generation, stored: false, pid: null, startTicks: null, gatewayPid: process.pid });
    home.generation = e.generation;
    const runAs = core.init.runAs;
    if (runAs !== undefined) await openHomeTo(runAs, home.dir);
    // Known to the main thread before the process exists: the child may call the internal API at once.
    await core.tokens.add(e.loopbackToken, e.workspaceId);
    const env = buildChildEnv({
      parent: process.env,
      allowlist: core.init.envAllowlist,
      extraEnv: core.init.extraEnv,
      builderEnv: spawnConfig.env,
      codexHome: home.dir,
      loopbackToken: e.loopbackToken,
      ...(runAs?.name === undefined ? {} : { userName: runAs.name }),
    });
    const wsDir = path.dirname(home.dir);
    let pidFile: Promise<void> = Promise.resolve();
    const child = await spawnAppServer({
      codexBin: core.init.codexBin,
      cwd: home.workDir,
      env,
      wsToken: e.wsToken,
      readyTimeoutMs: core.init.readyTimeoutMs,
      nice: core.init.childNice,
      ...(core.init.handover === true ? { outliveGateway: true } : {}),
      ...(runAs === undefined ? {} : { runAs }),
      ...(core.init.sandbox === 'bubblewrap' ? { sandbox: { workspaceDir: wsDir, cwd: home.workDir, codexBin: core.init.codexBin } } : {}),
      ...(runAs === undefined
        ? {}
        : {
            onExit: () => {
              const err = closeWorkspaceDir(wsDir);
              if (err !== undefined) log.error({ err: err.message }, 'could not take the workspace directory back from spawn.user');
            },
          }),
      onSpawned: (pid) => {
        home.ran = true;
        e.pid = pid;
        core.host.childStarted(e.workspaceId, e.generation, pid);
        pidFile = recordPid(core, home, pid);
      },
      onOutput: (stream, line) => log.info({ pid: e.pid, stream }, `[codex ${e.workspaceId}] ${stripVTControlCharacters(line)}`),
    });
    await pidFile;
    e.child = child;
    if (gated) core.host.spawnSettled(e.generation, true);
    void child.exited.then((exit) => core.onExit(e, exit));
    log.info({ pid: child.pid, wsUrl: child.wsUrl, origin: home.origin, priority: e.priority, queuedMs, ms: Date.now() - t0 }, 'codex app-server ready');
    return {
      workspaceId: e.workspaceId,
      generation: e.generation,
      pid: child.pid,
      wsUrl: child.wsUrl,
      wsToken: e.wsToken,
      httpUrl: child.httpUrl,
      codexHome: home.dir,
      startedAt: e.startedAt,
      shard: core.init.shard,
    };
  } catch (err) {
    // spawnAppServer kills and reaps the process before it throws.
    core.tokens.remove(e.loopbackToken);
    if (e.pid !== undefined) core.host.childExited(e.workspaceId, e.generation, { code: null, signal: null });
    // A start that failed before any process existed had no exit handler to take the directory back.
    if (core.init.runAs !== undefined) closeWorkspaceDir(path.dirname(home.dir));
    if (gated) core.host.spawnSettled(e.generation, false);
    const failure = toGatewayError(err);
    if (PROCESS_FAILURES.has(failure.code)) core.crashLoop.failed(e.workspaceId);
    log.warn({ err: failure.describe(), failures: core.crashLoop.failures(e.workspaceId) }, 'start failed');
    abandon(core, home, before, log);
    throw err;
  }
}

async function build(core: TableCore, e: Entry, builderId: number): Promise<SpawnConfig> {
  let cfg: SpawnConfig;
  try {
    cfg = await withTimeout(
      core.host.buildConfig(builderId, e.workspaceId, e.loopbackToken),
      core.init.builderTimeoutMs,
      () => new GatewayError('GW_BUILDER_FAILED', `config builder did not answer within ${core.init.builderTimeoutMs} ms`),
    );
  } catch (err) {
    if (err instanceof GatewayError && err.code === 'GW_BUILDER_FAILED') throw err;
    throw new GatewayError('GW_BUILDER_FAILED', `config builder failed for workspace ${e.workspaceId}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  if (cfg === null || typeof cfg !== 'object') throw new GatewayError('GW_BAD_CONFIG', 'config builder returned no SpawnConfig');
  return cfg;
}

export async function recordPid(core: TableCore, home: Home, pid: number): Promise<void> {
  try {
    await writeHomeState(home.dir, { generation: home.generation, stored: false, pid, startTicks: await processStartTicks(pid), gatewayPid: process.pid });
  } catch (err) {
    core.log.warn({ workspaceId: home.workspaceId, err: toGatewayError(err).describe() }, 'could not record the child in its home');
  }
}

/** After a failed start: a home no process ran in goes back as it was; the rest is persisted. */
function abandon(core: TableCore, home: Home, before: { generation: string | null; stored: boolean }, log: Logger): void {
  const work = home.ran ? core.homes.persist(home, 'failed-start') : core.homes.release(home, before.generation, before.stored);
  core.setBusy(home.workspaceId, work.catch((err: unknown) => log.error({ err: toGatewayError(err).describe() }, 'could not put the home back after a failed start')));
}
