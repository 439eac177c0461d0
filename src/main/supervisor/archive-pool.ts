/**
 * The archive pool: tar+gzip+upload and download+extract of CODEX_HOMEs run
 * in piscina worker threads, never on the front thread or a shard's loop.
 * Shards reach it through the main thread's control RPC (one message per
 * archive, not per byte).
 */
import os from 'node:os';
import { Piscina } from 'piscina';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../../shared/archive-protocol.js';
import { within } from '../../shared/concurrency.js';
import { serializeError, GatewayError } from '../../shared/errors.js';
import type { SupervisorObserver } from './options.js';

export class ArchivePool {
  private readonly pool: Piscina<ArchiveTask, ArchiveOutcome<ArchiveValue>>;
  private closed = false;

  constructor(threads?: number) {
    const max = Math.max(1, threads ?? Math.max(2, os.availableParallelism()));
    this.pool = new Piscina({
      filename: new URL('../../workers/archive-worker.js', import.meta.url).href,
      minThreads: 1,
      maxThreads: max,
      idleTimeout: 30_000,
      name: 'default',
    });
  }

  async run(task: ArchiveTask): Promise<ArchiveOutcome<ArchiveValue>> {
    if (this.closed) return { ok: false, error: serializeError(new GatewayError('GW_CLOSED', 'archive pool is closed')) };
    try {
      return await this.pool.run(task);
    } catch (err) {
      // The task file never throws; this is a dead archive thread.
      const code = task.op === 'pack' ? 'GW_STORE_UPLOAD' : 'GW_STORE_DOWNLOAD';
      return { ok: false, error: serializeError(new GatewayError(code, `archive worker failed during ${task.op} of ${task.workspaceId}`, { cause: err })) };
    }
  }

  /** run(), with uploads and downloads reported to `observer`. */
  async runObserved(task: ArchiveTask, observer: SupervisorObserver | undefined): Promise<ArchiveOutcome<ArchiveValue>> {
    const t0 = performance.now();
    const out = await this.run(task);
    if (observer?.archiveFinished !== undefined && (task.op === 'pack' || task.op === 'unpack')) {
      const op = task.op === 'pack' ? 'upload' : 'download';
      const ms = performance.now() - t0;
      if (out.ok) observer.archiveFinished({ op, ok: true, bytes: 'bytes' in out.value ? out.value.bytes : 0, ms, code: null, found: 'found' in out.value ? out.value.found : true });
      else observer.archiveFinished({ op, ok: false, bytes: 0, ms, code: out.error.code, found: false });
    }
    return out;
  }

  get queueSize(): number {
    return this.pool.queueSize;
  }

  /**
   * Waits for running tasks, then ends the threads; with `graceMs`, tasks
   * still running after that long are abandoned (their threads ended).
   */
  async close(o: { graceMs?: number } = {}): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (o.graceMs === undefined) {
      await this.pool.close();
      return;
    }
    const closed = await within(this.pool.close().then(() => true, () => false), o.graceMs);
    if (closed !== true) await this.pool.destroy();
  }
}
