/**
 * One client connection as the shard keeps it (child-proxy.ts): the client's
 * side in the front, and its WebSocket to the workspace's child.
 */
import type WebSocket from 'ws';
import type { Lease } from './batch-leases.js';

export interface Conn {
  id: number;
  workspaceId: string;
  generation: string | undefined;
  ws: WebSocket | undefined;
  open: boolean;
  closed: boolean;
  /** Client frames waiting for the child connection to open. */
  queue: Array<{ data: Uint8Array; binary: boolean }>;
  queuedBytes: number;
  /** Bytes sent toward the client and not yet acked by the front. */
  unacked: number;
  /** The child connection is paused because `unacked` passed the window. */
  paused: boolean;
  /**
   * Client bytes received from the front and not yet acked to it: queued
   * before the child connection opened, or handed to it and not yet taken
   * by its socket.
   */
  held: number;
  /** Write callback of every send to the child: one function per connection, not per frame. */
  written: () => void;
  /** Children tried for this client; a dead one found before its exit is seen costs one more. */
  attempts: number;
  /** Per send to the child not yet written, in order: the pooled batch it was sent from (batch-leases.ts). */
  sent: Array<Lease | undefined>;
}

/** Send options, shared: no object per frame. */
export const SEND_BINARY = { binary: true } as const;
export const SEND_TEXT = { binary: false } as const;

/** ws's mask buffer is shared by every client socket of the thread: it is filled, not left as it is. */
export function zeroMask(mask: Buffer): void {
  mask.fill(0);
}
