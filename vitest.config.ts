import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// Tests exercise the built package (dist/): shard and archive workers are
// plain JavaScript files started with worker_threads, which Vite does not
// transform. `npm test` builds first.
export default defineConfig({
  resolve: {
    alias: {
      'codex-app-gateway': fileURLToPath(new URL('./dist/index.js', import.meta.url)),
    },
  },
  test: {
    pool: 'forks',
    include: ['test/**/*.test.ts'],
    // The fault suite's last line (`faults: N scenarios, N passed, lost L`)
    // ends every run that includes test/faults, `npm test` as well.
    reporters: ['default', './test/faults/summary-reporter.ts'],
    // Each run gets its own temp dir and ends with a check that no process
    // it started is alive and no temp dir is left (test/leak-check.ts).
    globalSetup: ['./test/leak-check.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
  },
});
