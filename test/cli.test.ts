/**
 * The CLI as users run it: `node bin/codex-app-gateway.mjs …` in a child
 * process, against the built dist/ (`npm test` builds first).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { JwtAuthenticator } from '../src/main/auth/front-door.js';
import { envName, SETTINGS } from '../src/main/settings/load.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = path.join(ROOT, 'bin', 'codex-app-gateway.mjs');
const SECRET = 'an-hs256-key-of-at-least-32-characters';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let dir: string;

/** Runs the CLI in `dir` with a clean environment (no stray CXG_* from the host). */
function cli(args: string[], env: Record<string, string> = {}, bin = BIN): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      cwd: dir,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: os.homedir(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(() => {
  if (!existsSync(path.join(ROOT, 'dist', 'main', 'cli', 'main.js'))) throw new Error('dist/main/cli/main.js is missing: run npm run build before these tests');
});

beforeEach(async () => {
  const base = path.join(os.homedir(), '.cache', 'cxg-tests');
  await mkdir(base, { recursive: true });
  dir = await mkdtemp(path.join(base, 'cli-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('codex-app-gateway CLI', () => {
  it.each([['--help'], ['-h'], ['help']])('%s prints usage and the commands, exit 0', async (flag) => {
    const r = await cli([flag]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: codex-app-gateway <command>/);
    for (const command of ['serve', 'config check FILE', 'token --workspace ID', 'drain [--url URL]', '--version']) expect(r.stdout).toContain(command);
  });

  it('serve refuses, before listening, model settings the codex binary will not load', async () => {
    const r = await cli(['serve', '--port', '0'], { CXG_MODEL_WIRE_API: 'chat', CXG_DATA_DIR: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('model settings: codex');
    expect(r.stderr).toContain('wire_api = "chat"` is no longer supported');
  });

  it('serve refuses a provider id codex reserves', async () => {
    const r = await cli(['serve', '--port', '0'], { CXG_MODEL_PROVIDER: 'openai', CXG_DATA_DIR: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('model.provider (from CXG_MODEL_PROVIDER)');
  });

  it('drain --help explains the command; drain without an admin token is a usage error', async () => {
    const help = await cli(['drain', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: codex-app-gateway drain/);
    expect(help.stdout).toContain('CXG_ADMIN_TOKEN');
    const r = await cli(['drain', '--url', 'http://127.0.0.1:9']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('drain needs the admin token');
    const refused = await cli(['drain', '--url', 'http://127.0.0.1:9', '--token', 'x'.repeat(20)]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('cannot reach http://127.0.0.1:9/admin/drain');
  });

  it('no arguments: usage on stderr, exit 2', async () => {
    const r = await cli([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Usage:');
  });

  it.each([['--version'], ['-v']])('%s prints the package version', async (flag) => {
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await cli([flag]);
    expect(r).toEqual({ code: 0, stdout: `${pkg.version}\n`, stderr: '' });
  });

  it('serve --help lists every setting with its env var', async () => {
    const r = await cli(['serve', '--help']);
    expect(r.code).toBe(0);
    for (const spec of SETTINGS) {
      expect(r.stdout).toContain(`  ${spec.key}  (`);
      expect(r.stdout).toContain(`env ${envName(spec.key)}`);
    }
    expect(r.stdout).toContain('--config FILE');
  });

  it('config check on a good file prints the resolved settings, secrets masked, and "config ok"', async () => {
    const file = path.join(dir, 'gw.toml');
    await writeFile(file, `[listen]\nport = 9000\n[auth.jwt]\nsecret = "${SECRET}"\n`);
    const r = await cli(['config', 'check', 'gw.toml'], { CXG_SHARDS: '3' });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^listen\\.port += 9000 {2}# from ${file.replace(/[.]/g, '\\.')}$`, 'm'));
    expect(r.stdout).toMatch(/^shards += 3 {2}# from CXG_SHARDS$/m);
    expect(r.stdout).toMatch(/^auth\.jwt\.secret += "\*\*\*\*\*\*\*\*"/m);
    expect(r.stdout).not.toContain(SECRET);
    expect(r.stdout.endsWith('config ok\n')).toBe(true);
  });

  it('config check on a bad file names each problem on stderr, exit 2', async () => {
    const file = path.join(dir, 'bad.toml');
    await writeFile(file, '[listen]\nport = "eighty"\nprot = 1\n');
    const r = await cli(['config', 'check', file]);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`listen.port (from ${file}): expected an integer 0-65535, got "eighty"`);
    expect(r.stderr).toContain(`unknown setting listen.prot (from ${file}); did you mean listen.port?`);
    expect(r.stderr).toContain('config invalid');
  });

  it('config check also refuses a bad environment, and a missing file', async () => {
    await writeFile(path.join(dir, 'gw.toml'), '');
    const env = await cli(['config', 'check', 'gw.toml'], { CXG_LISTEN_PORT: '80a' });
    expect(env.code).toBe(2);
    expect(env.stderr).toContain('listen.port (from CXG_LISTEN_PORT): expected an integer 0-65535, got "80a"');
    const missing = await cli(['config', 'check', 'nope.toml']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`config file ${path.join(dir, 'nope.toml')}: cannot read it (ENOENT)`);
    const noFile = await cli(['config', 'check']);
    expect(noFile.code).toBe(2);
    expect(noFile.stderr).toContain('config check needs a FILE');
  });

  it.each([
    [['frobnicate'], 'unknown command "frobnicate"', '--help'],
    [['--frobnicate'], 'unknown option --frobnicate', '--help'],
    [['config', 'lint'], 'unknown config subcommand "lint"', 'config --help'],
    [['serve', '--frobnicate'], 'unknown flag --frobnicate', 'serve --help'],
  ])('%j is refused with exit 2 and a pointer to help', async (args, message, help) => {
    const r = await cli(args);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(message);
    expect(r.stderr).toContain(`codex-app-gateway ${help}`);
  });

  it('token prints a JWT for the workspace, signed with the generated key file', async () => {
    const r = await cli(['token', '--workspace', 'ws-1', '--ttl', '10m']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const secret = (await readFile(path.join(dir, 'data', 'jwt.secret'), 'utf8')).trim();
    const auth = new JwtAuthenticator({ secret });
    await expect(auth.verify(r.stdout.trim())).resolves.toEqual({ workspaceId: 'ws-1' });
    const { exp, iat } = JSON.parse(Buffer.from(r.stdout.split('.')[1] as string, 'base64url').toString()) as { exp: number; iat: number };
    expect(exp - iat).toBe(600);
  });

  it('token uses the configured secret and claim from the config file', async () => {
    await writeFile(path.join(dir, 'gw.toml'), `[auth.jwt]\nsecret = "${SECRET}"\nworkspace_claim = "ws"\n`);
    const r = await cli(['token', '--config', 'gw.toml', '--workspace=ws-2']);
    expect(r.code).toBe(0);
    await expect(new JwtAuthenticator({ secret: SECRET, workspaceClaim: 'ws' }).verify(r.stdout.trim())).resolves.toEqual({ workspaceId: 'ws-2' });
    expect(existsSync(path.join(dir, 'data', 'jwt.secret'))).toBe(false);
  });

  it.each([
    [['token'], 'token needs --workspace ID'],
    [['token', '--workspace', '../x'], 'bad workspace id'],
    [['token', '--workspace', 'ws', '--ttl', 'forever'], '--ttl: expected a duration'],
  ])('%j is refused with exit 2', async (args, message) => {
    const r = await cli(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
  });

  it('the bin script says to build when dist/ is missing', async () => {
    await mkdir(path.join(dir, 'bin'));
    const copy = path.join(dir, 'bin', 'codex-app-gateway.mjs');
    await copyFile(BIN, copy);
    const r = await cli(['--help'], {}, copy);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('run npm run build');
  });
});
