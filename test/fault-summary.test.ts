/**
 * The fault suite's own bookkeeping: `countLosses` counts however a scenario
 * ends, and the summary line never shows `lost 0` for a scenario that could
 * not count. Pins the hole where a scenario that failed before its count
 * contributed 0 to `lost`.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TaskMeta } from 'vitest';
import type { TestModule } from 'vitest/node';
import { countLosses } from './faults/markers.js';
import { summarize } from './faults/summary-reporter.js';

/** A test context whose end is run by hand: `finish` plays vitest's `onTestFinished` with the given outcome. */
function fakeContext(): {
  ctx: Parameters<typeof countLosses>[0];
  meta: TaskMeta;
  finish(outcome: 'pass' | 'fail', message?: string): Promise<Error | undefined>;
} {
  const meta: TaskMeta = {};
  const task: { meta: TaskMeta; result?: { state?: string; errors?: Array<{ message?: string }> } } = { meta };
  const hooks: Array<() => Promise<void>> = [];
  return {
    ctx: { task, onTestFinished: (fn) => void hooks.push(fn) },
    meta,
    async finish(outcome, message = 'expected 1011 to be 1001') {
      task.result = outcome === 'pass' ? { state: 'pass' } : { state: 'fail', errors: [{ message }] };
      for (const fn of hooks.reverse()) {
        try {
          await fn();
        } catch (err) {
          return err as Error;
        }
      }
      return undefined;
    },
  };
}

describe('countLosses', () => {
  it('a scenario that fails after writing still reports what it lost (the count runs after the failure)', async () => {
    const f = fakeContext();
    const losses = countLosses(f.ctx);
    let counted = false;
    losses.countWith(() => {
      counted = true;
      return Promise.resolve(2);
    });
    // The body fails here, at a check before any count of its own.
    const err = await f.finish('fail');
    expect(counted).toBe(true);
    expect(f.meta).toEqual({ lost: 2 });
    expect(err?.message).toMatch(/lost 2/);
  });

  it('a passing scenario that lost nothing records 0; one that lost something fails', async () => {
    const ok = fakeContext();
    countLosses(ok.ctx).countWith(() => Promise.resolve(0));
    expect(await ok.finish('pass')).toBeUndefined();
    expect(ok.meta).toEqual({ lost: 0 });

    const bad = fakeContext();
    countLosses(bad.ctx).countWith(() => Promise.resolve(1));
    expect((await bad.finish('pass'))?.message).toMatch(/lost 1/);
    expect(bad.meta).toEqual({ lost: 1 });
  });

  it('a scenario that failed before naming its counter is uncounted, with the reason, never 0', async () => {
    const f = fakeContext();
    countLosses(f.ctx);
    await f.finish('fail', 'connect ECONNREFUSED\nstack');
    expect(f.meta.lost).toBeUndefined();
    expect(f.meta.uncounted).toBe('failed before it had written anything to count: connect ECONNREFUSED');
  });

  it('a counter that throws or hangs leaves the scenario uncounted and fails it', async () => {
    const thrown = fakeContext();
    countLosses(thrown.ctx).countWith(() => Promise.reject(new Error('no gateway is running to ask')));
    expect((await thrown.finish('pass'))?.message).toMatch(/could not count the losses: no gateway is running to ask/);
    expect(thrown.meta).toEqual({ uncounted: 'its count failed: no gateway is running to ask' });

    const hung = fakeContext();
    countLosses(hung.ctx, 50).countWith(() => new Promise<number>(() => {}));
    expect((await hung.finish('pass'))?.message).toMatch(/could not count the losses: no progress within 50 ms/);
    expect(hung.meta.uncounted).toMatch(/^its count failed: no progress within 50 ms/);
  });

  it('settle() counts before a cleanup; the end of the test reports that count without counting again', async () => {
    const f = fakeContext();
    const losses = countLosses(f.ctx);
    let calls = 0;
    losses.countWith(() => Promise.resolve(++calls - 1));
    await losses.settle();
    expect(await f.finish('pass')).toBeUndefined();
    expect(calls).toBe(1);
    expect(f.meta).toEqual({ lost: 0 });
  });
});

describe('fault summary', () => {
  type FakeTest = { name: string; state: 'passed' | 'failed' | 'skipped'; meta: TaskMeta };
  const module = (file: string, tests: FakeTest[]): TestModule =>
    ({
      moduleId: path.join(process.cwd(), file),
      errors: () => [],
      children: {
        *allTests() {
          for (const t of tests) yield { name: t.name, fullName: `fault > ${t.name}`, result: () => ({ state: t.state }), meta: () => t.meta };
        },
      },
    }) as unknown as TestModule;

  it('adds up counted losses, lists uncounted scenarios apart, and ignores files outside test/faults', () => {
    const s = summarize([
      module('test/faults/a.test.ts', [
        { name: 'scenario 1: counted', state: 'passed', meta: { lost: 0 } },
        { name: 'scenario 2: lost one', state: 'failed', meta: { lost: 1 } },
        { name: 'scenario 3: broke early', state: 'failed', meta: { uncounted: 'failed before it had written anything to count: boom' } },
        { name: 'scenario 4: no meta at all', state: 'passed', meta: {} },
        { name: 'scenario 5: filtered out', state: 'skipped', meta: {} },
      ]),
      module('test/other.test.ts', [{ name: 'scenario 9: not a fault file', state: 'failed', meta: {} }]),
    ]);
    expect(s).toEqual({
      scenarios: 5,
      passed: 2,
      lost: 1,
      uncounted: [
        { test: 'fault > scenario 3: broke early', why: 'failed before it had written anything to count: boom' },
        { test: 'fault > scenario 4: no meta at all', why: 'it recorded no count' },
      ],
    });
  });
});
