/** A client connection's state, kept in its uWS socket. */
import type { UwsSocket } from '../http/uws.js';

export interface ClientData {
  id: number;
  workspaceId: string;
  shard: number;
  closed: boolean;
  /** The client socket is above its high-water mark; acks wait for its drain. */
  behind: boolean;
  behindSince: number;
  /** Bytes written to the client whose ack waits for the drain. */
  pendingAck: number;
  /** Bytes sent toward the shard and not yet acked by it. */
  toShard: number;
  /**
   * Set while the token is being verified after the upgrade (a remote
   * verifier's cache miss): the connection has no workspace or shard yet,
   * and its frames wait here, in order, up to PENDING_AUTH_BYTES.
   */
  pendingAuth: { token: string; frames: Array<{ data: Uint8Array; binary: boolean }>; bytes: number } | undefined;
}

/** Frames a client may send before its token is verified (codex sends one `initialize`). */
export const PENDING_AUTH_BYTES = 1024 * 1024;

export type Client = UwsSocket<ClientData>;
