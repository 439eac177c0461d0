/**
 * Scenario 3: the real codex child is SIGKILLed mid-session, with a turn in
 * flight. The client sees close 1011; the gateway stores the dead child's
 * home (invariant 4) before the next start (invariant 2), so a reconnect gets
 * the workspace back with its state: a marker file and a finished thread.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AppServerClient } from '../fixtures/app-server-client.js';
import { realCodexBin } from '../fixtures/codex-home.js';
import { startResponsesMock } from '../fixtures/responses-mock.js';
import type { ResponsesMock } from '../fixtures/responses-mock.js';
import { startTestGateway } from '../gateway-helpers.js';
import type { TestGateway } from '../gateway-helpers.js';
import { spawnConfig, waitFor } from '../helpers.js';
import { countLosses, explained, groupsUnder, isRunning, killGroups, killLeftovers, recordedChildPid } from './markers.js';
import { MARKER_FILE, whatComesBack } from './what-comes-back.js';

describe('fault: the codex child is SIGKILLed mid-session (real codex)', () => {
  let mock: ResponsesMock;
  let g: TestGateway;
  /** Turns after the first hang before any output until released. */
  let release: () => void = () => {};
  const held = new Promise<void>((r) => (release = r));
  let turns = 0;
  const pids = new Set<number>();

  beforeAll(async () => {
    mock = await startResponsesMock({
      deltas: ['State', ' survives', ' a', ' crash.'],
      beforeOutput: () => (++turns === 1 ? Promise.resolve() : held),
    });
    g = await startTestGateway({}, { codexBin: realCodexBin(), configBuilder: () => spawnConfig({}, mock.baseUrl), stopGraceMs: 3000 });
  });
  afterAll(async () => {
    release();
    await g?.close();
    await mock?.close();
    killGroups(pids);
    if (g !== undefined) await killLeftovers(g.homeRoot);
  });

  it('scenario 3: child SIGKILLed mid-turn → the client gets 1011; a reconnect gets the workspace with its marker and thread', async (ctx) => {
    const losses = countLosses(ctx);
    const id = 'sigkill-child';
    const token = await g.token(id);
    const c = await AppServerClient.connect(g.url, { token });
    const init = await explained('initialize', c, c.initialize());
    const home = init.codexHome;
    expect(home.startsWith(path.join(g.homeRoot, id))).toBe(true);
    const threadId = await explained('thread/start', c, c.startThread());
    const turn = await explained('the first turn', c, c.runTurn(threadId, 'remember this'));
    expect(turn.status).toBe('completed');
    expect(turn.text).toBe('State survives a crash.');
    const marker = `${id} marker ${Date.now()}`;
    await writeFile(path.join(home, MARKER_FILE), marker);
    // What the reconnect below saw, or, when the test broke before it, what a new client sees.
    let seen: { marker: string | undefined; threads: string[]; continued?: boolean } | undefined;
    losses.countWith(async () => {
      if (seen === undefined) {
        seen = await whatComesBack(g.url, token);
      }
      return (seen.marker === marker ? 0 : 1) + (seen.threads.includes(threadId) ? 0 : 1) + (seen.continued === false ? 1 : 0);
    });

    const pid = (await recordedChildPid(home)) as number;
    expect(pid).toBeGreaterThan(0);
    pids.add(pid);
    expect((await g.gw.sup.workspaceStatus({ workspaceId: id }))?.pid).toBe(pid);

    // A second turn is in flight (the mock holds its output) when the child dies.
    const closed = c.whenClosed();
    const inFlight = c.request('turn/start', { threadId, input: [{ type: 'text', text: 'this turn dies', text_elements: [] }] }).catch((e: unknown) => e);
    await waitFor(() => turns === 2, 20_000, 'the second turn to reach the model');
    process.kill(pid, 'SIGKILL');

    const close = await closed;
    expect(close.code).toBe(1011);

    // Reconnect at once, as a client does on 1011: a new child, in the same
    // home (invariant 3), which the dead one's stop stored first.
    const c2 = await AppServerClient.connect(g.url, { token });
    const init2 = await explained('initialize after the reconnect', c2, c2.initialize());
    await inFlight;
    expect(await isRunning(pid)).toBe(false);
    expect(init2.codexHome).toBe(home);
    const pid2 = (await recordedChildPid(init2.codexHome)) as number;
    pids.add(pid2);
    expect(pid2).not.toBe(pid);
    expect(await groupsUnder(path.join(g.homeRoot, id))).toEqual([pid2]);
    const markerBack = await readFile(path.join(init2.codexHome, MARKER_FILE), 'utf8').catch(() => undefined);
    const threads = await explained('thread/list after the reconnect', c2, c2.listThreads());
    // Listed is not enough: the thread resumes and takes a new turn.
    release();
    const resumed = await c2.request('thread/resume', { threadId }).then(
      () => true,
      () => false,
    );
    const next = resumed ? await explained('a turn after the crash', c2, c2.runTurn(threadId, 'and on')) : undefined;
    seen = { marker: markerBack, threads: threads.map((th) => th.id), continued: next?.status === 'completed' };
    await c2.close();

    expect(markerBack).toBe(marker);
    expect(threads.map((th) => th.id)).toContain(threadId);
    expect(next?.text).toBe('State survives a crash.');
  }, 90_000);
});
