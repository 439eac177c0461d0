/**
 * CrashLoopGuard with an injected clock: when a workspace is held back, for
 * how long, and what lets it go again.
 */
import { describe, expect, it } from 'vitest';
import { CrashLoopGuard } from '../../src/shared/crash-loop.js';
import type { CrashLoopOptions } from '../../src/shared/crash-loop.js';
import { GatewayError } from '../../src/shared/errors.js';

const OPTS: CrashLoopOptions = { threshold: 3, windowMs: 10_000, backoffBaseMs: 1000, backoffMaxMs: 8000 };

function guard(o: Partial<CrashLoopOptions> = {}): { g: CrashLoopGuard; clock: { now: number } } {
  const clock = { now: 1_000_000 };
  return { g: new CrashLoopGuard({ ...OPTS, ...o }, () => clock.now), clock };
}

/** The GW_CRASH_LOOP error `check` throws, or undefined when the start is allowed. */
function refusal(g: CrashLoopGuard, id: string): GatewayError | undefined {
  try {
    g.check(id);
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(GatewayError);
    return err as GatewayError;
  }
}

describe('CrashLoopGuard', () => {
  it('threshold › failures below the threshold never hold a start back', () => {
    const { g } = guard();
    g.failed('w');
    g.failed('w');
    expect(g.failures('w')).toBe(2);
    expect(refusal(g, 'w')).toBeUndefined();
  });

  it('threshold › the threshold-th failure in a row backs off for backoffBaseMs, with GW_CRASH_LOOP and retryAfterMs', () => {
    const { g, clock } = guard();
    for (let i = 0; i < 3; i++) g.failed('w');
    const err = refusal(g, 'w');
    expect(err?.code).toBe('GW_CRASH_LOOP');
    expect(err?.details).toMatchObject({ retryAfterMs: 1000, failures: 3 });
    clock.now += 400;
    expect(refusal(g, 'w')?.details).toMatchObject({ retryAfterMs: 600 });
    clock.now += 600;
    expect(refusal(g, 'w')).toBeUndefined();
  });

  it('keys are independent › one workspace backing off does not hold back another', () => {
    const { g } = guard();
    for (let i = 0; i < 3; i++) g.failed('a');
    g.failed('b');
    expect(refusal(g, 'a')?.code).toBe('GW_CRASH_LOOP');
    expect(refusal(g, 'b')).toBeUndefined();
  });

  it('backoff › doubles with each further failure and stops at backoffMaxMs', () => {
    const { g, clock } = guard();
    const waits: number[] = [];
    for (let i = 0; i < 9; i++) {
      g.failed('w');
      const err = refusal(g, 'w');
      waits.push(err === undefined ? 0 : (err.details?.retryAfterMs as number));
      // Each failure happens after the previous backoff has passed.
      clock.now += 60_000;
    }
    expect(waits).toEqual([0, 0, 1000, 2000, 4000, 8000, 8000, 8000, 8000]);
  });

  it('backoff › a huge failure count neither overflows nor passes the cap', () => {
    const { g } = guard({ backoffMaxMs: 5 * 60_000 });
    for (let i = 0; i < 5000; i++) g.failed('w');
    const wait = refusal(g, 'w')?.details?.retryAfterMs as number;
    expect(Number.isFinite(wait)).toBe(true);
    expect(wait).toBe(5 * 60_000);
  });

  it('window › an exit shorter than windowMs counts as a failure; one at windowMs or later clears the record', () => {
    const { g } = guard();
    g.exited('w', 9_999);
    g.exited('w', 10);
    expect(g.failures('w')).toBe(2);
    g.exited('w', 10_000);
    expect(g.failures('w')).toBe(0);
    // "In a row": the run that lived long broke the streak.
    g.exited('w', 1);
    g.exited('w', 1);
    expect(refusal(g, 'w')).toBeUndefined();
    g.exited('w', 1);
    expect(refusal(g, 'w')?.code).toBe('GW_CRASH_LOOP');
  });

  it('reset › a healthy run clears a workspace that was backing off, so it starts at once and a new streak starts from zero', () => {
    const { g, clock } = guard();
    for (let i = 0; i < 5; i++) g.failed('w');
    expect(refusal(g, 'w')?.details).toMatchObject({ retryAfterMs: 4000 });
    g.healthy('w');
    expect(g.failures('w')).toBe(0);
    expect(refusal(g, 'w')).toBeUndefined();
    clock.now += 1;
    for (let i = 0; i < 3; i++) g.failed('w');
    expect(refusal(g, 'w')?.details).toMatchObject({ retryAfterMs: 1000 });
  });

  it('message › says how many failures and when the next start is allowed', () => {
    const { g } = guard({ backoffBaseMs: 2500 });
    for (let i = 0; i < 3; i++) g.failed('ws-x');
    expect(refusal(g, 'ws-x')?.message).toMatch(/ws-x failed 3 times in a row; next start allowed in 3 s/);
  });
});
