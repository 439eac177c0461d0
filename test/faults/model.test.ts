/**
 * Scenario 5: random interleavings (fast-check) of ensure, touch, shutdown,
 * child crash (SIGKILL), reaper ticks and object-store outages (the file
 * store's directory replaced by a file, so uploads fail into the spool and
 * downloads fail) over three keys, one at a time or
 * two or three at once, against a fake codex (the light stand-in of
 * light-codex.ts: nothing here talks to the children). After every step the
 * invariants of ARCHITECTURE.md are checked from the outside:
 *
 * - at most one live process per key (/proc: processes whose cwd is in a
 *   home of the key), and it is the one the model expects;
 * - one home per key on disk, at its one stable path (invariant 3): nothing
 *   else in the key's directory between steps (no download, no second home);
 * - loopback tokens of dead children do not resolve, the live child's does;
 * and at the end of each run every marker written into a home is there
 * after a final ensure (invariants 2 and 4).
 *
 * A failure prints fast-check's seed and counterexample (the program of
 * steps); replay it with CXG_FAULTS_MODEL_SEED=<seed>. CXG_FAULTS_MODEL_RUNS=250 (with a
 * larger --testTimeout) searches longer; the run stops after 90 s anyway.
 */
import { mkdir, rename, rm, rmdir, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildHandle, ConfigBuilder } from 'codex-app-gateway';
import { homeDirs, homeState, spawnConfig, startTestSupervisor, tempDir, waitFor } from '../helpers.js';
import type { TestSupervisor } from '../helpers.js';
import { writeLightCodex } from './light-codex.js';
import { killGroups, killLeftovers, MarkerLedger, processesPerWorkspace, recordLost } from './markers.js';

const KEYS = 3;
const NUM_RUNS = Number(process.env.CXG_FAULTS_MODEL_RUNS ?? 50);
/**
 * A hang stops the property here rather than at the test timeout; it is not
 * a measure of speed (fewer than NUM_RUNS runs fails the test). On a two-core
 * machine shared with other test runs, 90 s held only 19 of the 50 runs.
 */
const MODEL_TIME_LIMIT_MS = 360_000;
const MAX_STEPS = 20;

type Op =
  | { kind: 'ensure'; key: number }
  | { kind: 'touch'; key: number }
  | { kind: 'shutdown'; key: number }
  | { kind: 'crash'; key: number }
  | { kind: 'reap'; idleAfterMs: number }
  | { kind: 'storeDown' }
  | { kind: 'storeUp' };

/** One step: a single op, or a few sent at once without waiting in between. */
type Step = Op[];

const keyArb = fc.integer({ min: 0, max: KEYS - 1 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: keyArb.map((key): Op => ({ kind: 'ensure', key })) },
  { weight: 1, arbitrary: keyArb.map((key): Op => ({ kind: 'touch', key })) },
  { weight: 2, arbitrary: keyArb.map((key): Op => ({ kind: 'shutdown', key })) },
  { weight: 2, arbitrary: keyArb.map((key): Op => ({ kind: 'crash', key })) },
  { weight: 1, arbitrary: fc.constantFrom(0, 3_600_000).map((idleAfterMs): Op => ({ kind: 'reap', idleAfterMs })) },
  { weight: 1, arbitrary: fc.constantFrom<Op>({ kind: 'storeDown' }, { kind: 'storeUp' }) },
);
const stepArb: fc.Arbitrary<Step> = fc.oneof({ weight: 4, arbitrary: opArb.map((op) => [op]) }, { weight: 1, arbitrary: fc.array(opArb, { minLength: 2, maxLength: 3 }) });
const programArb = fc.array(stepArb, { minLength: 1, maxLength: MAX_STEPS, size: 'medium' });

function describeStep(step: Step): string {
  return step.map((op) => (op.kind === 'reap' ? `reap(${op.idleAfterMs})` : 'key' in op ? `${op.kind}(${op.key})` : op.kind)).join(' ∥ ');
}

describe('fault: random interleavings against the invariants', () => {
  let t: TestSupervisor;
  let binDir: string;
  const pids = new Set<number>();

  beforeAll(async () => {
    binDir = await tempDir('cxg-faults-bin-');
    // Crashes here are the point, not a reason to back off. Nothing talks to
    // the children, so the light stand-in does (half the CPU per start).
    t = await startTestSupervisor({ codexBin: await writeLightCodex(binDir), shards: 2, stopGraceMs: 2000, crashLoop: { threshold: 1_000_000 }, spoolRetryBaseMs: 100, spoolRetryMaxMs: 400 });
    // The store directory is a symbolic link, so an outage is one atomic
    // rename that points it at a file (see storeDown): no upload running at
    // that moment can recreate the directory halfway through.
    // The supervisor made the (empty) directory at start; it becomes the link.
    await rmdir(t.storeDir);
    await mkdir(`${t.storeDir}.real`, { recursive: true });
    await writeFile(`${t.storeDir}.down`, 'the object store is down');
    await symlink(`${t.storeDir}.real`, t.storeDir);
  });
  afterAll(async () => {
    await storeUp();
    await t?.close();
    killGroups(pids);
    if (t !== undefined) await killLeftovers(t.homeRoot);
    if (binDir !== undefined) await rm(binDir, { recursive: true, force: true });
  });

  /**
   * The store is down while its link points at a file (uploads and downloads
   * fail with ENOTDIR). Changes are applied one after another, in the order
   * the steps asked for them (a step may take it down and up at once).
   */
  let storeIsDown = false;
  /** Counts outages begun, so a start can tell whether one overlapped it. */
  let outages = 0;
  let storeChanges: Promise<void> = Promise.resolve();
  function setStore(down: boolean): Promise<void> {
    storeChanges = storeChanges.then(async () => {
      if (storeIsDown === down) return;
      storeIsDown = down;
      if (down) outages++;
      await rm(`${t.storeDir}.next`, { force: true });
      await symlink(down ? `${t.storeDir}.down` : `${t.storeDir}.real`, `${t.storeDir}.next`);
      await rename(`${t.storeDir}.next`, t.storeDir);
    });
    return storeChanges;
  }
  const storeDown = (): Promise<void> => setStore(true);
  const storeUp = (): Promise<void> => setStore(false);

  it(`scenario 5: random interleavings of ensure / touch / shutdown / crash / reaper ticks / store outages over ${KEYS} keys (fast-check, ${NUM_RUNS} runs): the invariants hold after every step`, async ({ task }) => {
    let runs = 0;
    let written = 0;
    let lost = 0;
    let stepsRun = 0;

    const property = fc.asyncProperty(programArb, async (program) => {
      // Per run: a marker lost in one run must not fail the runs (and shrinks) after it.
      let runLost = 0;
      const run = ++runs;
      const keys = Array.from({ length: KEYS }, (_, i) => `model-r${run}-k${i}`);
      const ledger = new MarkerLedger();
      /** The model: the child each key should have now. */
      const live = new Map<string, ChildHandle>();
      const handles = new Map<string, ChildHandle>();
      /** Every loopback token handed to a builder in this run, with its key. */
      const tokens: Array<{ token: string; key: string }> = [];
      const build: ConfigBuilder = (token, { workspaceId }) => {
        tokens.push({ token, key: workspaceId });
        return spawnConfig();
      };
      let markers = 0;
      const history: string[] = [];

      const ensure = async (key: string): Promise<ChildHandle | undefined> => {
        const down = storeIsDown;
        const outagesBefore = outages;
        let h: ChildHandle;
        try {
          h = await t.sup.ensureSubprocess({ workspaceId: key }, build);
        } catch (err) {
          // With the store down a start that needs a download fails, cleanly; never otherwise.
          const code = (err as { code?: string }).code ?? '';
          const overlapped = down || storeIsDown || outages !== outagesBefore;
          if (overlapped && code.startsWith('GW_STORE')) return undefined;
          throw err;
        }
        handles.set(h.generation, h);
        pids.add(h.pid);
        return h;
      };
      const mark = async (key: string, h: ChildHandle): Promise<void> => {
        await ledger.write(key, h.codexHome, `m/${++markers}.txt`, `${key} marker ${markers} in ${h.generation}`);
      };

      /** Runs one op; returns the handle an ensure got. */
      const exec = async (op: Op): Promise<ChildHandle | undefined> => {
        if (op.kind === 'reap') {
          const stopped = await t.sup.reapIdle({ idleAfterMs: op.idleAfterMs, hardIdleAfterMs: op.idleAfterMs });
          for (const r of stopped) {
            if (!keys.includes(r.workspaceId)) throw new Error(`the reaper stopped ${r.workspaceId}, which is not part of this run`);
          }
          return undefined;
        }
        if (op.kind === 'storeDown') {
          await storeDown();
          return undefined;
        }
        if (op.kind === 'storeUp') {
          await storeUp();
          return undefined;
        }
        const key = keys[op.key] as string;
        switch (op.kind) {
          case 'ensure':
            return ensure(key);
          case 'touch':
            t.sup.touch({ workspaceId: key });
            return undefined;
          case 'shutdown':
            await t.sup.shutdown({ workspaceId: key });
            return undefined;
          case 'crash': {
            const h = live.get(key);
            if (h === undefined) return undefined;
            try {
              process.kill(h.pid, 'SIGKILL');
            } catch {
              // Already gone (a concurrent stop).
            }
            await h.done();
            return undefined;
          }
        }
      };

      /** The model after a step, read from the supervisor: the live child of each key. */
      const resync = async (): Promise<void> => {
        for (const key of keys) {
          const st = await t.sup.workspaceStatus({ workspaceId: key });
          if (st === undefined) {
            live.delete(key);
            continue;
          }
          if (st.state !== 'running') throw new Error(`${key} is ${st.state} after a step ended`);
          const h = handles.get(st.generation);
          if (h === undefined) throw new Error(`${key} runs generation ${st.generation}, which no ensure returned`);
          live.set(key, h);
        }
      };

      const check = async (where: string): Promise<void> => {
        const fail = (what: string): never => {
          throw new Error(`${what}\n  after step ${where}\n  history:\n    ${history.join('\n    ')}`);
        };
        const procs = await processesPerWorkspace(t.homeRoot);
        for (const key of keys) {
          const h = live.get(key);
          const running = procs.get(key) ?? [];
          if (running.length > 1) fail(`${key}: ${running.length} live processes (${running.join(', ')})`);
          const expected = h === undefined ? [] : [h.pid];
          if (running.join() !== expected.join()) fail(`${key}: live processes [${running.join(', ')}], the model expects [${expected.join(', ')}]`);
          if (h !== undefined && !h.isAlive()) fail(`${key}: the live child's handle says it exited`);
          const dirs = await homeDirs(t.homeRoot, key);
          if (dirs.some((d) => d !== 'codex-home')) fail(`${key}: more than its one home on disk (${dirs.join(', ')})`);
          if (h !== undefined && h.codexHome !== path.join(t.homeRoot, key, 'codex-home')) fail(`${key}: the live child's home ${h.codexHome} is not the key's stable home`);
        }
        for (const { token, key } of tokens) {
          const got = await t.sup.lookupWorkspaceForLoopbackToken(token);
          if (got !== undefined && got !== key) fail(`a token of ${key} resolves to ${got}`);
        }
        for (const key of keys) {
          const resolving = [];
          for (const x of tokens.filter((x) => x.key === key)) if ((await t.sup.lookupWorkspaceForLoopbackToken(x.token)) === key) resolving.push(x);
          const want = live.has(key) ? 1 : 0;
          if (resolving.length !== want) fail(`${key}: ${resolving.length} loopback tokens resolve, expected ${want} (${live.has(key) ? 'one live child' : 'no live child'})`);
        }
      };

      const unsaved: string[] = [];
      try {
        for (const [i, step] of program.entries()) {
          const where = `${i + 1}/${program.length} (${describeStep(step)})`;
          history.push(where);
          const got = await Promise.all(step.map(exec));
          await resync();
          stepsRun++;
          // Markers go into the live home of each key an ensure of this step returned.
          for (const h of got) {
            if (h !== undefined && live.get(h.workspaceId) === h) await mark(h.workspaceId, h);
          }
          await check(where);
        }
      } finally {
        // The store comes back; every marker must be there after a final ensure; then the run's keys are stopped.
        await storeUp();
        for (const key of keys) {
          const h = await ensure(key);
          const missing = h === undefined ? ledger.markers(key).map(([rel]) => rel) : await ledger.missing(key, h.codexHome);
          runLost += missing.length;
          lost += missing.length;
          if (missing.length > 0) history.push(`LOST ${key}: ${missing.join(', ')}`);
          const r = await t.sup.shutdown({ workspaceId: key });
          if (r.stopped && !r.saved) unsaved.push(`${key}: not saved with the store up: ${r.error ?? '?'}`);
        }
        written += ledger.count;
      }
      if (unsaved.length > 0) throw new Error(unsaved.join('; '));
      await waitFor(async () => (await t.sup.stats()).every((x) => x.spool.length === 0), 10_000, 'the spool to drain');
      const procs = await processesPerWorkspace(t.homeRoot);
      for (const key of keys) {
        if (procs.has(key)) throw new Error(`${key}: processes left after the run: ${(procs.get(key) ?? []).join(', ')}`);
        const st = await homeState(t.homeRoot, key);
        if (st !== undefined && !st.stored) throw new Error(`${key}: an unsaved home left after the run`);
      }
      if (runLost > 0) throw new Error(`markers lost:\n  ${history.join('\n  ')}`);
    });

    const t0 = Date.now();
    try {
      await fc.assert(property, { numRuns: NUM_RUNS, ...(process.env.CXG_FAULTS_MODEL_SEED === undefined ? {} : { seed: Number(process.env.CXG_FAULTS_MODEL_SEED) }), plugins: [fc.interruptAfterTimeLimit(MODEL_TIME_LIMIT_MS)] });
    } finally {
      recordLost(task, lost);
      console.log(`scenario 5: ${runs} runs, ${stepsRun} steps, ${written} markers, lost ${lost}, ${Date.now() - t0} ms`);
    }
    expect(runs).toBeGreaterThanOrEqual(NUM_RUNS);
    expect(lost).toBe(0);
  }, MODEL_TIME_LIMIT_MS + 60_000);
});
