/**
 * Children kept apart from what the gateway guards. Four things are pinned:
 *
 *   - a child's environment: its own HOME (the CODEX_HOME), the model key,
 *     and none of the gateway's own secrets even when an allowlist names them;
 *   - the data layout's modes, tightened on start even when the directories
 *     and key file were made by hand with looser ones;
 *   - spawn.user: the real codex runs as that uid, a turn works and resumes
 *     after a restart, and a process started as that uid through the same
 *     launcher gets EACCES on jwt.secret and on another workspace's home;
 *   - spawn.sandbox = bubblewrap: the same journey, and inside the child's
 *     mount namespace (seen through /proc/<pid>/root, and by a process run
 *     with the argv the gateway builds) jwt.secret and the other workspace
 *     do not exist.
 *
 * The spawn.user and sandbox cases need root (CI runs as root) and, for the
 * sandbox, bwrap (.ci/run installs Debian's bubblewrap). Their data
 * directory is under /var/tmp: the test base lies under /root, which another
 * uid cannot walk through.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken, Supervisor } from 'codex-app-gateway';
import type { ChildHandle } from 'codex-app-gateway';
import { secureDataDir } from '../src/main/isolation.js';
import { DEFAULT_ENV_ALLOWLIST } from '../src/shared/child-env.js';
import { resolveChildUser } from '../src/shared/spawn-user.js';
import { childLaunch } from '../src/workers/parent-death.js';
import { childPids } from '../src/workers/renice.js';
import { processStartTicks } from '../src/shared/proc.js';
import { stopLeftoverChild } from '../src/workers/recovery.js';
import { AppServerClient } from './fixtures/app-server-client.js';
import { fakeCodexBin, TEST_API_KEY } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { killLeftovers, recordedChildPid } from './faults/markers.js';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess, writeConfig } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { quietLogger, rejection, spawnConfig, startTestSupervisor, tempDir, waitFor } from './helpers.js';
import { agentText, httpUrlOf, postTurn, textInput } from './turn-client.js';

const CHILD_UID = 61000;
const CHILD_GID = 61000;
const isRoot = process.geteuid?.() === 0;
const hasBwrap = existsSync('/usr/bin/bwrap');

async function childEnv(h: ChildHandle): Promise<Record<string, string>> {
  const c = await AppServerClient.connect(h.wsUrl, { token: h.wsToken });
  try {
    return (await c.request<{ env: Record<string, string> }>('fake/info', {})).env;
  } finally {
    await c.close();
  }
}

async function mode(p: string): Promise<number> {
  return (await stat(p)).mode & 0o777;
}

describe('child environment', () => {
  it('a child gets its CODEX_HOME as HOME, the model key, and none of the gateway\'s secrets, even allowlisted', async () => {
    const secrets = { CXG_AUTH_JWT_SECRET: 'jwt-secret-of-the-gateway-0000000000', CXG_ADMIN_TOKEN: 'admin-token-000000', AWS_SECRET_ACCESS_KEY: 's3-secret', AWS_ACCESS_KEY_ID: 's3-id' };
    const saved = Object.fromEntries(Object.keys(secrets).map((k) => [k, process.env[k]]));
    Object.assign(process.env, secrets);
    let t;
    try {
      // Worker threads copy the environment when they start.
      t = await startTestSupervisor({ envAllowlist: [...DEFAULT_ENV_ALLOWLIST, ...Object.keys(secrets)] });
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    try {
      const h = await t.sup.ensureSubprocess({ workspaceId: 'ws-env-home' }, () => spawnConfig());
      const env = await childEnv(h);
      expect(env.HOME).toBe(h.codexHome);
      expect(env.HOME).not.toBe(process.env.HOME);
      for (const k of Object.keys(secrets)) expect(env[k], k).toBeUndefined();
      // The model key the config names still reaches it (spawnConfig's builder env).
      expect(env.CXG_TEST_API_KEY).toBe('cxg-test-key');
      expect(env.PATH).toBe(process.env.PATH);
    } finally {
      await t.close();
    }
  }, 60_000);
});

describe('data layout', () => {
  it('data.dir, jwt.secret, homes.root, the file store and workspace dirs are private after start, even when made loose by hand', async () => {
    const root = await tempDir('cxg-layout-');
    try {
      const data = path.join(root, 'data');
      const homes = path.join(data, 'homes');
      const store = path.join(data, 'store');
      const secret = path.join(data, 'jwt.secret');
      await mkdir(homes, { recursive: true, mode: 0o755 });
      await mkdir(store, { recursive: true, mode: 0o755 });
      await chmod(data, 0o755);
      await chmod(homes, 0o755);
      await chmod(store, 0o755);
      await writeFile(secret, `${'k'.repeat(64)}\n`, { mode: 0o644 });
      await chmod(secret, 0o644);
      await secureDataDir({ dataDir: data, homesRoot: homes, secretFile: secret, childUser: false });
      const t = await startTestSupervisor({ homeRoot: homes, store: { kind: 'file', dir: store } });
      try {
        const h = await t.sup.ensureSubprocess({ workspaceId: 'ws-layout' }, () => spawnConfig());
        expect(await mode(data)).toBe(0o700);
        expect(await mode(secret)).toBe(0o600);
        expect(await mode(homes)).toBe(0o700);
        expect(await mode(store)).toBe(0o700);
        expect(await mode(path.dirname(h.codexHome))).toBe(0o700);
        expect(await mode(h.codexHome)).toBe(0o700);
      } finally {
        await t.close();
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('recovery and a forged home state', () => {
  it('a state file naming a process that is no gateway child (a child could write it) gets no signal', async () => {
    // Started bare: not the environment a child gets.
    const victim = spawn('/usr/bin/sleep', ['60'], { env: { PATH: '/usr/bin:/bin' }, stdio: 'ignore', detached: true });
    const pid = victim.pid as number;
    const gone = new Promise((resolve) => victim.once('exit', resolve));
    try {
      await waitFor(async () => (await processStartTicks(pid)) !== null, 5000, 'the process to show in /proc');
      const startTicks = await processStartTicks(pid);
      expect(await stopLeftoverChild({ pid, startTicks }, 1000)).toBe('pid-reused');
      expect(victim.exitCode).toBeNull();
      expect(victim.signalCode).toBeNull();
    } finally {
      process.kill(-pid, 'SIGKILL');
      await gone;
    }
  });
});

describe('spawn.user settings', () => {
  it.each([
    ['not root', 'nobody', { euid: 1000 }],
    ['unknown name', 'no-such-user-cxg', { euid: 0 }],
    ['root itself', '0:0', { euid: 0 }],
  ] as const)('refused with GW_SPAWN_USER: %s', (_what, spec, o) => {
    let err: (Error & { code?: string }) | undefined;
    try {
      resolveChildUser(spec, o);
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err?.code).toBe('GW_SPAWN_USER');
  });

  it('a name resolves through /etc/passwd; uid:gid is taken as given', () => {
    expect(resolveChildUser('nobody', { euid: 0 })).toMatchObject({ uid: 65534, name: 'nobody' });
    expect(resolveChildUser(`${CHILD_UID}:${CHILD_GID}`, { euid: 0 })).toEqual({ uid: CHILD_UID, gid: CHILD_GID });
  });

  it.runIf(isRoot)('the supervisor refuses a spawn.user that cannot reach homes.root', async () => {
    // The test base lies under /root (0700): uid 61000 cannot pass.
    const root = await tempDir('cxg-unreachable-');
    try {
      const err = await rejection(Supervisor.start({ codexBin: fakeCodexBin(), logger: quietLogger, spawnUser: `${CHILD_UID}:${CHILD_GID}`, homeRoot: path.join(root, 'homes'), store: { kind: 'file', dir: path.join(root, 'store') } }));
      expect(err.code).toBe('GW_SPAWN_USER');
      expect(err.message).toMatch(/not searchable/);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

/** Runs `argv` through the launcher a child gets; returns its exit status and stderr. */
function runAsChild(argv: string[], o: Parameters<typeof childLaunch>[2]): { status: number | null; stdout: string; stderr: string } {
  const launch = childLaunch(argv[0] as string, argv.slice(1), o);
  const r = spawnSync(launch.command, launch.args, {
    encoding: 'utf8',
    env: { PATH: '/usr/bin:/bin' },
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    timeout: 20_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

type Mode = 'user' | 'bubblewrap' | 'user+bubblewrap';
const MODES: Mode[] = ['user', 'bubblewrap', 'user+bubblewrap'];
const SECRET = 'isolation-secret-isolation-secret-0000';
const DELTAS = ['Kept', ' apart.'];

describe.runIf(isRoot && hasBwrap).each(MODES)('children isolated (real codex, %s)', (m) => {
  const withUser = m !== 'bubblewrap';
  const withSandbox = m !== 'user';
  let mock: ResponsesMock;
  let dir: string;
  let config: string;
  let gw: GatewayProcess | undefined;
  let base: string;
  let token: string;
  let other: string;
  let threadId: string;
  const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
  const homes = (): string => path.join(dir, 'homes');
  const home = (ws: string): string => path.join(homes(), ws, 'codex-home');
  const secretFile = (): string => path.join(dir, 'jwt.secret');

  /**
   * The codex process of a workspace. The recorded pid is codex itself, or
   * under bubblewrap the sandbox's init (the process group the gateway
   * signals), whose one child is codex.
   */
  const codexPid = async (ws: string): Promise<number> => {
    const recorded = await recordedChildPid(home(ws));
    expect(recorded).toBeDefined();
    if (!withSandbox) return recorded as number;
    expect(/^Name:\s+(\S+)/m.exec(await readFile(`/proc/${String(recorded)}/status`, 'utf8'))?.[1]).toBe('bwrap');
    const children = childPids(recorded as number);
    expect(children).toHaveLength(1);
    return children[0] as number;
  };

  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: DELTAS });
    dir = await mkdtemp('/var/tmp/cxg-iso-');
    await writeFile(secretFile(), `${SECRET}\n`, { mode: 0o644 });
    const extra = ['[spawn]', ...(withUser ? [`user = "${CHILD_UID}:${CHILD_GID}"`] : []), ...(withSandbox ? ['sandbox = "bubblewrap"'] : []), '[shutdown]', 'budget = "30s"'];
    const toml = realCodexToml({ dir, secret: SECRET, mockBaseUrl: mock.baseUrl, extra }).replace(`secret = ${JSON.stringify(SECRET)}`, `secret_file = ${JSON.stringify(secretFile())}`);
    config = await writeConfig(path.join(dir, 'gateway.toml'), toml);
    gw = await startGatewayProcess(config, env, 60_000);
    base = httpUrlOf(gw.url);
    token = await signWorkspaceToken({ secret: SECRET, workspaceId: 'alpha', expiresIn: '10m' });
    // Another workspace with a home on disk, to be kept out of.
    const r = await postTurn(base, await signWorkspaceToken({ secret: SECRET, workspaceId: 'beta', expiresIn: '10m' }), { workspaceId: 'beta', params: { input: textInput('beta') }, timeoutMs: 60_000 });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    other = home('beta');
  }, 120_000);

  afterAll(async () => {
    if (gw !== undefined) await gw.stop('SIGTERM');
    const left = dir === undefined ? [] : await killLeftovers(dir);
    await mock?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    expect(left, 'processes left running under the test directory').toEqual([]);
  }, 60_000);

  it('the key file is 0600 in a data dir children cannot list', async () => {
    expect(await mode(secretFile())).toBe(0o600);
    expect(await mode(dir)).toBe(withUser ? 0o711 : 0o700);
  });

  it('a turn works, in a child of the configured uid and sandbox', async () => {
    const r = await postTurn(base, token, { workspaceId: 'alpha', params: { input: textInput('first question') }, timeoutMs: 60_000 });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(agentText(r.body.turn)).toBe(DELTAS.join(''));
    threadId = r.body.threadId as string;
    const pid = await codexPid('alpha');
    const status = await readFile(`/proc/${String(pid)}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status)?.[1];
    expect(Number(uid)).toBe(withUser ? CHILD_UID : 0);
    expect(/^Name:\s+(\S+)/m.exec(status)?.[1]).toBe('codex');
    // The child's view of the filesystem, from the host: its mount namespace's root.
    const view = `/proc/${String(pid)}/root`;
    expect(existsSync(path.join(view, home('alpha'), 'config.toml'))).toBe(true);
    expect(existsSync(path.join(view, secretFile()))).toBe(!withSandbox);
    expect(existsSync(path.join(view, other))).toBe(!withSandbox);
    expect(existsSync(path.join(view, dir, 'store'))).toBe(!withSandbox);
    expect(existsSync(path.join(view, dir, 'gateway.toml'))).toBe(!withSandbox);
    expect(existsSync(path.join(view, '/etc/shadow'))).toBe(!withSandbox);
    // Its own /proc shows no process outside its sandbox: not the gateway's environ, not the gateway's root.
    const gatewayPid = (gw as GatewayProcess).proc.pid as number;
    expect(existsSync(path.join(view, 'proc', String(gatewayPid), 'environ'))).toBe(!withSandbox);
    if (withSandbox) expect(/^CapEff:\s+0+$/m.test(await readFile(`/proc/${String(pid)}/status`, 'utf8'))).toBe(true);
    // Its HOME is its CODEX_HOME, its own.
    const environ = (await readFile(`/proc/${String(pid)}/environ`, 'utf8')).split('\0');
    expect(environ).toContain(`HOME=${home('alpha')}`);
    expect(environ.some((e) => e.startsWith('CXG_AUTH') || e.startsWith(GATEWAY_KEY_ENV))).toBe(false);
    if (withUser) expect((await stat(home('alpha'))).uid).toBe(CHILD_UID);
  }, 120_000);

  it('a process started like the child cannot read jwt.secret nor another workspace\'s home', () => {
    const o = {
      ...(withUser ? { runAs: { uid: CHILD_UID, gid: CHILD_GID } } : {}),
      ...(withSandbox ? { sandbox: { workspaceDir: path.dirname(home('alpha')), cwd: home('alpha'), codexBin: '/usr/bin/cat' } } : {}),
    };
    // Its own home it reads.
    expect(runAsChild(['/usr/bin/cat', path.join(home('alpha'), 'config.toml')], o).status).toBe(0);
    const secret = runAsChild(['/usr/bin/cat', secretFile()], o);
    expect(secret.status).not.toBe(0);
    expect(secret.stdout).not.toContain(SECRET);
    expect(secret.stderr).toMatch(withSandbox ? /No such file/ : /Permission denied/);
    // beta's child may still run; with one uid and no sandbox its home is closed only once it stopped (see below).
    if (withSandbox) {
      const list = runAsChild(['/usr/bin/ls', other], o);
      expect(list.status).not.toBe(0);
      expect(list.stderr).toMatch(/No such file/);
    }
  });

  it('the home round-trips through a stop and a start: the thread resumes and a new turn runs, still isolated', async () => {
    await (gw as GatewayProcess).stop('SIGTERM');
    gw = undefined;
    if (withUser) {
      // Stopped: every workspace directory is root's again, and the child uid is kept out.
      expect((await stat(path.dirname(other))).uid).toBe(0);
      const list = runAsChild(['/usr/bin/ls', other], { runAs: { uid: CHILD_UID, gid: CHILD_GID } });
      expect(list.status).not.toBe(0);
      expect(list.stderr).toMatch(/Permission denied/);
    }
    gw = await startGatewayProcess(config, env, 60_000);
    base = httpUrlOf(gw.url);
    const r = await postTurn(base, token, { workspaceId: 'alpha', threadId, params: { input: textInput('after the restart') }, timeoutMs: 60_000 });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.threadId).toBe(threadId);
    expect(agentText(r.body.turn)).toBe(DELTAS.join(''));
    // The model saw the first exchange: the same thread, resumed from the restored home.
    expect(JSON.stringify(mock.requests.at(-1))).toContain('first question');
    const pid = await codexPid('alpha');
    const uid = /^Uid:\s+(\d+)/m.exec(await readFile(`/proc/${String(pid)}/status`, 'utf8'))?.[1];
    expect(Number(uid)).toBe(withUser ? CHILD_UID : 0);
  }, 180_000);

  it('a gateway SIGKILL leaves no child behind (parent-death through the launcher), and the next start recovers the home', async () => {
    const recorded = (await recordedChildPid(home('alpha'))) as number;
    const pid = await codexPid('alpha');
    const g = gw as GatewayProcess;
    process.kill(g.proc.pid as number, 'SIGKILL');
    await g.exited;
    gw = undefined;
    const t0 = Date.now();
    await waitFor(async () => (await processEnded(pid)) && (await processEnded(recorded)), 10_000, 'the child to end after the gateway SIGKILL');
    expect(Date.now() - t0).toBeLessThan(10_000);
    gw = await startGatewayProcess(config, env, 60_000);
    base = httpUrlOf(gw.url);
    const r = await postTurn(base, token, { workspaceId: 'alpha', threadId, params: { input: textInput('after the kill') }, timeoutMs: 60_000 });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(JSON.stringify(mock.requests.at(-1))).toContain('after the restart');
  }, 180_000);
});

/** True when the process is gone or a zombie (its parent, the killed gateway, reaps nothing). */
async function processEnded(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}
