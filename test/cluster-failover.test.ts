/**
 * Failover with the real codex, the gateways run as pods would
 * (test/fixtures/pod.ts): each in its own mount namespace with its own homes
 * at one `homes.root` path, all sharing one store and one real etcd.
 *
 * - A node SIGKILLed (three nodes, S3 through s3rver): within lease_ttl and
 *   a bounded margin the workspace runs on another node, and the thread
 *   resumes with every stored turn and takes a new one. When the dead node
 *   comes back, its recovery stores the unsaved turn of a workspace nobody
 *   took over, and sets aside (never uploads over) the unsaved turn of one
 *   whose new owner stored newer state.
 * - A node frozen past its lease (SIGSTOP, two nodes, the file store):
 *   another takes over and a turn lands; woken (SIGCONT), the old owner
 *   stops its child and its late upload is stored but never current.
 *
 * Timings are bounds that catch a hang, never verdicts: lease_ttl is 3 s and
 * a takeover may take up to lease_ttl + 20 s on a loaded machine.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signWorkspaceToken } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { TEST_API_KEY } from './fixtures/codex-home.js';
import { TestEtcd } from './fixtures/etcd.js';
import { PodCluster } from './fixtures/pod.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { startS3rver } from './fixtures/s3rver.js';
import type { S3rverHandle } from './fixtures/s3rver.js';
import { GATEWAY_KEY_ENV, realCodexToml } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';
import { admin, closeText, clusterLines, etcdRecords, runningOn, within } from './cluster-helpers.js';
import { waitFor } from './helpers.js';
import { isRunning, recordedChildPid } from './faults/markers.js';

const SECRET = 'failover-secret-failover-secret-failover-01';
const DELTAS = ['Carried', ' over', ' to', ' another', ' node.'];
const LEASE_TTL_MS = 3000;
/** How long a takeover may take before the test calls it a hang. */
const TAKEOVER_BOUND_MS = LEASE_TTL_MS + 20_000;

interface Cluster {
  etcd: TestEtcd;
  pods: PodCluster;
  /** Starts (or starts again) node `name` of the cluster. */
  start(name: string): Promise<GatewayProcess>;
}

/** Etcd, the Responses mock, the store and the pods of one suite, all ended after it. */
function useCluster(prefix: string, store: 'file' | 's3'): Cluster {
  let mock: ResponsesMock | undefined;
  let s3: S3rverHandle | undefined;
  const fx = {
    start: async (name: string): Promise<GatewayProcess> => {
      let env: NodeJS.ProcessEnv = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
      let storeLines = ['[store]', `url = ${JSON.stringify(pathToFileURL(path.join(fx.pods.dir, 'store')).href)}`];
      if (s3 !== undefined) {
        storeLines = ['[store]', `url = "s3://${s3.bucket}/failover"`, '[store.s3]', `endpoint = ${JSON.stringify(s3.endpoint)}`, 'force_path_style = true'];
        env = { ...env, AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey };
      }
      return await fx.pods.start(
        name,
        (p) =>
          realCodexToml({
            dir: p.dataDir,
            secret: SECRET,
            mockBaseUrl: (mock as ResponsesMock).baseUrl,
            extra: [
              '[homes]',
              `root = ${JSON.stringify(p.homesRoot)}`,
              ...storeLines,
              '[spawn]',
              'stop_grace = "3s"',
              'ready_timeout = "30s"',
              ...clusterLines({ nodeId: name, endpoint: fx.etcd.endpoint, prefix: '/failover/', leaseTtl: `${LEASE_TTL_MS / 1000}s` }),
            ],
          }),
        env,
      );
    },
  } as Cluster;
  beforeAll(async () => {
    fx.etcd = await TestEtcd.start();
    mock = await startResponsesMock({ deltas: DELTAS });
    if (store === 's3') s3 = await startS3rver();
    fx.pods = await PodCluster.create(prefix);
  });
  afterAll(async () => {
    try {
      await fx.pods?.close();
    } finally {
      await mock?.close();
      await s3?.dispose();
      await fx.etcd?.close();
    }
  });
  return fx;
}

async function tokenFor(workspaceId: string): Promise<string> {
  return await signWorkspaceToken({ secret: SECRET, workspaceId, expiresIn: '30m' });
}

/** A client of `workspaceId` on `gw`, initialized: served there. */
async function openOn(gw: GatewayProcess, workspaceId: string): Promise<AppServerClient> {
  const c = await AppServerClient.connect(gw.url, { token: await tokenFor(workspaceId) });
  try {
    await within(c.initialize(), 60_000, `${workspaceId} to start`);
    return c;
  } catch (err) {
    await c.close();
    throw err;
  }
}

/** A client served by `gw`, or undefined while the workspace is owned elsewhere (any other refusal fails the test). */
async function servedBy(gw: GatewayProcess, workspaceId: string): Promise<AppServerClient | undefined> {
  const c = await AppServerClient.connect(gw.url, { token: await tokenFor(workspaceId) });
  const closed = c.whenClosed();
  try {
    await within(c.initialize(), 60_000, `${workspaceId} to start or be refused`);
    return c;
  } catch (err) {
    const how = await within(closed, 10_000, 'the refused client to be closed').catch(() => undefined);
    await c.close();
    if (how !== undefined && /GW_OWNED_ELSEWHERE/.test(how.reason)) return undefined;
    throw new Error(`not served and not owned elsewhere: ${how === undefined ? (err as Error).message : closeText(how)}`, { cause: err });
  }
}

/** Waits until `gw` serves the workspace (it took it over); returns the client and how long it took. */
async function takenOverBy(gw: GatewayProcess, workspaceId: string, since: number): Promise<{ client: AppServerClient; ms: number }> {
  let client: AppServerClient | undefined;
  await waitFor(async () => (client = await servedBy(gw, workspaceId)) !== undefined, TAKEOVER_BOUND_MS + 60_000, `${workspaceId} to be taken over`);
  return { client: client as AppServerClient, ms: Date.now() - since };
}

/** Which of `prompts` the thread holds as turns, in its order. */
async function heldTurns(c: AppServerClient, threadId: string, prompts: readonly string[]): Promise<string[]> {
  const read = await c.request<{ thread: { turns: Array<{ items: Array<{ type: string }> }> } }>('thread/read', { threadId, includeTurns: true });
  return read.thread.turns.map((t) => {
    const asked = JSON.stringify(t.items.filter((i) => i.type === 'userMessage'));
    return prompts.find((p) => asked.includes(p)) ?? `(unknown turn: ${asked.slice(0, 80)})`;
  });
}

/** Resumes the thread on `c`, checks it holds `expected`, runs `next` as a new turn. */
async function resumeAndGoOn(c: AppServerClient, threadId: string, expected: string[], next: string, prompts: readonly string[]): Promise<void> {
  const resumed = await c.request<{ thread: { id: string } }>('thread/resume', { threadId });
  expect(resumed.thread.id).toBe(threadId);
  expect(await heldTurns(c, threadId, prompts)).toEqual(expected);
  const turn = await c.runTurn(threadId, next, 60_000);
  expect(turn.status).toBe('completed');
  expect(turn.deltas).toEqual(DELTAS);
}

/** Stops the workspace on `gw` through the admin API; its home is stored (made current). */
async function storeNow(gw: GatewayProcess, workspaceId: string): Promise<void> {
  const stop = await admin(gw, `/admin/workspaces/${workspaceId}/shutdown`, 'POST');
  expect(stop.status).toBe(200);
  expect(stop.body).toMatchObject({ saved: true });
}

/** A first thread of `workspaceId` on `gw`: one turn, stored; then the workspace runs again and takes `unstored`, not stored. */
async function storedThenUnstored(gw: GatewayProcess, workspaceId: string, stored: string, unstored: string): Promise<{ threadId: string; client: AppServerClient }> {
  let c = await openOn(gw, workspaceId);
  const threadId = await c.startThread();
  expect((await c.runTurn(threadId, stored, 60_000)).status).toBe('completed');
  await c.close();
  await storeNow(gw, workspaceId);
  c = await openOn(gw, workspaceId);
  await resumeAndGoOn(c, threadId, [stored], unstored, [stored, unstored]);
  return { threadId, client: c };
}

/** Whether any file under `dir` contains `text` (codex's session logs hold each turn's prompt). */
async function holdsText(dir: string, text: string): Promise<boolean> {
  for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const data = await fs.readFile(path.join(e.parentPath, e.name), 'utf8').catch(() => '');
    if (data.includes(text)) return true;
  }
  return false;
}

/** The gateway's last log lines, for a failure message. */
function tail(gws: GatewayProcess[]): string {
  return gws.map((g) => g.logs.slice(-15).map((l) => JSON.stringify(l)).join('\n')).join('\n---\n');
}

describe('cluster failover: a node SIGKILLed (real codex, three pods, S3 store)', () => {
  const cl = useCluster('cxg-failover-kill-', 's3');

  it('the workspace runs on another node within lease_ttl + margin and resumes every stored turn; the dead node comes back, stores what nobody else did, and never overwrites newer state', async () => {
    const X = 'failover-kill';
    const Y = 'failover-kill-alone';
    const [a, b, c] = (await Promise.all(['a', 'b', 'c'].map((n) => cl.start(n)))) as [GatewayProcess, GatewayProcess, GatewayProcess];
    const P = ['turn 1 on a, stored', 'turn 2 on a, never stored', 'turn 3 on b after the takeover', 'turn 4 on c'] as const;
    const PY = ['y turn on a, never stored', 'y turn on c'] as const;
    try {
      const { threadId, client: onA } = await storedThenUnstored(a, X, P[0], P[1]);
      const storedByA = (await etcdRecords(cl.etcd.endpoint, '/failover/', X)).state;
      expect(storedByA?.epoch).toBe(1);
      const y = await openOn(a, Y);
      const threadY = await y.startThread();
      expect((await y.runTurn(threadY, PY[0], 60_000)).status).toBe('completed');
      const childX = (await recordedChildPid(path.join(cl.pods.paths('a').ownHomes, X, 'codex-home'))) as number;

      // SIGKILL the owner: its children follow it (parent-death), nothing is stored.
      a.proc.kill('SIGKILL');
      expect((await a.exited).signal).toBe('SIGKILL');
      const killedAt = Date.now();
      await Promise.all([onA.whenClosed(), y.whenClosed()]);
      await waitFor(async () => !(await isRunning(childX)), 20_000, "a's child to follow it");

      // B takes X over once etcd has expired A's lease, from what A stored.
      const { client: onB, ms } = await takenOverBy(b, X, killedAt);
      console.info(`takeover after SIGKILL: ${ms} ms (lease_ttl ${LEASE_TTL_MS} ms)`);
      expect(ms).toBeLessThan(TAKEOVER_BOUND_MS);
      expect(await runningOn(b)).toEqual([X]);
      expect(await runningOn(c)).toEqual([]);
      await resumeAndGoOn(onB, threadId, [P[0]], P[2], P);
      await onB.close();
      await storeNow(b, X);
      const storedByB = (await etcdRecords(cl.etcd.endpoint, '/failover/', X)).state;
      // Epoch 2 was A's second run; B's takeover is the third.
      expect(storedByB?.epoch).toBe(3);

      // A comes back with the homes it left. Its recovery: X's unsaved run is
      // older than B's stored state, so it is set aside on A's disk (kept for
      // inspection), never uploaded; Y, which nobody took over, is stored and current.
      const a2 = await cl.start('a');
      const setAside = await a2.waitForLog((l) => l.msg === 'recovery: home is older than the stored state; set aside, not uploaded' && l.workspaceId === X, 90_000);
      await a2.waitForLog((l) => l.msg === 'home uploaded and made current' && l.workspaceId === Y, TAKEOVER_BOUND_MS + 90_000);
      const onHost = path.join(cl.pods.paths('a').ownHomes, path.relative(cl.pods.homesRoot, String(setAside.dir)));
      expect(await holdsText(onHost, P[1])).toBe(true);
      expect((await etcdRecords(cl.etcd.endpoint, '/failover/', X)).state).toEqual(storedByB);
      expect((await etcdRecords(cl.etcd.endpoint, '/failover/', Y)).state?.epoch).toBe(2);

      // On the third node: X holds turns 1 and 3 (never A's unsaved 2), Y its one turn; both go on.
      const xOnC = await openOn(c, X);
      await resumeAndGoOn(xOnC, threadId, [P[0], P[2]], P[3], P);
      await xOnC.close();
      const yOnC = await openOn(c, Y);
      await resumeAndGoOn(yOnC, threadY, [PY[0]], PY[1], PY);
      await yOnC.close();
      expect((await runningOn(c)).sort()).toEqual([X, Y]);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${tail([...cl.pods.nodes.values()])}`, { cause: err });
    }
  }, 420_000);
});

describe('cluster failover: a node frozen past its lease (real codex, two pods, file store)', () => {
  const cl = useCluster('cxg-failover-stop-', 'file');

  it('another node takes over and a turn lands; the woken owner stops its child and its late upload is stored but never current; the thread holds the new turn', async () => {
    const X = 'failover-frozen';
    const [a, b] = (await Promise.all(['a', 'b'].map((n) => cl.start(n)))) as [GatewayProcess, GatewayProcess];
    const P = ['turn 1 on a, stored', 'turn 2 on a, then frozen', 'turn 3 on b during the freeze', 'turn 4 after a woke'] as const;
    const aPid = a.proc.pid as number;
    try {
      const { threadId, client: onA } = await storedThenUnstored(a, X, P[0], P[1]);
      const childA = (await recordedChildPid(path.join(cl.pods.paths('a').ownHomes, X, 'codex-home'))) as number;

      process.kill(aPid, 'SIGSTOP');
      const frozenAt = Date.now();
      const { client: onB, ms } = await takenOverBy(b, X, frozenAt);
      console.info(`takeover after SIGSTOP: ${ms} ms (lease_ttl ${LEASE_TTL_MS} ms)`);
      expect(ms).toBeLessThan(TAKEOVER_BOUND_MS);
      await resumeAndGoOn(onB, threadId, [P[0]], P[2], P);
      await onB.close();
      await storeNow(b, X);
      const current = (await etcdRecords(cl.etcd.endpoint, '/failover/', X)).state;
      expect(current?.epoch).toBe(3);

      // A wakes: it cannot prove its lease, closes its client, stops its child; its upload is fenced.
      process.kill(aPid, 'SIGCONT');
      expect(closeText(await within(onA.whenClosed(), 30_000, "a's client to be closed"))).toMatch(/^1013 GW_OWNERSHIP_LOST/);
      await waitFor(async () => !(await isRunning(childA)), 30_000, "a's child to stop");
      const fenced = await a.waitForLog((l) => l.msg.startsWith('home uploaded but fenced') && l.workspaceId === X, 90_000);
      expect(fenced.runEpoch).toBe(2);
      // The late snapshot is in the store for inspection; the pointer still names B's.
      const objects = await fs.readdir(path.join(cl.pods.dir, 'store', X));
      expect(objects.filter((f) => f.startsWith('e000000000002-') && f.endsWith('.tar.gz'))).toHaveLength(1);
      expect(objects).toContain(`${current?.snapshot}.tar.gz`);
      expect((await etcdRecords(cl.etcd.endpoint, '/failover/', X)).state).toEqual(current);

      // Wherever the client goes now, the thread holds B's turn (not A's fenced one) and goes on.
      const again = await within(takenOverBy(a, X, Date.now()), TAKEOVER_BOUND_MS + 90_000, 'a to serve the workspace again');
      await resumeAndGoOn(again.client, threadId, [P[0], P[2]], P[3], P);
      await again.client.close();
      expect(await runningOn(b)).toEqual([]);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${tail([...cl.pods.nodes.values()])}`, { cause: err });
    }
  }, 420_000);
});
