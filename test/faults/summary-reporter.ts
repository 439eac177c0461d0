/**
 * Prints the fault-injection suite's last line:
 *
 *     faults: <N> scenarios, <P> passed, lost <L>[, <U> not counted]
 *
 * Only tests under test/faults count, so the reporter also works when the
 * whole suite runs. Tests are grouped by the `scenario N:` that starts their
 * name: a scenario passed when every one of its tests that ran passed (and
 * at least one ran). `lost` adds up the markers each scenario recorded as
 * not surviving (task meta `lost`). A test that ran without a count (it
 * broke before it could count, or its count failed: task meta `uncounted`,
 * or no meta at all) adds nothing to `lost`; it is listed on its own line
 * above the summary with its reason, and the summary says how many, so a
 * `lost 0` never hides a scenario that could not count. A fault file that
 * failed to load counts as one failed scenario.
 */
import path from 'node:path';
import type { Reporter, TestModule } from 'vitest/node';
import './markers.js';

const SCENARIO = /^scenario (\d+)\b/i;

export interface FaultSummary {
  scenarios: number;
  passed: number;
  lost: number;
  /** Tests that ran but have no loss count, with the reason. */
  uncounted: Array<{ test: string; why: string }>;
}

function isFaultModule(m: TestModule): boolean {
  const rel = path.relative(process.cwd(), m.moduleId).split(path.sep).join('/');
  return rel.startsWith('test/faults/');
}

interface Tally {
  ran: number;
  failed: number;
}

export function summarize(testModules: ReadonlyArray<TestModule>): FaultSummary {
  const scenarios = new Map<string, Tally>();
  const tally = (key: string): Tally => {
    const t = scenarios.get(key) ?? { ran: 0, failed: 0 };
    scenarios.set(key, t);
    return t;
  };
  let lost = 0;
  const uncounted: FaultSummary['uncounted'] = [];
  for (const m of testModules.filter(isFaultModule)) {
    const tests = [...m.children.allTests()];
    if (tests.length === 0 || m.errors().length > 0) {
      // Failed to load, or broke outside any test: its scenarios cannot be told apart.
      tally(`file ${path.basename(m.moduleId)}`).failed += 1;
    }
    for (const t of tests) {
      const state = t.result().state;
      const s = tally(SCENARIO.exec(t.name)?.[1] ?? t.fullName);
      // A skipped test (a filtered run) neither passes nor fails its scenario;
      // a scenario with nothing run does not pass.
      if (state === 'skipped') continue;
      s.ran += 1;
      if (state !== 'passed') s.failed += 1;
      const meta = t.meta();
      if (meta.lost !== undefined) lost += meta.lost;
      else uncounted.push({ test: t.fullName, why: meta.uncounted ?? 'it recorded no count' });
    }
  }
  const passed = [...scenarios.values()].filter((s) => s.ran > 0 && s.failed === 0).length;
  return { scenarios: scenarios.size, passed, lost, uncounted };
}

export default class FaultSummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    // A run without any fault file (one unit test, say) has nothing to report.
    if (!testModules.some(isFaultModule)) return;
    const s = summarize(testModules);
    for (const u of s.uncounted) process.stdout.write(`faults: not counted: ${u.test}: ${u.why}\n`);
    const uncounted = s.uncounted.length > 0 ? `, ${s.uncounted.length} not counted` : '';
    process.stdout.write(`faults: ${s.scenarios} scenarios, ${s.passed} passed, lost ${s.lost}${uncounted}\n`);
  }
}
