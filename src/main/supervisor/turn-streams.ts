/**
 * HTTP turns (POST /api/turns) run in a shard; their notifications come
 * back as `turnEvent` notices and go to the sink of the request that asked,
 * until the turn ends or its client goes away.
 */
import type { TurnOutcome, TurnRequest } from '../../shared/protocol.js';
import type { ShardRpc } from './shard-pool.js';

type Sink = (method: string, params: unknown) => void;

export class TurnStreams {
  private readonly sinks = new Map<number, Sink>();
  private nextId = 1;

  deliver(p: { turnRequestId: number; method: string; params: unknown }): void {
    this.sinks.get(p.turnRequestId)?.(p.method, p.params);
  }

  run(rpc: ShardRpc, turn: Omit<TurnRequest, 'turnRequestId' | 'stream'>, onEvent: Sink | undefined): { outcome: Promise<TurnOutcome>; clientGone(interrupt: boolean): void } {
    const turnRequestId = this.nextId++;
    if (onEvent !== undefined) this.sinks.set(turnRequestId, onEvent);
    const outcome = rpc.call('runTurn', { ...turn, turnRequestId, stream: onEvent !== undefined }).finally(() => this.sinks.delete(turnRequestId));
    return {
      outcome,
      clientGone: (interrupt) => {
        this.sinks.delete(turnRequestId);
        rpc.notify('turnClientGone', { turnRequestId, interrupt });
      },
    };
  }
}
