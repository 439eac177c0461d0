/**
 * `codex-app-gateway serve`: a Gateway built from settings, with signal
 * handling. SIGTERM, SIGINT or SIGHUP drains (stop accepting, close clients
 * with 1001, stop every child and upload every home) and exits 0 within
 * shutdown.budget; a second signal exits at once. SIGHUP is a drain too:
 * closing the terminal a gateway runs in sends it, and Node's default for it
 * ends the process on the spot, leaving every child running and every home
 * unstored.
 */
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { createThreadLogger, flushLogger } from '../../shared/logger.js';
import { toGatewayError } from '../../shared/errors.js';
import { createAuthenticator } from '../auth/front-door.js';
import { secureDataDir } from '../isolation.js';
import { clusterFromSettings, forwardingFromSettings } from '../cluster/from-settings.js';
import { checkCodexAcceptsConfig } from './codex-check.js';
import { defaultCodexBin } from '../../shared/codex-bin.js';
import { renderCodexConfig } from '../../shared/codex-config.js';
import { gatewayConfigBuilder } from '../supervisor/config-builder.js';
import { DEFAULT_FRONT_LIMITS } from '../front/front.js';
import type { FrontLimits } from '../front/front.js';
import { Gateway } from '../gateway.js';
import type { DrainReport, GatewayOptions } from '../gateway.js';
import type { Settings } from '../settings/load.js';
import type { ConfigBuilder } from '../supervisor/supervisor.js';
import { storeSpecFromSettings } from '../settings/load.js';
import { DEFAULT_DATA_PLANE } from '../supervisor/supervisor.js';
import { WARM_RESTART_FILE } from '../supervisor/warm-restart.js';
import { HANDOVER_SOCKET } from '../../shared/handover.js';
import { listenForHandover, requestHandover } from '../supervisor/handover.js';

export function createLogger(settings: Settings): Logger {
  return createThreadLogger({ level: settings.log.level, pretty: process.stdout.isTTY === true, base: { thread: 'main', pid: process.pid, host: os.hostname() } });
}

/** The ConfigBuilder the settings describe. */
export function builderFromSettings(settings: Settings, log: Logger, internalUrl: () => string | undefined): ConfigBuilder {
  return gatewayConfigBuilder({
    model: {
      provider: settings.model.provider,
      name: settings.model.name,
      baseUrl: settings.model.baseUrl,
      envKey: settings.model.envKey,
      wireApi: settings.model.wireApi,
      apiKeyEnv: settings.model.apiKeyEnv,
      ...(settings.model.reasoningEffort === undefined ? {} : { reasoningEffort: settings.model.reasoningEffort }),
    },
    ...(settings.spawn.envUrl === undefined ? {} : { envUrl: settings.spawn.envUrl }),
    internalUrl,
    log,
  });
}

/** Everything Gateway.start needs, from settings. */
export async function gatewayOptions(settings: Settings, log: Logger, internalUrl: () => string | undefined): Promise<GatewayOptions> {
  const maxFrameBytes = settings.limits.maxFrameBytes;
  const builder = builderFromSettings(settings, log, internalUrl);
  const auth = await createAuthenticator(settings);
  await secureDataDir({ dataDir: settings.data.dir, homesRoot: settings.homes.root, secretFile: settings.auth.jwt.secretFile, childUser: settings.spawn.user !== undefined });
  const cluster = await clusterFromSettings(settings, log);
  const limits: FrontLimits = {
    ...DEFAULT_FRONT_LIMITS,
    maxFrameBytes,
    maxBufferedBytes: settings.limits.maxBufferedBytes,
    ...(settings.limits.maxConnections === undefined ? {} : { maxConnections: settings.limits.maxConnections }),
  };
  const forwarding = cluster === undefined ? undefined : await forwardingFromSettings(settings, cluster, limits, log);
  return {
    supervisor: {
      ...(cluster === undefined ? {} : { cluster }),
      ...(settings.codex.bin === undefined ? {} : { codexBin: settings.codex.bin }),
      homeRoot: settings.homes.root,
      store: storeSpecFromSettings(settings),
      extraEnv: [...settings.spawn.extraEnv],
      envAllowlist: [...settings.spawn.envAllowlist],
      ...(settings.spawn.user === undefined ? {} : { spawnUser: settings.spawn.user }),
      sandbox: settings.spawn.sandbox,
      shards: settings.shards,
      configBuilder: builder,
      readyTimeoutMs: settings.spawn.readyTimeoutMs,
      childNice: settings.spawn.nice,
      stopGraceMs: Math.max(1, settings.spawn.stopGraceMs),
      shutdownConcurrency: settings.shutdown.concurrency,
      dataPlane: { ...DEFAULT_DATA_PLANE, maxFrameBytes, childHandshakeTimeoutMs: settings.limits.childHandshakeTimeoutMs },
      limits: {
        ...(settings.limits.maxChildren === undefined ? {} : { maxChildren: settings.limits.maxChildren }),
        maxConcurrentSpawns: settings.limits.maxConcurrentSpawns,
      },
      crashLoop: {
        threshold: settings.crashLoop.threshold,
        windowMs: settings.crashLoop.windowMs,
        backoffBaseMs: settings.crashLoop.backoffMs,
        backoffMaxMs: settings.crashLoop.backoffMaxMs,
      },
      drainBudgetMs: settings.shutdown.workspaceBudgetMs,
      homeCache: { enabled: settings.homes.cache, maxBytes: settings.homes.cacheMaxBytes },
      approvals: { headless: settings.approvals.headless, websocket: settings.approvals.websocket },
    },
    auth,
    listen: { host: settings.listen.host, port: settings.listen.port },
    internal: {
      host: settings.internal.host,
      port: settings.internal.port,
      ...(settings.internal.upstreamUrl === undefined ? {} : { upstreamUrl: settings.internal.upstreamUrl }),
    },
    limits,
    ...(forwarding === undefined ? {} : { forwarding }),
    reaper: {
      intervalMs: settings.reaper.intervalMs,
      idleAfterMs: settings.reaper.idleAfterMs,
      hardIdleAfterMs: settings.reaper.hardIdleAfterMs,
      ...(settings.reaper.maxAgeMs === undefined ? {} : { maxAgeMs: settings.reaper.maxAgeMs }),
    },
    turns: { defaultTimeoutMs: settings.turns.timeoutMs, maxTimeoutMs: settings.turns.maxTimeoutMs, maxBodyBytes: settings.turns.maxBodyBytes },
    shutdownBudgetMs: settings.shutdown.budgetMs,
    warmRestart: { file: path.join(settings.data.dir, WARM_RESTART_FILE), max: settings.warmRestart.max },
    ...(settings.admin.token === undefined ? {} : { adminToken: settings.admin.token }),
    ...(settings.metrics.token === undefined ? {} : { metricsToken: settings.metrics.token }),
    log,
  };
}

/**
 * Refuses settings that codex itself would refuse: renders the config.toml
 * a child would get (without the per-workspace env fetch) and has the codex
 * binary load it. Throws GW_SETTINGS.
 */
export async function checkSettingsWithCodex(settings: Settings, log: Logger): Promise<void> {
  const token = '0'.repeat(64);
  const sample = await builderFromSettings({ ...settings, spawn: { ...settings.spawn, envUrl: undefined } }, log, () => undefined)(token, { workspaceId: 'config-check' });
  await checkCodexAcceptsConfig(settings.codex.bin ?? defaultCodexBin(), renderCodexConfig(sample.config, token));
}

/** Signals that start a drain; a second one of any of them exits at once. */
export const DRAIN_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

/** Runs until a signal drains the gateway; resolves with the exit code. Throws GW_SETTINGS for settings codex refuses. */
export async function serve(settings: Settings): Promise<number> {
  const log = createLogger(settings);
  await checkSettingsWithCodex(settings, log);
  let gw: Gateway | undefined;
  const handoverSocket = path.join(settings.data.dir, HANDOVER_SOCKET);
  // Signals are ours from the start: one that comes while the gateway is
  // still starting (adopting children, recovering homes) is kept and drains
  // it once it is up, instead of killing the process half-way.
  let signals = 0;
  let drainNow: (() => void) | undefined = undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting now; unsaved homes stay on disk for the next start');
      flushLogger(log);
      process.exit(130);
    }
    log.info({ signal, budgetMs: settings.shutdown.budgetMs, starting: drainNow === undefined }, 'draining');
    drainNow?.();
  };
  for (const signal of DRAIN_SIGNALS) process.on(signal, onSignal);
  const stopListening = (): void => {
    for (const signal of DRAIN_SIGNALS) process.off(signal, onSignal);
  };
  try {
    // Before anything binds a port or looks at homes: a running predecessor hands over its children (handover.ts).
    const adopt = settings.restart.handover ? await requestHandover(handoverSocket, log) : undefined;
    // Children start only after the internal listener is up, so `gw` is set by then.
    const options = await gatewayOptions(settings, log, () => (gw === undefined ? undefined : `http://127.0.0.1:${gw.internal.port}`));
    if (settings.restart.handover) options.supervisor = { ...options.supervisor, handover: true, ...(adopt === undefined ? {} : { adopt }) };
    gw = await Gateway.start(options);
  } catch (err) {
    log.fatal({ err: toGatewayError(err).describe() }, 'gateway failed to start');
    stopListening();
    flushLogger(log);
    return 1;
  }
  const started = gw;
  const handover = settings.restart.handover ? await listenForHandover(handoverSocket, log, (send) => started.handOver(send)) : undefined;
  log.info({ url: started.url, internalUrl: `http://${settings.internal.host}:${started.internal.port}`, shards: started.sup.shardCount, homeRoot: settings.homes.root, store: settings.store.url }, 'gateway listening');

  // A drain starts from a signal or from POST /admin/drain; either way the process exits after it,
  // within shutdown.budget: the drain gives up waiting by then, and should anything still hold the
  // process (a thread stuck in a native call), it exits anyway. Children die with it (parent-death
  // signal); homes not stored stay on disk for the next start.
  let backstop: NodeJS.Timeout | undefined;
  let begun = 0;
  const drained = new Promise<DrainReport>((resolve) =>
    started.once('drain-begin', () => {
      begun = Date.now();
      backstop = setTimeout(() => {
        log.error({ budgetMs: settings.shutdown.budgetMs }, 'shutdown.budget exhausted: exiting now; homes not stored stay on disk for the next start');
        flushLogger(log);
        process.exit(1);
      }, settings.shutdown.budgetMs);
      backstop.unref();
      resolve(started.drain());
    }),
  );
  drainNow = () => void started.drain();
  if (signals > 0) drainNow();
  try {
    const report = await drained;
    log.info({ saved: report.saved, unsaved: report.unsaved.length, timedOut: report.timedOut }, 'gateway stopped');
    // Once stopped, nothing may keep the process past its budget (an upload's socket, a timer):
    // a moment for stdout to flush, then exit with the code the caller set.
    clearTimeout(backstop);
    setTimeout(() => process.exit(), Math.max(0, Math.min(1000, begun + settings.shutdown.budgetMs - 500 - Date.now()))).unref();
    return 0;
  } catch (err) {
    log.error({ err: toGatewayError(err).describe() }, 'drain failed');
    return 1;
  } finally {
    handover?.close();
    stopListening();
    flushLogger(log);
  }
}
