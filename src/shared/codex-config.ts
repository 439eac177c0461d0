/**
 * The per-spawn `config.toml` of a workspace's CODEX_HOME, rendered with
 * smol-toml from a ConfigInput. It holds tokens, so it is written 0600 and is
 * never archived (see archive-protocol.ts).
 */
import { stringify } from 'smol-toml';
import { GatewayError } from './errors.js';

export type WireApi = 'responses' | 'chat';
export type ReasoningEffort = 'minimal' | 'low' | 'medium' | 'high' | 'xhigh';

export interface ModelProviderInput {
  /** Display name; defaults to the provider's key. */
  name?: string;
  baseUrl: string;
  /** Name of the environment variable holding the API key in the child. */
  envKey?: string;
  wireApi?: WireApi;
}

/** The gateway's own MCP server, reachable from the child over loopback. */
export interface AgentServerInput {
  command: string;
  args?: string[];
  /** Workspace-scoped token handed to the MCP server as CXG_WORKSPACE_TOKEN. */
  workspaceToken: string;
  env?: Record<string, string>;
}

export interface ConfigInput {
  modelProvider: string;
  model: string;
  modelReasoningEffort?: ReasoningEffort;
  modelProviders: Record<string, ModelProviderInput>;
  /** Project directories codex may treat as trusted. */
  trustedProjects?: string[];
  agentServer?: AgentServerInput;
  /**
   * Further top-level settings passed through as they are (for example
   * `{ analytics: { enabled: false } }`). They cannot replace a key rendered
   * from the fields above.
   */
  extra?: Record<string, unknown>;
}

/** What a ConfigBuilder returns: config.toml input plus per-spawn env entries (`K=V`). */
export interface SpawnConfig {
  config: ConfigInput;
  env?: string[];
}

const EFFORTS: ReadonlySet<string> = new Set(['minimal', 'low', 'medium', 'high', 'xhigh']);
/** Provider ids codex (0.169.0) keeps for its built-ins; a table under one of them makes it refuse config.toml. */
export const RESERVED_PROVIDER_IDS: ReadonlySet<string> = new Set(['openai', 'ollama', 'lmstudio']);
const WIRE_APIS: ReadonlySet<string> = new Set(['responses', 'chat']);
const TOML_KEY = /^[A-Za-z0-9_-]+$/;

function bad(message: string): GatewayError {
  return new GatewayError('GW_BAD_CONFIG', `invalid config: ${message}`);
}

function nonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0;
}

/**
 * Renders config.toml. `loopbackToken` is the per-spawn token; it reaches the
 * agent MCP server's env here because the builder cannot know it in advance.
 * Throws GW_BAD_CONFIG naming the first problem found.
 */
export function renderCodexConfig(input: ConfigInput, loopbackToken: string): string {
  if (input === null || typeof input !== 'object') throw bad('config is missing');
  if (!nonEmptyString(input.model)) throw bad('model is missing');
  if (!nonEmptyString(input.modelProvider)) throw bad('model_provider is missing');
  const providers = input.modelProviders ?? {};
  if (typeof providers !== 'object') throw bad('model_providers must be a table');
  if (!Object.hasOwn(providers, input.modelProvider)) {
    throw bad(`model_provider "${input.modelProvider}" is not among model_providers (${Object.keys(providers).join(', ') || 'none'})`);
  }
  if (input.modelReasoningEffort !== undefined && !EFFORTS.has(input.modelReasoningEffort)) {
    throw bad(`model_reasoning_effort "${String(input.modelReasoningEffort)}" is not one of ${[...EFFORTS].join(', ')}`);
  }

  const renderedProviders: Record<string, Record<string, string>> = {};
  for (const [key, p] of Object.entries(providers)) {
    if (!TOML_KEY.test(key)) throw bad(`model provider key "${key}" must match [A-Za-z0-9_-]+`);
    if (RESERVED_PROVIDER_IDS.has(key)) throw bad(`model provider id "${key}" is reserved by codex for a built-in provider; name it something else, e.g. "${key}-api"`);
    if (p === null || typeof p !== 'object') throw bad(`model_providers.${key} must be a table`);
    if (!nonEmptyString(p.baseUrl)) throw bad(`model_providers.${key}.base_url is missing`);
    try {
      new URL(p.baseUrl);
    } catch {
      throw bad(`model_providers.${key}.base_url "${p.baseUrl}" is not a URL`);
    }
    if (p.wireApi !== undefined && !WIRE_APIS.has(p.wireApi)) {
      throw bad(`model_providers.${key}.wire_api "${String(p.wireApi)}" is not one of responses, chat`);
    }
    const out: Record<string, string> = { name: p.name ?? key, base_url: p.baseUrl };
    if (p.envKey !== undefined) out.env_key = p.envKey;
    out.wire_api = p.wireApi ?? 'responses';
    renderedProviders[key] = out;
  }

  const doc: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(input.extra ?? {})) doc[k] = v;
  doc.model_provider = input.modelProvider;
  doc.model = input.model;
  if (input.modelReasoningEffort !== undefined) doc.model_reasoning_effort = input.modelReasoningEffort;
  doc.model_providers = renderedProviders;

  if (input.trustedProjects !== undefined && input.trustedProjects.length > 0) {
    const projects: Record<string, { trust_level: string }> = {};
    for (const dir of input.trustedProjects) {
      if (!nonEmptyString(dir)) throw bad('trusted project path is empty');
      projects[dir] = { trust_level: 'trusted' };
    }
    doc.projects = projects;
  }

  // The gateway runs codex as a headless server: no local shell or patch tools.
  const extraFeatures = (input.extra?.features ?? {}) as Record<string, unknown>;
  doc.features = { ...extraFeatures, shell_tool: false, unified_exec: false, apply_patch_freeform: false };

  if (input.agentServer !== undefined) {
    const a = input.agentServer;
    if (!nonEmptyString(a.command)) throw bad('agent server command is missing');
    if (!nonEmptyString(a.workspaceToken)) throw bad('agent server workspace token is missing');
    const extraServers = (input.extra?.mcp_servers ?? {}) as Record<string, unknown>;
    doc.mcp_servers = {
      ...extraServers,
      agentserver: {
        command: a.command,
        args: a.args ?? [],
        default_tools_approval_mode: 'approve',
        env: { ...(a.env ?? {}), CXG_WORKSPACE_TOKEN: a.workspaceToken, CXG_LOOPBACK_TOKEN: loopbackToken },
      },
    };
  }

  try {
    return stringify(doc);
  } catch (err) {
    throw new GatewayError('GW_BAD_CONFIG', 'invalid config: cannot render as TOML', { cause: err });
  }
}
