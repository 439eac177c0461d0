/**
 * The shard workers: one worker thread per shard, each with a control port
 * (RpcPeer) and a frame port. A worker that dies is replaced, after the
 * uploads it started have ended, unless it keeps dying (then it is given
 * up). What a death means for children and clients is the owner's
 * business (hooks.died); this file only keeps the workers.
 */
import { MessageChannel, Worker } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from 'pino';
import { GatewayError } from '../../shared/errors.js';
import type { HostMethods, HostNotices, ShardInit, ShardMethods, ShardNotices } from '../../shared/protocol.js';
import { RpcPeer } from '../../shared/rpc.js';
import type { Handlers, NoticeHandlers } from '../../shared/rpc.js';
import { shardOf } from '../../shared/workspace-id.js';

export type ShardRpc = RpcPeer<HostMethods, ShardMethods, HostNotices, ShardNotices>;

export interface ShardRef {
  index: number;
  init: ShardInit;
  worker: Worker;
  rpc: ShardRpc;
  data: MessagePort;
  /** The worker died and was not (or not yet) replaced. */
  failed: boolean;
  /** Bumped at each restart; answers for an older worker are dropped. */
  epoch: number;
  /** Times of recent restarts, to give up on a shard that keeps dying. */
  restarts: number[];
  /** Archive tasks running for this shard. */
  archives: Set<Promise<unknown>>;
  /** Starts of this worker holding a spawn permit (entered, not yet settled). */
  gated: Set<string>;
}

/** A shard that dies this many times within RESTART_WINDOW_MS stays down. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

export interface ShardPoolHooks {
  /** What the main thread answers to this worker; `current` is false once the worker was replaced. */
  host(ref: ShardRef, current: () => boolean): { methods: Handlers<HostMethods>; notices: NoticeHandlers<HostNotices> };
  /** The worker died: its calls in flight have failed and its frame port is closed. */
  died(ref: ShardRef): void;
  /** A new worker took the shard over and answers. */
  restarted(index: number): void;
  /** The shard kept dying and was given up. */
  givenUp(index: number): void;
  /** True once the owner is closing: nothing is restarted then. */
  closing(): boolean;
}

export class ShardPool {
  readonly refs: ShardRef[] = [];

  constructor(
    private readonly hooks: ShardPoolHooks,
    private readonly log: Logger,
  ) {}

  start(init: ShardInit): void {
    const ref = { index: init.shard, init, failed: false, epoch: 0, restarts: [], archives: new Set(), gated: new Set() } as unknown as ShardRef;
    this.launch(ref);
    this.refs.push(ref);
  }

  /** Starts (or restarts) the worker of a shard with fresh ports. */
  private launch(ref: ShardRef): void {
    const init = ref.init;
    const epoch = ref.epoch;
    const control = new MessageChannel();
    const data = new MessageChannel();
    const worker = new Worker(new URL('../../workers/shard.js', import.meta.url), {
      workerData: { init, control: control.port2, data: data.port2 },
      transferList: [control.port2, data.port2],
      name: `shard-${init.shard}`,
    });
    const current = (): boolean => ref.epoch === epoch;
    ref.worker = worker;
    ref.data = data.port1;
    ref.failed = false;
    const { methods, notices } = this.hooks.host(ref, current);
    ref.rpc = new RpcPeer(control.port1, methods, notices, (what) => this.log.error({ shard: init.shard, what }, 'unknown control message from shard'));
    worker.on('error', (err) => {
      this.log.fatal({ shard: init.shard, err }, 'shard worker crashed');
      if (current()) this.died(ref, `crashed: ${err.message}`);
    });
    worker.on('exit', (code) => {
      if (current()) this.died(ref, `exited with code ${code}`);
    });
  }

  /**
   * A worker is gone (a bug; shards catch what they expect). Calls in
   * flight fail with GW_SHARD_FAILED and the owner is told. A new worker
   * starts once the dead one's uploads have ended: it must not store newer
   * state before they do, or they would overwrite it.
   */
  private died(ref: ShardRef, why: string): void {
    if (ref.failed) return;
    ref.failed = true;
    ref.epoch += 1;
    ref.rpc.failAll('GW_SHARD_FAILED', `shard ${ref.index} ${why}`);
    ref.data.close();
    this.hooks.died(ref);
    if (this.hooks.closing()) return;
    const now = Date.now();
    ref.restarts = ref.restarts.filter((t) => now - t < RESTART_WINDOW_MS);
    if (ref.restarts.length >= MAX_RESTARTS) {
      this.log.fatal({ shard: ref.index, restarts: ref.restarts.length }, 'shard keeps dying; giving up on it');
      this.hooks.givenUp(ref.index);
      return;
    }
    ref.restarts.push(now);
    this.log.error({ shard: ref.index, why }, 'shard worker died; starting a new one (it recovers the old one\'s children)');
    void Promise.allSettled([...ref.archives]).then(() => {
      if (this.hooks.closing()) return;
      this.launch(ref);
      // Clients are let in again once the new worker answers; if it dies
      // first, died() has moved the epoch on and this answer is dropped.
      const epoch = ref.epoch;
      ref.rpc.call('stats', {}).then(
        () => {
          if (ref.epoch === epoch && !ref.failed && !this.hooks.closing()) this.hooks.restarted(ref.index);
        },
        () => {},
      );
    });
  }

  get count(): number {
    return this.refs.length;
  }

  /** True while every worker runs. */
  get allUp(): boolean {
    return this.refs.every((s) => !s.failed);
  }

  live(): ShardRef[] {
    return this.refs.filter((s) => !s.failed);
  }

  shardFor(workspaceId: string): number {
    return shardOf(workspaceId, this.refs.length);
  }

  ref(i: number): ShardRef {
    const ref = this.refs[i];
    if (ref === undefined) throw new GatewayError('GW_INTERNAL', `no shard ${i}`);
    return ref;
  }

  /** Ends every worker at once, without asking it to stop its children. */
  async terminate(): Promise<void> {
    for (const s of this.refs) {
      s.failed = true;
      s.rpc.close();
      s.data.close();
    }
    await Promise.all(this.refs.map((s) => s.worker.terminate()));
  }
}
