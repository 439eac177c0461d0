/**
 * The children the shards run, as the main thread knows them: their pids
 * (to stop them when a shard worker dies, and as a last resort at exit) and
 * the ChildHandles given to library callers, settled when a child exits.
 */
import type { ChildInfo } from '../../shared/protocol.js';
import { ChildHandle } from './child-handle.js';

type Exit = { code: number | null; signal: string | null };

export class Children {
  private readonly handles = new Map<string, ChildHandle>();
  /**
   * Exits of generations with no handle yet. A child can die during the
   * last step of its start, and then its exit notice arrives before the
   * ensure answer that creates its handle.
   */
  private readonly recentExits = new Map<string, Exit>();
  private readonly pids = new Map<string, { pid: number; shard: number }>();

  started(generation: string, pid: number, shard: number): void {
    this.pids.set(generation, { pid, shard });
  }

  /** A child handed over to a successor (restart.handover): not killed at exit any more. */
  released(generation: string): void {
    this.pids.delete(generation);
  }

  /** The handle of a started child; already settled when it has exited. */
  handle(info: ChildInfo): ChildHandle {
    let h = this.handles.get(info.generation);
    if (h === undefined) {
      h = new ChildHandle(info);
      const exit = this.recentExits.get(info.generation);
      if (exit === undefined) this.handles.set(info.generation, h);
      else h.markExited(exit);
    }
    return h;
  }

  exited(generation: string, exit: Exit): void {
    this.pids.delete(generation);
    const h = this.handles.get(generation);
    if (h !== undefined) {
      this.handles.delete(generation);
      h.markExited(exit);
    } else {
      this.recentExits.set(generation, exit);
      // Only the latest few matter (a start's own answer follows its exit at once).
      if (this.recentExits.size > 256) this.recentExits.delete(this.recentExits.keys().next().value as string);
    }
  }

  /** The children of one shard, by generation and pid. */
  ofShard(shard: number): Array<{ generation: string; pid: number }> {
    const out: Array<{ generation: string; pid: number }> = [];
    for (const [generation, c] of this.pids) if (c.shard === shard) out.push({ generation, pid: c.pid });
    return out;
  }

  get count(): number {
    return this.pids.size;
  }

  /** SIGKILL to every child's process group: the last resort when the process exits without a close. */
  killAll(): void {
    for (const { pid } of this.pids.values()) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    this.pids.clear();
  }
}
