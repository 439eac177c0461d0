/**
 * The set-up of fault scenarios that run the gateway as a real process with
 * the real codex: a Responses mock, a temp directory, gateway configs in it,
 * and, after the suite, every gateway, child group and leftover process
 * killed and the directory removed. Call inside a `describe`.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { TEST_API_KEY } from '../fixtures/codex-home.js';
import { startResponsesMock } from '../fixtures/responses-mock.js';
import type { ResponsesMock } from '../fixtures/responses-mock.js';
import { GATEWAY_KEY_ENV, realCodexToml, writeConfig } from '../gateway-process.js';
import type { GatewayProcess } from '../gateway-process.js';
import { tempDir } from '../helpers.js';
import { killGroups, killLeftovers } from './markers.js';

export const FAULT_SECRET = 'faults-secret-faults-secret-faults-secret-00';

/** Generous for a loaded machine; the drain budget is a scenario's own when it tests one. */
const EXTRA = ['[spawn]', 'stop_grace = "3s"', 'ready_timeout = "15s"', '[shutdown]', 'budget = "30s"'];

export interface FaultGateways {
  /** Set in beforeAll. */
  mock?: ResponsesMock;
  /** Set in beforeAll ('' before). */
  dir: string;
  /** Every gateway a scenario started: SIGKILLed after the suite. */
  readonly gateways: GatewayProcess[];
  /** Child process groups to kill after the suite. */
  readonly pids: Set<number>;
  readonly env: NodeJS.ProcessEnv;
  /**
   * A gateway config whose data lives at `root` (default: the suite's
   * directory, config `gateway.toml`; a name gives `<dir>/<name>` and
   * `<dir>/<name>.toml`).
   */
  configIn(name?: string): Promise<{ config: string; root: string }>;
}

export function useFaultGateways(prefix: string, deltas: string[]): FaultGateways {
  const fx: FaultGateways = {
    dir: '',
    gateways: [],
    pids: new Set<number>(),
    env: { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' },
    async configIn(name?: string): Promise<{ config: string; root: string }> {
      if (fx.mock === undefined) throw new Error('configIn before the suite started');
      const root = name === undefined ? fx.dir : path.join(fx.dir, name);
      const file = name === undefined ? path.join(fx.dir, 'gateway.toml') : `${root}.toml`;
      const config = await writeConfig(file, realCodexToml({ dir: root, secret: FAULT_SECRET, mockBaseUrl: fx.mock.baseUrl, extra: EXTRA }));
      return { config, root };
    },
  };
  beforeAll(async () => {
    fx.mock = await startResponsesMock({ deltas });
    fx.dir = await tempDir(prefix);
  });
  afterAll(async () => {
    for (const gw of fx.gateways) await gw.stop('SIGKILL');
    killGroups(fx.pids);
    if (fx.dir !== '') await killLeftovers(fx.dir);
    await fx.mock?.close();
    if (fx.dir !== '') await rm(fx.dir, { recursive: true, force: true });
  });
  return fx;
}
