/**
 * The spool as an operator sees it in stats(): what is waiting, how big,
 * since when, how many attempts; retried with backoff until the store is
 * back, then uploaded and removed.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { SpoolStatus } from 'codex-app-gateway';
import { countingBuilder, homeState, startTestSupervisor, waitFor } from '../helpers.js';
import { breakableStore, readInHome, writeInHome } from './helpers.js';

describe('spool', () => {
  it('a failed upload shows in stats() with bytes, since, attempts and the error; retries back off; once the store is back it is uploaded and marked stored', async () => {
    const base = 200;
    const t = await startTestSupervisor({ spoolRetryBaseMs: base, spoolRetryMaxMs: 2 * base });
    const store = breakableStore(t.storeDir);
    const spool = async (): Promise<SpoolStatus[]> => (await t.sup.stats()).flatMap((s) => s.spool);
    try {
      const id = 'sp-a';
      const h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      await writeInHome(h, 'big.txt', 'x'.repeat(20_000));
      await writeInHome(h, 'state.txt', 'unsaved');
      await store.down();
      const t0 = Date.now();
      const r = await t.sup.shutdown({ workspaceId: id });
      expect(r).toMatchObject({ stopped: true, saved: false, spooledDir: h.codexHome });

      await waitFor(async () => ((await spool())[0]?.bytes ?? 0) > 0, 5000, 'bytes to be counted');
      const firstAt = Date.now();
      const [first] = await spool();
      expect(first).toMatchObject({ workspaceId: id, dir: h.codexHome });
      expect(first?.bytes).toBeGreaterThanOrEqual(20_000 + 'unsaved'.length);
      expect(first?.since).toBeGreaterThanOrEqual(t0 - 5);
      expect(first?.since).toBeLessThanOrEqual(Date.now());
      expect(first?.attempts).toBeGreaterThanOrEqual(1);
      expect(first?.lastError).toMatch(/GW_STORE/);

      // Retries happen, spaced by the backoff (at most one per base/2 ms), and `since` does not move.
      // Watched for at least 1.5 s and until two more attempts have failed: each one packs the home,
      // which a loaded machine can make slower than the backoff itself.
      let later: SpoolStatus | undefined;
      await waitFor(
        async () => {
          [later] = await spool();
          return Date.now() - firstAt >= 1500 && (later?.attempts ?? 0) >= (first?.attempts ?? 0) + 2;
        },
        30_000,
        'two more attempts',
      );
      const watchedMs = Date.now() - firstAt;
      expect(later?.attempts).toBeGreaterThanOrEqual((first?.attempts ?? 0) + 2);
      expect(later?.attempts).toBeLessThanOrEqual((first?.attempts ?? 0) + Math.ceil(watchedMs / (base / 2)));
      expect(later?.since).toBe(first?.since);
      // Between attempts the next one is scheduled, within the backoff's cap (2 × base).
      // The figure is checked from the read that saw it: a second read can land in the attempt itself.
      let nextRetryAt: number | undefined;
      let readAt = 0;
      let answeredAt = 0;
      await waitFor(
        async () => {
          readAt = Date.now();
          nextRetryAt = (await spool())[0]?.nextRetryAt;
          answeredAt = Date.now();
          return nextRetryAt !== undefined;
        },
        5000,
        'a retry to be scheduled',
      );
      expect(nextRetryAt).toBeGreaterThan(readAt - 2 * base);
      expect(nextRetryAt).toBeLessThanOrEqual(answeredAt + 2 * base);
      expect(existsSync(h.codexHome)).toBe(true);

      await store.up();
      await waitFor(async () => (await spool()).length === 0, 10_000, 'the spool to drain');
      expect(await homeState(t.homeRoot, id)).toMatchObject({ stored: true });
      expect(existsSync(path.join(t.storeDir, `${id}.tar.gz`))).toBe(true);
      const h2 = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      expect(await readInHome(h2, 'state.txt')).toBe('unsaved');
    } finally {
      await store.up();
      await t.close();
    }
  });

  it('a start while its home is spooled takes the spooled home (the newest state), and the spool entry is gone', async () => {
    const t = await startTestSupervisor({ spoolRetryBaseMs: 60_000, spoolRetryMaxMs: 60_000 });
    const store = breakableStore(t.storeDir);
    try {
      const id = 'sp-b';
      let h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      await writeInHome(h, 'state.txt', 'v1');
      expect((await t.sup.shutdown({ workspaceId: id })).saved).toBe(true);
      h = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      await writeInHome(h, 'state.txt', 'v2');
      await store.down();
      expect((await t.sup.shutdown({ workspaceId: id })).saved).toBe(false);
      await store.up();
      const h2 = await t.sup.ensureSubprocess({ workspaceId: id }, countingBuilder());
      expect(await readInHome(h2, 'state.txt')).toBe('v2');
      expect((await t.sup.stats()).flatMap((s) => s.spool)).toEqual([]);
    } finally {
      await store.up();
      await t.close();
    }
  });
});
