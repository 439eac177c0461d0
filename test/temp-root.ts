/**
 * Where a test run keeps its temporary files, and how its processes are
 * recognised. The global setup (test/leak-check.ts) gives each run its own
 * directory and marker and checks at the end that the run left nothing
 * behind; every test puts its temp dirs under `testTempRoot()`.
 */
import os from 'node:os';
import path from 'node:path';

/** Names this run in the environment of the test workers and everything they start. */
export const RUN_ENV = 'CXG_TEST_RUN';
/** The run's own temp directory (set by the global setup). */
export const TMP_ROOT_ENV = 'CXG_TEST_TMP_ROOT';

/**
 * All tests' temp dirs go below this. Not under /tmp: codex refuses to
 * create its helper links under a temp dir. Without the global setup (a
 * test file imported elsewhere) it falls back to the shared base.
 */
export function testTempRoot(): string {
  return process.env[TMP_ROOT_ENV] ?? testTempBase();
}

/** The shared base under which each run makes its own directory. */
export function testTempBase(): string {
  return path.join(os.homedir(), '.cache', 'cxg-tests');
}
