/**
 * What a handover trusts: the records a predecessor sends are checked field
 * by field (a malformed one is left to recovery, never adopted), and the
 * settings check refuses restart.handover where adoption cannot work.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseHandoverRecords } from '../src/shared/handover.js';
import type { HandoverRecord } from '../src/shared/handover.js';
import { GatewayError } from '../src/shared/errors.js';
import { loadSettings } from '../src/main/settings/load.js';
import { testTempRoot } from './temp-root.js';

const GOOD: HandoverRecord = {
  workspaceId: 'ws-1',
  generation: 'g00000000a-abcdef',
  pid: 4242,
  startTicks: 123456,
  wsUrl: 'ws://127.0.0.1:40000/',
  httpUrl: 'http://127.0.0.1:40000',
  wsToken: 'A'.repeat(43),
  loopbackToken: 'f'.repeat(64),
  lastActivity: 1_700_000_000_000,
  startedAt: 1_700_000_000_000,
};

describe('parseHandoverRecords', () => {
  it('keeps a well-formed record as it is', () => {
    expect(parseHandoverRecords([GOOD, { ...GOOD, workspaceId: 'ws-2', prestartedActivity: 5 }])).toEqual({ records: [GOOD, { ...GOOD, workspaceId: 'ws-2', prestartedActivity: 5 }], refused: 0 });
  });

  it.each<[string, unknown]>([
    ['a workspace id that is a path', { ...GOOD, workspaceId: '../etc' }],
    ['a workspace id of dots', { ...GOOD, workspaceId: '..' }],
    ['pid 1', { ...GOOD, pid: 1 }],
    ['a pid that is not an integer', { ...GOOD, pid: 12.5 }],
    ['no start time', { ...GOOD, startTicks: undefined }],
    ['a ws URL off loopback', { ...GOOD, wsUrl: 'ws://10.0.0.2:40000/' }],
    ['an http URL with a path', { ...GOOD, httpUrl: 'http://127.0.0.1:40000/x' }],
    ['a token with spaces', { ...GOOD, wsToken: 'a b c d e f g h i j k l m n o p' }],
    ['a short loopback token', { ...GOOD, loopbackToken: 'abc' }],
    ['a generation with a slash', { ...GOOD, generation: 'g/1' }],
    ['not an object', 'ws-1'],
    ['null', null],
  ])('refuses %s', (_name, bad) => {
    expect(parseHandoverRecords([bad, GOOD])).toEqual({ records: [GOOD], refused: 1 });
  });

  it('refuses a second record of one workspace, and anything that is not a list', () => {
    expect(parseHandoverRecords([GOOD, { ...GOOD, pid: 4343 }])).toEqual({ records: [GOOD], refused: 1 });
    expect(parseHandoverRecords({ 0: GOOD })).toEqual({ records: [], refused: 0 });
  });
});

describe('restart.handover › settings it cannot work with are refused', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(testTempRoot(), 'cxg-handover-settings-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const base = { CXG_AUTH_JWT_SECRET: 'an-hs256-key-of-at-least-32-characters', CXG_RESTART_HANDOVER: 'true', CXG_DATA_DIR: 'data' };

  it.each<[string, NodeJS.ProcessEnv, RegExp]>([
    ['internal.port 0', { CXG_LISTEN_PORT: '0' }, /restart\.handover: needs a fixed internal\.port/],
    ['the bubblewrap sandbox', { CXG_SPAWN_SANDBOX: 'bubblewrap' }, /restart\.handover: not with spawn\.sandbox/],
    ['[cluster]', { CXG_CLUSTER_ETCD_ENDPOINTS: 'http://127.0.0.1:2379' }, /restart\.handover: not with \[cluster\]/],
  ])('%s', async (_name, env, message) => {
    const err = await loadSettings({ argv: [], env: { ...base, ...env }, cwd: dir }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(GatewayError);
    expect((err as GatewayError).code).toBe('GW_SETTINGS');
    expect((err as GatewayError).message).toMatch(message);
  });

  it('is accepted with a fixed internal.port and no sandbox or cluster (the default)', async () => {
    const s = await loadSettings({ argv: [], env: base, cwd: dir });
    expect(s.restart.handover).toBe(true);
    expect(s.internal.port).not.toBe(0);
  });
});
