/**
 * Loopback tokens, on the real internal API and the fake codex: a child's
 * X-Loopback-Token names its workspace from the child's first moment (the
 * shard registers its digest with the main thread before it spawns) until
 * its process is gone: stopped, crashed, reaped, or its shard worker dead.
 * After a handover restart the adopted child's token resolves in the
 * gateway that adopted it, and no longer in the one that let it go.
 */
import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import { FileObjectStore, Supervisor } from 'codex-app-gateway';
import type { ChildHandle } from 'codex-app-gateway';
import { TokenRegistry } from '../src/main/supervisor/token-registry.js';
import { tokenKey } from '../src/shared/secrets.js';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { closeOf, openWs, rpc, startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { countingBuilder, processAlive, quietLogger, spawnConfig, tempDir } from './helpers.js';

interface FakeInfo {
  pid: number;
  env: Record<string, string>;
  startCall?: { status: number; body: { workspace_id?: string } | null };
}

/** Ends a shard's worker thread the way a crash would (test-only reach into the supervisor). */
async function killShard(sup: Supervisor, index: number): Promise<void> {
  const refs = (sup as unknown as { shards: { refs: Array<{ worker: Worker }> } }).shards.refs;
  await refs[index]?.worker.terminate();
}

/** A workspace id that the gateway's hash puts on `shard`. */
function idOnShard(sup: Supervisor, shard: number, prefix: string): string {
  for (let i = 0; ; i++) if (sup.shardFor(`${prefix}-${i}`) === shard) return `${prefix}-${i}`;
}

describe('TokenRegistry › ownership by shard worker', () => {
  const a = 'a'.repeat(64);
  const b = 'b'.repeat(64);
  const keyA = tokenKey(a);
  const keyB = tokenKey(b);

  it('a forget from another worker of the shard (a late one from a dead worker) leaves the entry; its own removes it', () => {
    const r = new TokenRegistry();
    r.register(keyA, 'ws-a', 0, 1);
    r.forget(keyA, 0, 0);
    r.forget(keyA, 1, 1);
    expect(r.lookup(a)).toBe('ws-a');
    r.forget(keyA, 0, 1);
    expect(r.lookup(a)).toBeUndefined();
  });

  it('a shard\'s death drops its entries only; a registration by the new worker replaces the owner', () => {
    const r = new TokenRegistry();
    r.register(keyA, 'ws-a', 0, 0);
    r.register(keyB, 'ws-b', 1, 0);
    r.forgetShard(0);
    expect([r.lookup(a), r.lookup(b)]).toEqual([undefined, 'ws-b']);
    r.register(keyA, 'ws-a', 0, 1);
    r.forget(keyA, 0, 0);
    expect(r.lookup(a)).toBe('ws-a');
  });

  it.each([['an empty key', ''], ['a short key', keyA.slice(1)], ['upper-case hex', keyA.toUpperCase()]])('refuses to register %s: only SHA-256 digests are kept', (_what, key) => {
    expect(() => new TokenRegistry().register(key, 'ws', 0, 0)).toThrow(/SHA-256/);
  });
});

describe('loopback tokens (fake codex, internal API)', () => {
  let t: TestGateway;
  beforeAll(async () => {
    t = await startTestGateway();
  });
  afterAll(async () => {
    await t?.close();
  });

  /** The status /internal/connected answers for this token. */
  async function connectedStatus(token: string): Promise<number> {
    const r = await fetch(`${t.internalUrl}/internal/connected`, { headers: { 'x-loopback-token': token } });
    await r.body?.cancel();
    return r.status;
  }

  /** A live child of the workspace: its client, the fake's info, and a handle that settles when the process exits. */
  async function child(workspaceId: string): Promise<{ ws: WebSocket; info: FakeInfo; token: string; handle: ChildHandle }> {
    const ws = await openWs(t.url, await t.token(workspaceId));
    const info = await rpc<FakeInfo>(ws, 'fake/info');
    // The child runs: this returns its handle without a new start.
    const handle = await t.gw.sup.ensureSubprocess({ workspaceId }, countingBuilder());
    expect(handle.pid).toBe(info.pid);
    return { ws, info, token: info.env.CXG_LOOPBACK_TOKEN as string, handle };
  }

  it('a child that calls the internal API before its banner is answered for its own workspace', async () => {
    const id = 'ws-first-call';
    t.childEnv.set(id, [`FAKE_CODEX_CALL_AT_START=${t.internalUrl}/internal/connected`]);
    const c = await child(id);
    expect(c.info.startCall).toMatchObject({ status: 200, body: { workspace_id: id } });
    expect(await connectedStatus(c.token)).toBe(200);
    c.ws.close();
  });

  it('stopped, crashed, reaped › the token stops resolving once its process is gone', async () => {
    const stopped = await child('ws-token-stop');
    const crashed = await child('ws-token-crash');
    const reaped = await child('ws-token-reap');
    for (const c of [stopped, crashed, reaped]) expect(await connectedStatus(c.token)).toBe(200);

    expect(await t.gw.sup.shutdown({ workspaceId: 'ws-token-stop' })).toMatchObject({ stopped: true });
    expect(await t.gw.sup.lookupWorkspaceForLoopbackToken(stopped.token)).toBeUndefined();
    expect(await connectedStatus(stopped.token)).toBe(401);

    process.kill(crashed.info.pid, 'SIGKILL');
    await crashed.handle.done();
    // Its token was forgotten before the exit was reported (one port, in order).
    expect(await t.gw.sup.lookupWorkspaceForLoopbackToken(crashed.token)).toBeUndefined();
    expect(await connectedStatus(crashed.token)).toBe(401);

    reaped.ws.close();
    await closeOf(reaped.ws);
    const reapedIds = (await t.gw.sup.reapIdle({ idleAfterMs: 0, hardIdleAfterMs: 0 })).map((r) => r.workspaceId);
    expect(reapedIds).toContain('ws-token-reap');
    expect(reaped.handle.isAlive()).toBe(false);
    expect(await t.gw.sup.lookupWorkspaceForLoopbackToken(reaped.token)).toBeUndefined();
    expect(await connectedStatus(reaped.token)).toBe(401);
  });

  it('shard worker death › its children\'s tokens go at once, the other shard\'s stay; the new worker\'s children register', async () => {
    const sup = t.gw.sup;
    const onDead = await child(idOnShard(sup, 0, 'ws-token-dead'));
    const onOther = await child(idOnShard(sup, 1, 'ws-token-other'));
    const died = once(sup, 'shard-died');
    const restarted = once(sup, 'shard-restarted');
    await killShard(sup, 0);
    await died;
    expect(await sup.lookupWorkspaceForLoopbackToken(onDead.token)).toBeUndefined();
    expect(await sup.lookupWorkspaceForLoopbackToken(onOther.token)).toBe(onOther.handle.workspaceId);
    await restarted;
    const again = await child(onDead.handle.workspaceId);
    expect(again.token).not.toBe(onDead.token);
    expect(await connectedStatus(again.token)).toBe(200);
    expect(await connectedStatus(onDead.token)).toBe(401);
    for (const c of [onOther, again]) c.ws.close();
  });
});

describe('loopback tokens across a handover restart (fake codex)', () => {
  it('the adopted child\'s token resolves in the successor, and no longer in the predecessor; stopped, it goes', async () => {
    const root = await tempDir('cxg-tokens-handover-');
    const base = {
      codexBin: fakeCodexBin(),
      homeRoot: path.join(root, 'homes'),
      store: new FileObjectStore(path.join(root, 'store')),
      shards: 2,
      logger: quietLogger,
      stopGraceMs: 2000,
      readyTimeoutMs: 15_000,
      handover: true,
    };
    const id = 'ws-token-handover';
    let token = '';
    let pid: number | undefined;
    let successor: Supervisor | undefined;
    try {
      const first = await Supervisor.start(base);
      const h = await first.ensureSubprocess({ workspaceId: id }, (tok) => {
        token = tok;
        return spawnConfig();
      });
      pid = h.pid;
      expect(await first.lookupWorkspaceForLoopbackToken(token)).toBe(id);
      const records = await first.handover();
      expect(records.map((r) => r.pid)).toEqual([pid]);
      expect(await first.lookupWorkspaceForLoopbackToken(token)).toBeUndefined();

      successor = await Supervisor.start({ ...base, adopt: records });
      // Waits for the shard's adoption; the adopted child is returned, not a new one.
      const adopted = await successor.ensureSubprocess({ workspaceId: id }, countingBuilder());
      expect(adopted.pid).toBe(pid);
      expect(await successor.lookupWorkspaceForLoopbackToken(token)).toBe(id);

      expect(await successor.shutdown({ workspaceId: id })).toMatchObject({ stopped: true });
      expect(await successor.lookupWorkspaceForLoopbackToken(token)).toBeUndefined();
    } finally {
      await successor?.close();
      if (pid !== undefined && processAlive(pid)) process.kill(-pid, 'SIGKILL');
      await rm(root, { recursive: true, force: true });
    }
  });
});
