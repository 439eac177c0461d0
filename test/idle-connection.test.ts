/**
 * A client that says nothing for longer than every idle timeout on its path
 * still has a working workspace: the front's uWS `idleTimeout` (made short
 * here through `limits.idleTimeoutSeconds`; uWS pings a quiet client before
 * it, and ws answers), the shard's ws connection to the child (no timeout of
 * its own), and codex's own connection (the pinned binary neither pings nor
 * drops a connection that stays quiet: checked by hand for 200 s, after which
 * it still answered). After the quiet spell a turn runs to completion. A
 * connection that did drop fails the test with the close code it got.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_FRONT_LIMITS } from 'codex-app-gateway';
import { AppServerClient } from './fixtures/app-server-client.js';
import { realCodexBin } from './fixtures/codex-home.js';
import { startResponsesMock } from './fixtures/responses-mock.js';
import type { ResponsesMock } from './fixtures/responses-mock.js';
import { startTestGateway } from './gateway-helpers.js';
import type { TestGateway } from './gateway-helpers.js';
import { rejection, spawnConfig, waitFor } from './helpers.js';

/** The shortest idle timeout uWS takes. */
const FRONT_IDLE_S = 8;
/** Idle timeouts of the front the quiet spell lasts at least. */
const SPELLS = 2;

describe('a quiet client connection (real codex)', () => {
  let mock: ResponsesMock;
  let t: TestGateway;
  beforeAll(async () => {
    mock = await startResponsesMock({ deltas: ['Still', ' here', ' after', ' the', ' quiet.'] });
    t = await startTestGateway(
      { limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 64 * 1024 * 1024, idleTimeoutSeconds: FRONT_IDLE_S } },
      { codexBin: realCodexBin(), configBuilder: () => spawnConfig({}, mock.baseUrl) },
    );
  });
  afterAll(async () => {
    await t?.close();
    await mock?.close();
  });

  it(`held without a frame for ${SPELLS} of the front's idle timeouts (${FRONT_IDLE_S} s; it pings), the child connection as long: a turn still runs`, async () => {
    const c = await AppServerClient.connect(t.url, { token: await t.token('quiet-client') });
    try {
      await c.initialize();
      const threadId = await c.startThread();
      await c.waitForNotification('thread/started');
      const quietSince = Date.now();
      const framesBefore = c.notifications.length;
      // The quiet spell ends on an event, not a sleep: a ping of the front's that comes after it.
      const spellMs = SPELLS * FRONT_IDLE_S * 1000;
      await waitFor(() => c.pings.some((at) => at - quietSince > spellMs) || !c.isOpen, spellMs + 30_000, `a ping from the gateway ${spellMs} ms into the quiet`);
      const quietMs = Date.now() - quietSince;
      if (!c.isOpen) {
        const closed = await c.whenClosed();
        throw new Error(`the quiet connection was closed after ${quietMs} ms with ${closed.code} ${JSON.stringify(closed.reason)}`);
      }
      // Quiet both ways: the child sent nothing either, so its connection was idle as long.
      expect(c.notifications.slice(framesBefore).map((n) => n.method)).toEqual([]);
      expect(quietMs).toBeGreaterThan(spellMs);
      console.log(`quiet client: ${quietMs} ms without a frame, ${c.pings.length} pings answered, then a turn`);

      const turn = await c.runTurn(threadId, 'are you still there?');
      expect(turn.status).toBe('completed');
      expect(turn.text).toBe('Still here after the quiet.');
      const status = await t.gw.sup.workspaceStatus({ workspaceId: 'quiet-client' });
      expect(status).toMatchObject({ state: 'running', clients: 1 });
    } finally {
      await c.close();
    }
  }, 120_000);

  it.each([7, 961, 1.5, -1])('limits.idleTimeoutSeconds %s › GW_BAD_OPTIONS (uWS would abort the process)', async (idleTimeoutSeconds) => {
    const err = await rejection(startTestGateway({ limits: { ...DEFAULT_FRONT_LIMITS, maxFrameBytes: 1024 * 1024, idleTimeoutSeconds } }));
    expect(err.code).toBe('GW_BAD_OPTIONS');
    expect(err.message).toContain('idleTimeoutSeconds');
  });
});
