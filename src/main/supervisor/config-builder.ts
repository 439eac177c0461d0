/**
 * The gateway's ConfigBuilder: config.toml from the model settings, plus the
 * child's API key. The key is the gateway's static one (`model.api_key_env`
 * names the variable that holds it), or, when `spawn.env_url` is set, the
 * per-workspace env that endpoint returns. If that endpoint fails the child
 * starts with the static key and a warning is logged.
 */
import type { Logger } from 'pino';
import { parseEnvEntries } from '../../shared/child-env.js';
import type { ReasoningEffort, SpawnConfig, WireApi } from '../../shared/codex-config.js';
import type { ConfigBuilder } from './supervisor.js';

export interface ModelSettings {
  provider: string;
  name: string;
  baseUrl: string;
  /** Variable name under which the child receives its API key. */
  envKey: string;
  wireApi: WireApi;
  /** Gateway variable holding the static API key. */
  apiKeyEnv?: string;
  reasoningEffort?: ReasoningEffort;
}

export interface GatewayBuilderOptions {
  model: ModelSettings;
  envUrl?: string;
  /** The internal endpoint's URL, given to children as CXG_INTERNAL_URL. */
  internalUrl?: () => string | undefined;
  log: Logger;
  env?: NodeJS.ProcessEnv;
  fetch?: typeof fetch;
  timeoutMs?: number;
}

/**
 * Codex features that reach the network or start processes at start-up
 * (plugin sync from GitHub, ChatGPT apps, a login-shell snapshot) and mean
 * nothing for a headless, API-key child.
 */
const HEADLESS_EXTRA = {
  analytics: { enabled: false },
  features: { plugins: false, apps: false, shell_snapshot: false },
};

export function gatewayConfigBuilder(o: GatewayBuilderOptions): ConfigBuilder {
  const env = o.env ?? process.env;
  return async (_loopbackToken, { workspaceId }): Promise<SpawnConfig> => {
    const childEnv: string[] = ['CODEX_INTERNAL_APP_SERVER_REMOTE_CONTROL_DISABLED=1'];
    const internal = o.internalUrl?.();
    if (internal !== undefined) childEnv.push(`CXG_INTERNAL_URL=${internal}`);
    const staticKey = o.model.apiKeyEnv === undefined ? undefined : env[o.model.apiKeyEnv];
    if (staticKey !== undefined && staticKey !== '') childEnv.push(`${o.model.envKey}=${staticKey}`);
    if (o.envUrl !== undefined) {
      try {
        childEnv.push(...(await fetchWorkspaceEnv(o, workspaceId)));
      } catch (err) {
        o.log.warn({ workspaceId, err: err instanceof Error ? err.message : String(err) }, 'spawn env fetch failed; falling back to the static key');
      }
    }
    const config: SpawnConfig['config'] = {
      modelProvider: o.model.provider,
      model: o.model.name,
      modelProviders: { [o.model.provider]: { name: o.model.provider, baseUrl: o.model.baseUrl, envKey: o.model.envKey, wireApi: o.model.wireApi } },
      extra: HEADLESS_EXTRA,
    };
    if (o.model.reasoningEffort !== undefined) config.modelReasoningEffort = o.model.reasoningEffort;
    return { config, env: childEnv };
  };
}

/** POST `{ workspace_id }`; the answer's `env` is `{ K: V }` or `["K=V"]`. */
async function fetchWorkspaceEnv(o: GatewayBuilderOptions, workspaceId: string): Promise<string[]> {
  const r = await (o.fetch ?? fetch)(o.envUrl as string, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ workspace_id: workspaceId }),
    signal: AbortSignal.timeout(o.timeoutMs ?? 5000),
  });
  if (!r.ok) {
    await r.body?.cancel();
    throw new Error(`${o.envUrl} answered ${r.status}`);
  }
  const body = (await r.json()) as { env?: unknown };
  const e = body?.env;
  let entries: string[];
  if (Array.isArray(e) && e.every((x) => typeof x === 'string')) {
    entries = e;
  } else if (e !== null && typeof e === 'object' && !Array.isArray(e)) {
    entries = Object.entries(e as Record<string, unknown>).map(([k, v]) => {
      if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new Error(`${o.envUrl} returned a non-scalar value for ${k}`);
      return `${k}=${String(v)}`;
    });
  } else {
    throw new Error(`${o.envUrl} returned no env`);
  }
  // Checked here, so a malformed answer is a failed fetch (static key) rather
  // than a start that fails later with GW_BAD_CONFIG.
  parseEnvEntries(entries, `${o.envUrl} env`);
  return entries;
}
