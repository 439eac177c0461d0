/**
 * How shards' starts get their spawn permit: the SpawnGate (limits, order,
 * eviction), the permits each worker holds (given back when it dies), and
 * the arrival signal of pre-starts, so warm-restart pre-starts reach the
 * gate in rank order while the next one's download overlaps this one's wait.
 */
import type { ChildInfo, SpawnPriority } from '../../shared/protocol.js';
import type { SupervisorObserver, SupervisorOptions } from './options.js';
import type { ShardRef } from './shard-pool.js';
import { SpawnGate } from './spawn-gate.js';
import type { Admission, Evictor } from './spawn-gate.js';

export class SpawnAdmission {
  private readonly gate: SpawnGate;
  /** Pre-starts not yet at the gate, by workspace: told when their start asks for its permit. */
  private readonly arriving = new Map<string, () => void>();

  constructor(
    limits: SupervisorOptions['limits'],
    evictor: Evictor,
    private readonly observer: SupervisorObserver | undefined,
  ) {
    this.gate = new SpawnGate(limits ?? {}, evictor);
  }

  /** A shard's start asks for its permit; a permit granted to a worker that has died since is given back. */
  async enter(ref: ShardRef, current: () => boolean, p: { generation: string; workspaceId: string; priority: SpawnPriority; rank: number }): Promise<Admission> {
    // The queue entry exists once enter() returns its promise: a promotion sent after this call finds it.
    const entering = this.gate.enter(p.generation, { priority: p.priority, rank: p.rank });
    this.arriving.get(p.workspaceId)?.();
    const admission = await entering;
    if (current()) ref.gated.add(p.generation);
    else this.gate.settled(p.generation, false);
    this.observer?.spawnAdmitted?.({ workspaceId: p.workspaceId, priority: admission.priority, queuedMs: admission.queuedMs });
    return admission;
  }

  settled(ref: ShardRef, generation: string, ok: boolean): void {
    ref.gated.delete(generation);
    this.gate.settled(generation, ok);
  }

  promote(generation: string): void {
    this.gate.promote(generation);
  }

  /** A child adopted after a handover takes a slot until it exits. */
  adopt(generation: string): void {
    this.gate.adopt(generation);
  }

  /** A child exited: its slot goes back. */
  release(generation: string): void {
    this.gate.release(generation);
  }

  /** A worker died: the starts it had in progress will never settle, so their permits and slots go back. */
  abandon(ref: ShardRef): void {
    for (const generation of ref.gated) this.gate.settled(generation, false);
    ref.gated.clear();
  }

  /** Runs `call` (the shard's pre-start) and resolves `atGate` once it asked for its permit or ended without asking. */
  prestart(workspaceId: string, call: () => Promise<ChildInfo>): { atGate: Promise<void>; started: Promise<ChildInfo> } {
    let arrived!: () => void;
    const atGate = new Promise<void>((resolve) => (arrived = resolve));
    const done = (): void => {
      if (this.arriving.get(workspaceId) === done) this.arriving.delete(workspaceId);
      arrived();
    };
    this.arriving.set(workspaceId, done);
    const started = call();
    started.then(done, done);
    return { atGate, started };
  }

  get queued(): Record<SpawnPriority, number> {
    return this.gate.queued;
  }
}
