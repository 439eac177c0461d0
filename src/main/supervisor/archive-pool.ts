/**
 * The archive pool: tar+gzip+upload and download+extract of CODEX_HOMEs run
 * in piscina worker threads, never on the front thread or a shard's loop.
 * Shards reach it through the main thread's control RPC (one message per
 * archive, not per byte).
 */
import os from 'node:os';
import { Piscina } from 'piscina';
import type { ArchiveOutcome, ArchiveTask, ArchiveValue } from '../../shared/archive-protocol.js';
import { serializeError, GatewayError } from '../../shared/errors.js';

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
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), o.graceMs)));
    const closing = this.pool.close().then(() => 'closed' as const, () => 'late' as const);
    const outcome = await Promise.race([closing, late]);
    clearTimeout(timer);
    if (outcome === 'late') await this.pool.destroy();
  }
}
