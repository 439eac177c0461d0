/**
 * Error codes survive every path: across a thread boundary with their whole
 * cause chain, through a download whose cleanup fails too, and in the
 * spool's record of its last failure. Callers branch on `code`, so a path
 * that loses it turns a store outage into an anonymous GW_INTERNAL.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../src/shared/archive-protocol.js';
import { GatewayError, deserializeError, serializeError } from '../src/shared/errors.js';
import type { SerializedError } from '../src/shared/errors.js';
import type { ShardInit } from '../src/shared/protocol.js';
import { Home } from '../src/workers/home.js';
import { HomeStore } from '../src/workers/home-store.js';
import { Spool } from '../src/workers/spool.js';
import { makeUnwritable } from './faults/markers.js';
import { tempDir, waitFor } from './helpers.js';

const log = pino({ level: 'silent' });
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Posts `s` through a real MessagePort (structured clone, as between threads) and returns what arrives. */
async function acrossThreads(s: SerializedError): Promise<SerializedError> {
  const { port1, port2 } = new MessageChannel();
  try {
    const got = new Promise<SerializedError>((resolve) => port2.once('message', resolve));
    port1.postMessage(s);
    return await got;
  } finally {
    port1.close();
    port2.close();
  }
}

/** code: message per link of a cause chain. */
function chain(err: unknown): string[] {
  const out: string[] = [];
  for (let e = err; e instanceof Error; e = (e as { cause?: unknown }).cause) out.push(`${(e as { code?: string }).code ?? '-'}: ${e.message}`);
  return out;
}

describe('errors across threads', () => {
  const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
  it.each([
    {
      what: 'a GatewayError caused by a plain Error caused by a system error',
      err: new GatewayError('GW_STORE_UPLOAD', 'upload s3://b/ws.tar.gz', { cause: new Error('socket hang up', { cause: reset }) }),
      want: ['GW_STORE_UPLOAD: upload s3://b/ws.tar.gz', 'GW_INTERNAL: socket hang up', 'GW_INTERNAL: read ECONNRESET'],
    },
    {
      what: 'a plain Error caused by a GatewayError',
      err: new Error('pack failed', { cause: new GatewayError('GW_STORE_UNAVAILABLE', 'connect timed out') }),
      want: ['GW_INTERNAL: pack failed', 'GW_STORE_UNAVAILABLE: connect timed out'],
    },
    {
      what: 'GatewayErrors three deep',
      err: new GatewayError('GW_SPAWN_FAILED', 'a', { cause: new GatewayError('GW_HOME_UNWRITABLE', 'b', { cause: new GatewayError('GW_STORE_DOWNLOAD', 'c') }) }),
      want: ['GW_SPAWN_FAILED: a', 'GW_HOME_UNWRITABLE: b', 'GW_STORE_DOWNLOAD: c'],
    },
  ])('$what › arrives with every link, code and message', async ({ err, want }) => {
    const back = deserializeError(await acrossThreads(serializeError(err)));
    expect(chain(back)).toEqual(want);
    expect(back.describe()).toBe(`${want[0]?.split(': ')[0]}: ${want.map((l) => l.slice(l.indexOf(': ') + 2)).join(': ')}`);
  });

  it('a system error keeps its errno on every link', async () => {
    const back = deserializeError(await acrossThreads(serializeError(new GatewayError('GW_STORE_UNAVAILABLE', 'head', { cause: new Error('fetch failed', { cause: reset }) }))));
    const last = (back.cause as GatewayError).cause as GatewayError;
    expect(last.details).toEqual({ errno: 'ECONNRESET' });
  });

  it('a cyclic cause chain is cut, not followed forever', async () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    (a as { cause?: unknown }).cause = b;
    const back = deserializeError(await acrossThreads(serializeError(a)));
    expect(chain(back).length).toBeLessThanOrEqual(9);
  });
});

describe('error codes kept on the way', () => {
  it('a failed download whose cleanup fails too › the start fails with the download\'s code, not the cleanup\'s', async () => {
    const root = await tempDir('cxg-errors-');
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    let undo: (() => void) | undefined;
    cleanups.push(() => undo?.());
    const host = {
      archive: async (task: ArchiveTask): Promise<ArchiveOutcome<ArchiveValue>> => {
        // The unpack left a file behind and its directory cannot be emptied.
        const home = (task as { home: string }).home;
        await writeFile(path.join(home, 'partial.jsonl'), 'x');
        undo = makeUnwritable(home);
        return { ok: false, error: serializeError(new GatewayError('GW_ARCHIVE_INVALID', 'entry escapes the home: ../x')) };
      },
      workspaceStopped: () => {},
    };
    const init = { homeRoot: path.join(root, 'homes'), store: { kind: 'file', dir: path.join(root, 'store') }, archiveExclude: [], unpackLimits: {}, spoolRetryBaseMs: 60_000, spoolRetryMaxMs: 60_000, homeCacheBytes: 0 } as unknown as ShardInit;
    const store = new HomeStore(init, host, log, { cached: () => {} });
    const err = await store.prepare('ws-unpack').then(
      () => undefined,
      (e: unknown) => e as GatewayError,
    );
    expect(err?.code).toBe('GW_ARCHIVE_INVALID');
    expect(err?.message).toContain('entry escapes the home');
  });

  it('the spool\'s last error keeps its code', async () => {
    const root = await tempDir('cxg-errors-');
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    const dir = path.join(root, 'ws-spool', 'g1');
    await mkdir(dir, { recursive: true });
    const spool = new Spool({
      baseMs: 60_000,
      maxMs: 60_000,
      logger: log,
      save: () => Promise.reject(new GatewayError('GW_STORE_UNAVAILABLE', 'connect ECONNREFUSED 127.0.0.1:9', { cause: new Error('fetch failed') })),
    });
    cleanups.push(() => spool.close());
    const home = new Home('ws-spool', 'g1', dir, 'spool');
    home.ran = true;
    spool.add(home, 'left by a previous gateway', { immediate: true });
    await waitFor(() => spool.status()[0]?.attempts === 1, 5000, 'the first attempt to fail');
    expect(spool.status()[0]?.lastError).toBe('GW_STORE_UNAVAILABLE: connect ECONNREFUSED 127.0.0.1:9: fetch failed');
  });
});
