/**
 * The `codex-app-gateway` command line. It parses words and prints; the
 * server itself lives in serve.ts and is loaded only by `serve`, so `--help`,
 * `config check` and `token` start fast and work without native modules.
 *
 * Exit codes: 0 success, 1 failure at run time, 2 bad usage or settings.
 */
import { readFile } from 'node:fs/promises';
import { isGatewayError, toGatewayError } from '../../shared/errors.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';
import { signWorkspaceToken } from '../auth/jwt.js';
import { describeSettings, ensureJwtSecret, loadSettings, settingsHelp } from '../settings/load.js';
import type { Settings } from '../settings/load.js';
import { parseDuration } from '../settings/units.js';

export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** stderr is a terminal (progress bars). */
  tty?: boolean;
  env: NodeJS.ProcessEnv;
  cwd: string;
}


const PROG = 'codex-app-gateway';
const OK = 0;
const FAILED = 1;
const USAGE_ERROR = 2;

const USAGE = `Usage: ${PROG} <command> [options]

Runs one codex app-server per workspace behind one WebSocket endpoint.

Commands:
  serve [--config FILE] [flags]     Run the gateway. '${PROG} serve --help' lists every setting.
  config check FILE                 Check a settings file (plus CXG_* variables) and print the result.
  token --workspace ID [--ttl 1h] [--config FILE]
                                    Print a bearer token for a workspace, signed with the gateway's JWT secret.
  drain [--url URL] [--token TOKEN] Drain a running gateway through its admin API, showing progress.
  help [command]                    Show this help, or a command's.

Options:
  -h, --help                        Show this help.
  -v, --version                     Print the version.
`;

const SERVE_USAGE = `Usage: ${PROG} serve [--config FILE] [flags]

`;

const CONFIG_USAGE = `Usage: ${PROG} config check FILE

Loads FILE (TOML) together with the CXG_* environment, prints the resolved
settings with secrets masked, and exits 0 if they are valid, 2 if not.
`;

const DRAIN_USAGE = `Usage: ${PROG} drain [--url URL] [--token TOKEN] [--config FILE]

Asks a running gateway to drain (stop accepting, close clients, stop every
child and upload every home) through its admin API, and shows the progress.
URL is the gateway's internal endpoint (default: http://<internal.host>:<internal.port>
from the settings); TOKEN its admin.token (default: CXG_ADMIN_TOKEN or the settings).
Exits 0 when every home was uploaded, 1 otherwise.
`;

const TOKEN_USAGE = `Usage: ${PROG} token --workspace ID [--ttl DURATION] [--config FILE] [flags]

Prints an HS256 token for workspace ID, valid for --ttl (default 1h), signed
with the gateway's JWT secret (auth.jwt.secret, or auth.jwt.secret_file, which
is created if missing). Use it with codex:

  export CODEX_GATEWAY_TOKEN="$(${PROG} token --workspace my-ws)"
  codex --remote ws://127.0.0.1:8080 --remote-auth-token-env CODEX_GATEWAY_TOKEN
`;

const HELP_FLAGS = new Set(['--help', '-h']);

export async function main(argv: readonly string[], io: CliIo = processIo()): Promise<number> {
  try {
    return await run(argv, io);
  } catch (err) {
    if (isGatewayError(err, 'GW_SETTINGS')) {
      io.err(`${err.message}\n(see '${PROG} serve --help' for every setting)\n`);
      return USAGE_ERROR;
    }
    io.err(`${PROG}: ${toGatewayError(err).describe()}\n`);
    return FAILED;
  }
}

async function run(argv: readonly string[], io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
      io.err(USAGE);
      return USAGE_ERROR;
    case '--help':
    case '-h':
      io.out(USAGE);
      return OK;
    case 'help':
      return help(rest, io);
    case '--version':
    case '-v':
      io.out(`${await version()}\n`);
      return OK;
    case 'serve':
      return serve(rest, io);
    case 'config':
      return config(rest, io);
    case 'token':
      return token(rest, io);
    case 'drain':
      return drain(rest, io);
    default:
      return usageError(io, command.startsWith('-') ? `unknown option ${command}` : `unknown command ${JSON.stringify(command)}`);
  }
}

function help(rest: readonly string[], io: CliIo): number {
  const texts: Record<string, string> = { serve: SERVE_USAGE + settingsHelp(), config: CONFIG_USAGE, token: TOKEN_USAGE, drain: DRAIN_USAGE };
  const [topic] = rest;
  if (topic === undefined) {
    io.out(USAGE);
    return OK;
  }
  const text = texts[topic];
  if (text === undefined) return usageError(io, `unknown command ${JSON.stringify(topic)}`);
  io.out(text);
  return OK;
}

async function serve(rest: readonly string[], io: CliIo): Promise<number> {
  if (rest.some((a) => HELP_FLAGS.has(a))) {
    io.out(SERVE_USAGE + settingsHelp());
    return OK;
  }
  const settings = await loadSettings({ argv: rest, env: io.env, cwd: io.cwd });
  const server = await import('./serve.js');
  return server.serve(settings);
}

async function config(rest: readonly string[], io: CliIo): Promise<number> {
  const [sub, file, ...extra] = rest;
  if (sub !== undefined && HELP_FLAGS.has(sub)) {
    io.out(CONFIG_USAGE);
    return OK;
  }
  if (sub !== 'check') return usageError(io, sub === undefined ? 'config needs a subcommand: check FILE' : `unknown config subcommand ${JSON.stringify(sub)}`, 'config');
  if (file === undefined || file.startsWith('-')) return usageError(io, 'config check needs a FILE', 'config');
  if (extra.length > 0) return usageError(io, `unexpected argument ${JSON.stringify(extra[0])}`, 'config');
  let settings: Settings;
  try {
    settings = await loadSettings({ argv: ['--config', file], env: io.env, cwd: io.cwd });
  } catch (err) {
    if (!isGatewayError(err, 'GW_SETTINGS')) throw err;
    io.err(`${err.message}\nconfig invalid\n`);
    return USAGE_ERROR;
  }
  io.out(`${describeSettings(settings, { maskSecrets: true })}config ok\n`);
  return OK;
}

async function token(rest: readonly string[], io: CliIo): Promise<number> {
  if (rest.some((a) => HELP_FLAGS.has(a))) {
    io.out(TOKEN_USAGE);
    return OK;
  }
  const { taken, others, missing } = takeOptions(rest, ['--workspace', '--ttl']);
  if (missing !== undefined) return usageError(io, `${missing} needs a value`, 'token');
  const workspace = taken.get('--workspace');
  if (workspace === undefined) return usageError(io, 'token needs --workspace ID', 'token');
  try {
    validateWorkspaceId(workspace);
  } catch (err) {
    return usageError(io, err instanceof Error ? err.message : String(err), 'token');
  }
  const ttlText = taken.get('--ttl') ?? '1h';
  const ttlMs = parseDuration(ttlText);
  if (ttlMs === undefined || ttlMs < 1000) return usageError(io, `--ttl: expected a duration of at least 1s like 30m or 12h, got ${JSON.stringify(ttlText)}`, 'token');

  const settings = await loadSettings({ argv: others, env: io.env, cwd: io.cwd });
  const jwt = settings.auth.jwt;
  const signed = await signWorkspaceToken({
    secret: await ensureJwtSecret(settings),
    workspaceId: workspace,
    issuer: jwt.issuer,
    audience: jwt.audience,
    claim: jwt.workspaceClaim,
    expiresIn: Math.round(ttlMs / 1000),
  });
  io.out(`${signed}\n`);
  return OK;
}

async function drain(rest: readonly string[], io: CliIo): Promise<number> {
  if (rest.some((a) => HELP_FLAGS.has(a))) {
    io.out(DRAIN_USAGE);
    return OK;
  }
  const { taken, others, missing } = takeOptions(rest, ['--url', '--token']);
  if (missing !== undefined) return usageError(io, `${missing} needs a value`, 'drain');
  let url = taken.get('--url');
  let adminToken = taken.get('--token');
  if (url === undefined || adminToken === undefined) {
    const settings = await loadSettings({ argv: others, env: io.env, cwd: io.cwd });
    url ??= `http://${settings.internal.host.includes(':') ? `[${settings.internal.host}]` : settings.internal.host}:${settings.internal.port}`;
    adminToken ??= settings.admin.token;
  } else if (others.length > 0) {
    return usageError(io, `unexpected argument ${JSON.stringify(others[0])}`, 'drain');
  }
  if (adminToken === undefined) return usageError(io, 'drain needs the admin token: --token, or admin.token (CXG_ADMIN_TOKEN)', 'drain');
  const { runDrain } = await import('./drain.js');
  return runDrain(url, adminToken, { out: (t) => io.out(t), err: (t) => io.err(t), tty: io.tty === true });
}

/**
 * Pulls `--name VALUE` / `--name=VALUE` for the given names out of `args`;
 * the rest (settings flags) is left for loadSettings.
 */
function takeOptions(args: readonly string[], names: readonly string[]): { taken: Map<string, string>; others: string[]; missing?: string } {
  const taken = new Map<string, string>();
  const others: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const name = names.find((n) => arg === n || arg.startsWith(`${n}=`));
    if (name === undefined) {
      others.push(arg);
    } else if (arg.length > name.length) {
      taken.set(name, arg.slice(name.length + 1));
    } else {
      const value = args[i + 1];
      if (value === undefined || value.startsWith('--')) return { taken, others, missing: name };
      taken.set(name, value);
      i++;
    }
  }
  return { taken, others };
}

function usageError(io: CliIo, message: string, command?: string): number {
  const help = command === undefined ? `${PROG} --help` : `${PROG} ${command} --help`;
  io.err(`${PROG}: ${message}\nRun '${help}' for usage.\n`);
  return USAGE_ERROR;
}

/** package.json sits three levels above both src/main/cli/main.ts and dist/main/cli/main.js. */
async function version(): Promise<string> {
  const pkg = JSON.parse(await readFile(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
  return String(pkg.version);
}

function processIo(): CliIo {
  return {
    out: (text) => process.stdout.write(text),
    err: (text) => process.stderr.write(text),
    tty: process.stderr.isTTY === true,
    env: process.env,
    cwd: process.cwd(),
  };
}
