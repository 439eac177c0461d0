/**
 * gatewayConfigBuilder with `envUrl` against a real loopback HTTP server:
 * what it posts, the two answer shapes, what reaches the child, and the
 * fallback to the static key (with a warning) when the endpoint fails.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { gatewayConfigBuilder } from 'codex-app-gateway';
import type { ModelSettings } from 'codex-app-gateway';
import { startTestSupervisor } from '../helpers.js';
import type { TestSupervisor } from '../helpers.js';
import { childEnvOf, recordingLogger } from './helpers.js';

interface Seen {
  method: string;
  contentType: string | undefined;
  body: unknown;
}

type Answer = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** A loopback endpoint whose answer each test sets; records what it was sent. */
async function envServer(): Promise<{ url: string; seen: Seen[]; answer: Answer; close(): Promise<void> }> {
  const state = {
    seen: [] as Seen[],
    answer: ((_req, res) => res.writeHead(500).end()) as Answer,
  };
  const server = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (raw += c));
    req.on('end', () => {
      let body: unknown = raw;
      try {
        body = JSON.parse(raw);
      } catch {
        // kept as text
      }
      state.seen.push({ method: req.method ?? '', contentType: req.headers['content-type'], body });
      state.answer(req, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/spawn-env`,
    get seen() {
      return state.seen;
    },
    get answer() {
      return state.answer;
    },
    set answer(a: Answer) {
      state.answer = a;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

const json =
  (status: number, body: unknown): Answer =>
  (_req, res) =>
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));

const MODEL: ModelSettings = { provider: 'mock', name: 'gpt-test', baseUrl: 'http://127.0.0.1:9/v1', envKey: 'CXG_CHILD_KEY', wireApi: 'responses', apiKeyEnv: 'CXG_GATEWAY_KEY' };
const GATEWAY_ENV = { CXG_GATEWAY_KEY: 'static-key' };

function entries(env: string[] | undefined): Record<string, string> {
  return Object.fromEntries((env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
}

describe('gatewayConfigBuilder with envUrl', () => {
  let srv: Awaited<ReturnType<typeof envServer>>;
  beforeAll(async () => {
    srv = await envServer();
  });
  afterAll(async () => {
    await srv?.close();
  });
  afterEach(() => {
    srv.seen.length = 0;
  });

  it.each([
    ['an object {K: V}', { env: { CXG_CHILD_KEY: 'per-workspace-key', EXTRA_ONE: 'one' } }],
    ['a list ["K=V"]', { env: ['CXG_CHILD_KEY=per-workspace-key', 'EXTRA_ONE=one'] }],
  ])('POSTs {workspace_id} as JSON; env as %s reaches the spawn config, over the static key', async (_shape, answer) => {
    srv.answer = json(200, answer);
    const { log, lines } = recordingLogger();
    const build = gatewayConfigBuilder({ model: MODEL, envUrl: srv.url, log, env: GATEWAY_ENV });
    const cfg = await build('tok', { workspaceId: 'cb-ws' });
    expect(srv.seen).toEqual([{ method: 'POST', contentType: 'application/json', body: { workspace_id: 'cb-ws' } }]);
    const env = entries(cfg.env);
    expect(env).toMatchObject({ EXTRA_ONE: 'one', CODEX_INTERNAL_APP_SERVER_REMOTE_CONTROL_DISABLED: '1' });
    // Later entries win when the child env is built: the per-workspace key is last.
    const keys = (cfg.env ?? []).filter((e) => e.startsWith('CXG_CHILD_KEY='));
    expect(keys.at(-1)).toBe('CXG_CHILD_KEY=per-workspace-key');
    expect(lines.filter((l) => l.level >= 40)).toEqual([]);
  });

  const failures: Array<[string, Answer]> = [
    ['a 500', json(500, { error: 'boom' })],
    ['a 404', json(404, {})],
    ['a body that is not JSON', (_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('not json')],
    ['no env in the answer', json(200, { nothing: true })],
    ['env entries that are not NAME=value', json(200, { env: ['NOEQUALS', 'GOOD=1'] })],
    ['env names that are not variable names', json(200, { env: { 'BAD-NAME': 'x' } })],
    ['env values that are objects', json(200, { env: { NESTED: { a: 1 } } })],
  ];
  it.each(failures)('%s › falls back to the static key and logs a warning', async (_what, answer) => {
    srv.answer = answer;
    const { log, lines } = recordingLogger();
    const build = gatewayConfigBuilder({ model: MODEL, envUrl: srv.url, log, env: GATEWAY_ENV });
    const cfg = await build('tok', { workspaceId: 'cb-fail' });
    const env = entries(cfg.env);
    expect(env.CXG_CHILD_KEY).toBe('static-key');
    expect(Object.keys(env).sort()).toEqual(['CODEX_INTERNAL_APP_SERVER_REMOTE_CONTROL_DISABLED', 'CXG_CHILD_KEY']);
    const warn = lines.find((l) => l.level === 40);
    expect(warn).toMatchObject({ workspaceId: 'cb-fail', msg: expect.stringContaining('falling back to the static key') as string });
  });

  it('connection refused › falls back to the static key and logs a warning', async () => {
    const closed = await envServer();
    const url = closed.url;
    await closed.close();
    const { log, lines } = recordingLogger();
    const cfg = await gatewayConfigBuilder({ model: MODEL, envUrl: url, log, env: GATEWAY_ENV })('tok', { workspaceId: 'cb-refused' });
    expect(entries(cfg.env).CXG_CHILD_KEY).toBe('static-key');
    expect(lines.some((l) => l.level === 40 && String(l.err).length > 0)).toBe(true);
  });

  it('an endpoint that does not answer in time › falls back after timeoutMs and logs a warning', async () => {
    srv.answer = () => {};
    const { log, lines } = recordingLogger();
    const t0 = Date.now();
    const cfg = await gatewayConfigBuilder({ model: MODEL, envUrl: srv.url, log, env: GATEWAY_ENV, timeoutMs: 300 })('tok', { workspaceId: 'cb-slow' });
    // The endpoint never answers: anything finite is the timeout at work; generous for a loaded machine.
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(entries(cfg.env).CXG_CHILD_KEY).toBe('static-key');
    expect(lines.some((l) => l.level === 40)).toBe(true);
  });

  it('without a static key and with a failing endpoint › no key at all (and a warning), never an empty one', async () => {
    srv.answer = json(500, {});
    const { log, lines } = recordingLogger();
    const cfg = await gatewayConfigBuilder({ model: MODEL, envUrl: srv.url, log, env: {} })('tok', { workspaceId: 'cb-nokey' });
    expect(entries(cfg.env).CXG_CHILD_KEY).toBeUndefined();
    expect(lines.some((l) => l.level === 40)).toBe(true);
  });

  it('CXG_INTERNAL_URL is passed when internalUrl gives one, and not otherwise', async () => {
    const { log } = recordingLogger();
    let internal: string | undefined = 'http://127.0.0.1:4321';
    const build = gatewayConfigBuilder({ model: MODEL, log, env: GATEWAY_ENV, internalUrl: () => internal });
    expect(entries((await build('tok', { workspaceId: 'cb-int' })).env).CXG_INTERNAL_URL).toBe('http://127.0.0.1:4321');
    internal = undefined;
    expect(entries((await build('tok', { workspaceId: 'cb-int' })).env).CXG_INTERNAL_URL).toBeUndefined();
    expect(entries((await gatewayConfigBuilder({ model: MODEL, log, env: GATEWAY_ENV })('tok', { workspaceId: 'cb-int' })).env).CXG_INTERNAL_URL).toBeUndefined();
  });

  it('renders a config the supervisor accepts: model, provider, headless features', async () => {
    const { log } = recordingLogger();
    const cfg = await gatewayConfigBuilder({ model: { ...MODEL, reasoningEffort: 'low' }, log, env: GATEWAY_ENV })('tok', { workspaceId: 'cb-render' });
    expect(cfg.config).toMatchObject({ model: 'gpt-test', modelProvider: 'mock', modelReasoningEffort: 'low' });
    expect(cfg.config.modelProviders?.mock).toMatchObject({ baseUrl: MODEL.baseUrl, envKey: 'CXG_CHILD_KEY', wireApi: 'responses' });
  });

  describe('through the Supervisor: the child sees the env', () => {
    let t: TestSupervisor;
    beforeAll(async () => {
      t = await startTestSupervisor();
    });
    afterAll(async () => {
      await t?.close();
    });

    it.each([
      ['{K: V}', { env: { CXG_CHILD_KEY: 'ws-key-1', CXG_PER_WS: 'a' } }],
      ['["K=V"]', { env: ['CXG_CHILD_KEY=ws-key-1', 'CXG_PER_WS=a'] }],
    ])('env as %s from the endpoint is in the child environment, with CXG_INTERNAL_URL', async (shape, answer) => {
      srv.answer = json(200, answer);
      const { log } = recordingLogger();
      const id = `cb-sup-${shape === '{K: V}' ? 'obj' : 'list'}`;
      const h = await t.sup.ensureSubprocess({ workspaceId: id }, gatewayConfigBuilder({ model: MODEL, envUrl: srv.url, log, env: GATEWAY_ENV, internalUrl: () => 'http://127.0.0.1:7777' }));
      const env = await childEnvOf(h);
      expect(env).toMatchObject({ CXG_CHILD_KEY: 'ws-key-1', CXG_PER_WS: 'a', CXG_INTERNAL_URL: 'http://127.0.0.1:7777' });
      expect(srv.seen.at(-1)?.body).toEqual({ workspace_id: id });
      await t.sup.shutdown({ workspaceId: id });
    });

    it('a failing endpoint still starts the child, with the static key', async () => {
      srv.answer = json(200, { env: ['NOT VALID'] });
      const { log, lines } = recordingLogger();
      const h = await t.sup.ensureSubprocess({ workspaceId: 'cb-sup-fallback' }, gatewayConfigBuilder({ model: MODEL, envUrl: srv.url, log, env: GATEWAY_ENV }));
      expect((await childEnvOf(h)).CXG_CHILD_KEY).toBe('static-key');
      expect(lines.some((l) => l.level === 40)).toBe(true);
      await t.sup.shutdown({ workspaceId: 'cb-sup-fallback' });
    });
  });
});
