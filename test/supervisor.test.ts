/**
 * The library API against the fake codex: spawn, share, crash, stop, persist.
 */
import { existsSync } from 'node:fs';
import { readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdleReaper } from 'codex-app-gateway';
import type { ChildHandle } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import type { ConnectError } from './fixtures/app-server-client.js';
import { countingBuilder, homeDirs, homeState, processAlive, rejection, spawnConfig, startTestSupervisor, waitFor } from './helpers.js';
import type { TestSupervisor } from './helpers.js';

async function connect(h: ChildHandle): Promise<AppServerClient> {
  return AppServerClient.connect(h.wsUrl, { token: h.wsToken });
}

async function writeMarker(h: ChildHandle, file: string, content: string): Promise<void> {
  const c = await connect(h);
  try {
    await c.request('fake/writeFile', { path: file, content });
  } finally {
    await c.close();
  }
}

async function childEnv(h: ChildHandle): Promise<Record<string, string>> {
  const c = await connect(h);
  try {
    const info = await c.request<{ env: Record<string, string> }>('fake/info', {});
    return info.env;
  } finally {
    await c.close();
  }
}

describe('Supervisor (fake codex)', () => {
  let t: TestSupervisor;

  beforeAll(async () => {
    process.env.CXG_TEST_GATEWAY_SECRET = 'must-not-reach-children';
    t = await startTestSupervisor({ extraEnv: ['CXG_EXTRA=extra', 'CXG_BOTH=extra'] });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('ensureSubprocess › starts a child that accepts only its capability token', async () => {
    const h = await t.sup.ensureSubprocess({ workspaceId: 'ws-basic' }, countingBuilder());
    expect(h.isAlive()).toBe(true);
    expect(processAlive(h.pid)).toBe(true);
    expect(h.wsUrl).toMatch(/^ws:\/\/127\.0\.0\.1:\d+\/?$/);
    expect(h.httpUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(h.codexHome.startsWith(path.join(t.homeRoot, 'ws-basic'))).toBe(true);
    const ready = await fetch(`${h.httpUrl}/readyz`);
    expect(ready.status).toBe(200);

    const noToken = await rejection(AppServerClient.connect(h.wsUrl));
    expect((noToken as ConnectError).status).toBe(401);
    const wrong = await rejection(AppServerClient.connect(h.wsUrl, { token: 'guess' }));
    expect((wrong as ConnectError).status).toBe(401);
    const c = await connect(h);
    await c.close();
  });

  it('ensureSubprocess › 50 concurrent calls for one key spawn once and call the builder once', async () => {
    const build = countingBuilder();
    const handles = await Promise.all(Array.from({ length: 50 }, () => t.sup.ensureSubprocess({ workspaceId: 'ws-concurrent' }, build)));
    expect(build.calls).toHaveLength(1);
    expect(new Set(handles.map((h) => h.pid)).size).toBe(1);
    expect(new Set(handles)).toEqual(new Set([handles[0]]));
    expect(await homeDirs(t.homeRoot, 'ws-concurrent')).toHaveLength(1);
  });

  it('ensureSubprocess › a second call returns the live child without building again', async () => {
    const build = countingBuilder();
    const a = await t.sup.ensureSubprocess({ workspaceId: 'ws-again' }, build);
    const b = await t.sup.ensureSubprocess({ workspaceId: 'ws-again' }, build);
    expect(b.pid).toBe(a.pid);
    expect(build.calls).toHaveLength(1);
    const other = await t.sup.ensureSubprocess({ workspaceId: 'ws-again-2' }, build);
    expect(other.pid).not.toBe(a.pid);
  });

  it('config.toml › rendered from ConfigInput, 0600 in a 0700 home, with the loopback token for the agent server', async () => {
    let seenToken = '';
    const h = await t.sup.ensureSubprocess({ workspaceId: 'ws-config' }, (token) => {
      seenToken = token;
      const cfg = spawnConfig();
      cfg.config.modelReasoningEffort = 'high';
      cfg.config.trustedProjects = ['/srv/project one'];
      cfg.config.agentServer = { command: '/usr/bin/agent-mcp', args: ['--stdio'], workspaceToken: 'wstok' };
      return cfg;
    });
    expect(seenToken).toMatch(/^[0-9a-f]{64}$/);
    const file = path.join(h.codexHome, 'config.toml');
    const toml = await readFile(file, 'utf8');
    expect(toml).toContain('model_provider = "mock"');
    expect(toml).toContain('model = "gpt-test"');
    expect(toml).toContain('model_reasoning_effort = "high"');
    expect(toml).toContain('[model_providers.mock]');
    expect(toml).toContain('wire_api = "responses"');
    expect(toml).toContain('[projects."/srv/project one"]');
    expect(toml).toContain('trust_level = "trusted"');
    expect(toml).toMatch(/shell_tool = false/);
    expect(toml).toMatch(/unified_exec = false/);
    expect(toml).toMatch(/apply_patch_freeform = false/);
    expect(toml).toContain('[mcp_servers.agentserver]');
    expect(toml).toContain('default_tools_approval_mode = "approve"');
    expect(toml).toContain(`CXG_LOOPBACK_TOKEN = "${seenToken}"`);
    expect(toml).toContain('CXG_WORKSPACE_TOKEN = "wstok"');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(h.codexHome)).mode & 0o777).toBe(0o700);
    expect(await t.sup.lookupWorkspaceForLoopbackToken(seenToken)).toBe('ws-config');
  });

  it('child env › allowlisted gateway env, then extraEnv, then builder env, then CODEX_HOME and the loopback token', async () => {
    let token = '';
    const h = await t.sup.ensureSubprocess({ workspaceId: 'ws-env' }, (tok) => {
      token = tok;
      return spawnConfig({ env: ['CXG_BOTH=builder', 'CXG_BUILDER=b', 'CODEX_HOME=/nope', 'CXG_LOOPBACK_TOKEN=forged'] });
    });
    const env = await childEnv(h);
    expect(env.PATH).toBe(process.env.PATH);
    expect(env.CXG_TEST_GATEWAY_SECRET).toBeUndefined();
    expect(env.CXG_EXTRA).toBe('extra');
    expect(env.CXG_BOTH).toBe('builder');
    expect(env.CXG_BUILDER).toBe('b');
    expect(env.CODEX_HOME).toBe(h.codexHome);
    expect(env.CXG_LOOPBACK_TOKEN).toBe(token);
  });

  it('ConfigBuilder › its error rejects with GW_BUILDER_FAILED and leaves nothing behind', async () => {
    const err = await rejection(
      t.sup.ensureSubprocess({ workspaceId: 'ws-builder-fails' }, async () => {
        await Promise.resolve();
        throw new Error('agentserver unreachable');
      }),
    );
    expect(err.code).toBe('GW_BUILDER_FAILED');
    expect(err.message).toContain('agentserver unreachable');
    expect(await homeDirs(t.homeRoot, 'ws-builder-fails')).toEqual([]);
    expect(existsSync(path.join(t.storeDir, 'ws-builder-fails.tar.gz'))).toBe(false);
    const stats = await t.sup.stats();
    expect(stats.flatMap((s) => s.workspaces).find((w) => w.workspaceId === 'ws-builder-fails')).toBeUndefined();
  });

  it.each([
    ['missing model', { model: '' }],
    ['model_provider not among model_providers', { modelProvider: 'elsewhere' }],
    ['bad reasoning effort', { modelReasoningEffort: 'extreme' }],
    ['base_url not a URL', { modelProviders: { mock: { baseUrl: 'not a url' } } }],
    ["a provider id codex reserves ('openai')", { modelProvider: 'openai', modelProviders: { openai: { baseUrl: 'http://127.0.0.1:9/v1' } } }],
  ])('config › %s is GW_BAD_CONFIG before any work', async (_name, patch) => {
    const cfg = spawnConfig();
    Object.assign(cfg.config, patch);
    const err = await rejection(t.sup.ensureSubprocess({ workspaceId: 'ws-bad-config' }, () => cfg));
    expect(err.code).toBe('GW_BAD_CONFIG');
    expect(await homeDirs(t.homeRoot, 'ws-bad-config')).toEqual([]);
  });

  it('config › a malformed env entry from the builder is GW_BAD_CONFIG', async () => {
    const err = await rejection(t.sup.ensureSubprocess({ workspaceId: 'ws-bad-env' }, () => spawnConfig({ env: ['NOEQUALS'] })));
    expect(err.code).toBe('GW_BAD_CONFIG');
  });

  it.each([[''], ['.'], ['..'], ['a/b'], ['../etc'], ['x'.repeat(129)], ['sp ace'], ['ünï'], ['a\0b']])(
    'workspace id %j › GW_BAD_WORKSPACE_ID before any work',
    async (id) => {
      const build = countingBuilder();
      expect((await rejection(t.sup.ensureSubprocess({ workspaceId: id }, build))).code).toBe('GW_BAD_WORKSPACE_ID');
      expect((await rejection(t.sup.shutdown({ workspaceId: id }))).code).toBe('GW_BAD_WORKSPACE_ID');
      expect(() => t.sup.touch({ workspaceId: id })).toThrow(expect.objectContaining({ code: 'GW_BAD_WORKSPACE_ID' }) as Error);
      expect(build.calls).toHaveLength(0);
    },
  );

  it('workspace id › 128 characters of the allowed alphabet is accepted', async () => {
    const id = `A-z_0.${'x'.repeat(122)}`;
    expect(id).toHaveLength(128);
    const h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
    expect(h.isAlive()).toBe(true);
    await t.sup.shutdown({ workspaceId: id });
  });

  it('crash › SIGKILL of the child: the token dies, the next ensure evicts, uploads and respawns with the state', async () => {
    const id = 'ws-crash';
    let token = '';
    const build = (tok: string) => {
      token = tok;
      return spawnConfig();
    };
    const h = await t.sup.ensureSubprocess({ workspaceId: id }, build);
    await writeMarker(h, 'marker.txt', 'before-crash');
    const firstToken = token;
    expect(await t.sup.lookupWorkspaceForLoopbackToken(firstToken)).toBe(id);
    process.kill(h.pid, 'SIGKILL');
    const exit = await h.done();
    expect(exit.signal).toBe('SIGKILL');
    expect(h.isAlive()).toBe(false);
    expect(await t.sup.lookupWorkspaceForLoopbackToken(firstToken)).toBeUndefined();

    const h2 = await t.sup.ensureSubprocess({ workspaceId: id }, build);
    expect(h2.pid).not.toBe(h.pid);
    // The same path after a crash (invariant 3): codex's state names it.
    expect(h2.codexHome).toBe(h.codexHome);
    expect(await readFile(path.join(h2.codexHome, 'marker.txt'), 'utf8')).toBe('before-crash');
    expect(existsSync(path.join(t.storeDir, `${id}.tar.gz`))).toBe(true);
    expect(await t.sup.lookupWorkspaceForLoopbackToken(token)).toBe(id);
  });

  it('shutdown › stops the child, uploads the home, drops the entry and its token; safe on a missing key', async () => {
    const id = 'ws-shutdown';
    let token = '';
    const h = await t.sup.ensureSubprocess({ workspaceId: id }, (tok) => {
      token = tok;
      return spawnConfig();
    });
    await writeMarker(h, 'notes/a.txt', 'hello');
    const r = await t.sup.shutdown({ workspaceId: id });
    expect(r).toMatchObject({ workspaceId: id, stopped: true, saved: true });
    expect(h.isAlive()).toBe(false);
    expect(processAlive(h.pid)).toBe(false);
    // Kept warm: stored, with no process.
    expect(await homeState(t.homeRoot, id)).toMatchObject({ stored: true, pid: null });
    expect(await t.sup.lookupWorkspaceForLoopbackToken(token)).toBeUndefined();
    expect(existsSync(path.join(t.storeDir, `${id}.tar.gz`))).toBe(true);
    expect(await t.sup.shutdown({ workspaceId: id })).toMatchObject({ stopped: false });
    expect(await t.sup.shutdown({ workspaceId: 'never-started' })).toMatchObject({ stopped: false, saved: false });
  });

  it('shutdown then ensure at once, 100 times › what every generation wrote survives', async () => {
    const id = 'ws-interleave';
    const build = countingBuilder();
    const pids = new Set<number>();
    let h = await t.sup.ensureSubprocess({ workspaceId: id }, build);
    for (let i = 0; i < 100; i++) {
      await writeMarker(h, `gen/${i}.txt`, String(i));
      pids.add(h.pid);
      const stopping = t.sup.shutdown({ workspaceId: id });
      h = await t.sup.ensureSubprocess({ workspaceId: id }, build);
      expect((await stopping).saved).toBe(true);
    }
    expect(pids.size).toBe(100);
    for (let i = 0; i < 100; i++) {
      expect(await readFile(path.join(h.codexHome, 'gen', `${i}.txt`), 'utf8')).toBe(String(i));
    }
    expect(await homeDirs(t.homeRoot, id)).toHaveLength(1);
  }, 120_000);

  it('lookupWorkspaceForLoopbackToken › unknown, empty and oversized tokens are undefined', async () => {
    expect(await t.sup.lookupWorkspaceForLoopbackToken('0'.repeat(64))).toBeUndefined();
    expect(await t.sup.lookupWorkspaceForLoopbackToken('')).toBeUndefined();
    expect(await t.sup.lookupWorkspaceForLoopbackToken('x'.repeat(10_000))).toBeUndefined();
  });

  it('touch › bumps last activity', async () => {
    await t.sup.ensureSubprocess({ workspaceId: 'ws-touch' }, countingBuilder());
    const before = (await t.sup.stats()).flatMap((s) => s.workspaces).find((w) => w.workspaceId === 'ws-touch');
    await new Promise((r) => setTimeout(r, 30));
    t.sup.touch({ workspaceId: 'ws-touch' });
    await waitFor(async () => {
      const now = (await t.sup.stats()).flatMap((s) => s.workspaces).find((w) => w.workspaceId === 'ws-touch');
      return (now?.lastActivity ?? 0) > (before?.lastActivity ?? Infinity);
    }, 2000, 'lastActivity to move');
  });
});

describe('IdleReaper', () => {
  let t: TestSupervisor;
  beforeAll(async () => {
    t = await startTestSupervisor();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('stops children idle at least idleAfter and keeps touched ones', async () => {
    const build = countingBuilder();
    const idle = await t.sup.ensureSubprocess({ workspaceId: 'reap-idle' }, build);
    const busy = await t.sup.ensureSubprocess({ workspaceId: 'reap-busy' }, build);
    const reaper = new IdleReaper(t.sup, { intervalMs: 50, idleAfterMs: 400 });
    const ac = new AbortController();
    const touching = setInterval(() => t.sup.touch({ workspaceId: 'reap-busy' }), 50);
    const running = reaper.run(ac.signal);
    try {
      await idle.done();
      expect(busy.isAlive()).toBe(true);
      await waitFor(() => existsSync(path.join(t.storeDir, 'reap-idle.tar.gz')), 5000, 'the reaped home to be uploaded');
    } finally {
      clearInterval(touching);
      ac.abort();
      await running;
    }
    expect(busy.isAlive()).toBe(true);
  });
});

describe('Supervisor failure modes (fake codex)', () => {
  let t: TestSupervisor;
  beforeAll(async () => {
    t = await startTestSupervisor({ readyTimeoutMs: 3000, stopGraceMs: 300 });
  });
  afterAll(async () => {
    await t?.close();
  });

  async function failingStart(id: string, mode: string, codexBin?: string): Promise<Error & { code?: string }> {
    const cfg = spawnConfig();
    cfg.env = [...(cfg.env ?? []), `FAKE_CODEX_MODE=${mode}`];
    if (codexBin !== undefined) {
      const t2 = await startTestSupervisor({ codexBin, readyTimeoutMs: 3000 });
      try {
        return await rejection(t2.sup.ensureSubprocess({ workspaceId: id }, () => cfg));
      } finally {
        await t2.close();
      }
    }
    const err = await rejection(t.sup.ensureSubprocess({ workspaceId: id }, () => cfg));
    // A process ran: its home is stored (and kept warm), never left unsaved.
    await waitFor(async () => (await homeState(t.homeRoot, id))?.stored === true, 10_000, `the home of ${id} to be stored`);
    return err;
  }

  it.each([
    ['exit-before-banner', 'GW_SPAWN_EXITED'],
    ['no-url', 'GW_SPAWN_TIMEOUT'],
    ['never-ready', 'GW_SPAWN_NOT_READY'],
  ])('a child in mode %s fails with %s and leaves no process and no unsaved home', async (mode, code) => {
    const before = await listChildren();
    const err = await failingStart(`fail-${mode}`, mode);
    expect(err.code).toBe(code);
    await waitFor(async () => (await listChildren()).length <= before.length, 3000, 'children to be gone');
  });

  it('a missing codex binary is GW_CODEX_NOT_FOUND', async () => {
    const err = await failingStart('fail-missing', '', '/nonexistent/codex');
    expect(err.code).toBe('GW_CODEX_NOT_FOUND');
  });

  it('stopping a child that ignores SIGTERM escalates to SIGKILL after the grace period', async () => {
    const cfg = spawnConfig();
    cfg.env = [...(cfg.env ?? []), 'FAKE_CODEX_MODE=ignore-sigterm'];
    const h = await t.sup.ensureSubprocess({ workspaceId: 'stubborn' }, () => cfg);
    const t0 = Date.now();
    const r = await t.sup.shutdown({ workspaceId: 'stubborn' });
    expect(r.saved).toBe(true);
    expect((await h.done()).signal).toBe('SIGKILL');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(processAlive(h.pid)).toBe(false);
  });

  it('stopping a child stops its whole process group', async () => {
    const cfg = spawnConfig();
    cfg.env = [...(cfg.env ?? []), 'FAKE_CODEX_MODE=grandchild'];
    const h = await t.sup.ensureSubprocess({ workspaceId: 'family' }, () => cfg);
    const pidFile = path.join(h.codexHome, 'grandchild.pid');
    await waitFor(() => existsSync(pidFile), 3000, 'grandchild pid file');
    const grandchild = Number(await readFile(pidFile, 'utf8'));
    expect(processAlive(grandchild)).toBe(true);
    await t.sup.shutdown({ workspaceId: 'family' });
    await waitFor(() => !processAlive(grandchild), 3000, 'grandchild to die');
  });
});

describe('Persistence when the store fails', () => {
  it('a failed upload keeps the home in the spool; the next start uses it; a retry uploads it later', async () => {
    const t = await startTestSupervisor({ spoolRetryBaseMs: 300, spoolRetryMaxMs: 600 });
    const id = 'ws-spool';
    const object = path.join(t.storeDir, `${id}.tar.gz`);
    const breakStore = async () => {
      await rename(t.storeDir, `${t.storeDir}.real`);
      await writeFile(t.storeDir, 'not a directory');
    };
    const fixStore = async () => {
      await rm(t.storeDir, { force: true });
      await rename(`${t.storeDir}.real`, t.storeDir);
    };
    try {
      let h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      await writeMarker(h, 'state.txt', 'v1');
      expect((await t.sup.shutdown({ workspaceId: id })).saved).toBe(true);

      h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      expect(await readFile(path.join(h.codexHome, 'state.txt'), 'utf8')).toBe('v1');
      await writeMarker(h, 'state.txt', 'v2');
      await breakStore();
      const failed = await t.sup.shutdown({ workspaceId: id });
      expect(failed).toMatchObject({ stopped: true, saved: false });
      expect(failed.error).toMatch(/GW_STORE/);
      expect(await readFile(path.join(failed.spooledDir as string, 'state.txt'), 'utf8')).toBe('v2');
      const spool = (await t.sup.stats()).flatMap((s) => s.spool);
      expect(spool.map((e) => e.workspaceId)).toEqual([id]);

      // The spooled home is newer than the stored object: the next start takes it.
      h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      expect(await readFile(path.join(h.codexHome, 'state.txt'), 'utf8')).toBe('v2');
      // Used where it is: the spooled home is the workspace's one home.
      expect(h.codexHome).toBe(failed.spooledDir);
      await writeMarker(h, 'state.txt', 'v3');
      const again = await t.sup.shutdown({ workspaceId: id });
      expect(again.saved).toBe(false);

      await fixStore();
      await waitFor(async () => (await t.sup.stats()).every((s) => s.spool.length === 0), 10_000, 'spool to drain');
      expect(await homeState(t.homeRoot, id)).toMatchObject({ stored: true });
      expect(existsSync(object)).toBe(true);
      h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      expect(await readFile(path.join(h.codexHome, 'state.txt'), 'utf8')).toBe('v3');
    } finally {
      await fixStore().catch(() => {});
      await t.close();
    }
  });
});

async function listChildren(): Promise<number[]> {
  const { readdir: rd } = await import('node:fs/promises');
  const out: number[] = [];
  for (const p of await rd('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const st = await readFile(`/proc/${p}/stat`, 'utf8');
      const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid) out.push(Number(p));
    } catch {
      // gone
    }
  }
  return out;
}
