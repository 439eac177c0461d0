/**
 * The environment a codex child receives. The gateway's own environment holds
 * its secrets (store credentials, JWT keys, API keys), so only an allowlist of
 * harmless variables passes through; everything else a child needs is given
 * explicitly. The model's API key is one of those: the config builder hands
 * it over under model.env_key.
 *
 * Even an allowlist that names them never passes the gateway's own settings
 * (CXG_*, which carry auth.jwt.secret, admin.token, metrics.token) nor the
 * S3 SDK's credentials (AWS_*): a child is the one process the gateway does
 * not trust with them.
 */
import { GatewayError } from './errors.js';

export const DEFAULT_ENV_ALLOWLIST: readonly string[] = [
  'PATH',
  'HOME',
  'USER',
  'LOGNAME',
  'SHELL',
  'TERM',
  'LANG',
  'LANGUAGE',
  'LC_ALL',
  'LC_CTYPE',
  'LC_MESSAGES',
  'TZ',
  'TMPDIR',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'NO_PROXY',
  'http_proxy',
  'https_proxy',
  'no_proxy',
  'RUST_LOG',
  'RUST_BACKTRACE',
];

/** Gateway variables never inherited, whatever the allowlist says. */
export const GATEWAY_ONLY_ENV = /^(?:CXG_|AWS_)/;

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Parses `K=V` entries; a malformed one is GW_BAD_CONFIG naming where it came from. */
export function parseEnvEntries(entries: readonly string[] | undefined, source: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const entry of entries ?? []) {
    if (typeof entry !== 'string') throw new GatewayError('GW_BAD_CONFIG', `${source}: env entry is not a string`);
    const eq = entry.indexOf('=');
    const name = eq > 0 ? entry.slice(0, eq) : '';
    if (!ENV_NAME.test(name)) {
      throw new GatewayError('GW_BAD_CONFIG', `${source}: env entry ${JSON.stringify(entry.slice(0, 40))} is not NAME=value`);
    }
    out.push([name, entry.slice(eq + 1)]);
  }
  return out;
}

export interface ChildEnvParts {
  parent: NodeJS.ProcessEnv;
  allowlist: readonly string[];
  extraEnv: readonly string[];
  builderEnv: readonly string[] | undefined;
  codexHome: string;
  loopbackToken: string;
  /** The user a child runs as (spawn.user): it becomes USER and LOGNAME. */
  userName?: string;
}

/**
 * Allowlisted parent variables, then extraEnv, then the builder's env (later
 * wins), then HOME, CODEX_HOME, GIT_CEILING_DIRECTORIES and
 * CXG_LOOPBACK_TOKEN, which nothing overrides. The ceiling keeps git (and so
 * codex's record of a thread's repository) from looking above the home:
 * homes.root may lie inside the gateway's own checkout.
 *
 * HOME is the CODEX_HOME itself, not the gateway's. What the child's tools
 * keep under ~ (git and shell settings, histories, caches) is then stored and
 * restored with the workspace like the rest of its state, lives at a stable
 * path, is covered by the ownership spawn.user gives the home and by the one
 * directory the bubblewrap sandbox shows, and counts against the archive
 * limits. A sibling directory beside codex-home would be none of these
 * without a second archive. The gateway's HOME (root's, a developer's) holds
 * their credentials (~/.aws, ~/.ssh, ~/.gitconfig) and is no child's business.
 */
export function buildChildEnv(p: ChildEnvParts): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of p.allowlist) {
    const v = p.parent[name];
    if (v !== undefined && !GATEWAY_ONLY_ENV.test(name)) env[name] = v;
  }
  for (const [k, v] of parseEnvEntries(p.extraEnv, 'extraEnv')) env[k] = v;
  for (const [k, v] of parseEnvEntries(p.builderEnv, 'config builder env')) env[k] = v;
  if (p.userName !== undefined) {
    env.USER = p.userName;
    env.LOGNAME = p.userName;
  }
  env.HOME = p.codexHome;
  env.CODEX_HOME = p.codexHome;
  env.GIT_CEILING_DIRECTORIES = p.codexHome;
  env.CXG_LOOPBACK_TOKEN = p.loopbackToken;
  return env;
}
