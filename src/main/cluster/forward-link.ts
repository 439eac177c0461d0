/**
 * One client connection forwarded to the gateway that owns its workspace:
 * a WebSocket from this gateway to the owner's `cluster.advertise_url`
 * (path /cluster/forward, proof in `x-cxg-forward`), and frames passed as
 * they are both ways, text as text, binary as binary.
 *
 * Flow control, as on the local path: toward the client, while the
 * client's socket holds more than `highWaterBytes`, this gateway stops
 * reading the owner's socket (TCP then holds the owner back, whose own
 * front holds its child back) until the client drains below
 * `lowWaterBytes`; a client behind for `slowClientTimeoutMs` is closed with
 * 1008 GW_SLOW_CLIENT. Toward the owner, uWS cannot stop reading a client,
 * so a client whose frames the owner does not take (more than
 * `maxToPeerBytes` unsent) is closed with 1008 GW_SLOW_CHILD.
 *
 * Close codes pass through both ways. What the owner closes with reaches
 * the client (1013 GW_OWNERSHIP_LOST, 1001 GW_STOPPED, …); a link that
 * cannot be made or breaks without a close becomes 1013 GW_FORWARD_FAILED:
 * the client retries, and reaches whoever owns the workspace then.
 */
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { CloseCode, forwardableCloseCode } from '../../shared/close-codes.js';
import type { ErrorCode } from '../../shared/errors.js';
import { reasonFor, truncateReason } from '../../shared/public-error.js';
import { FORWARD_HEADER } from './forward-token.js';

/** Path of the forwarding hop on every gateway's public listener. */
export const FORWARD_PATH = '/cluster/forward';

/** The client's socket, as the front lends it to a link. */
export interface ClientEnd {
  send(data: Uint8Array, binary: boolean): void;
  bufferedAmount(): number;
  end(code: number, reason: string): void;
}

export interface ForwardLinkLimits {
  maxFrameBytes: number;
  highWaterBytes: number;
  lowWaterBytes: number;
  clientMaxBufferedBytes: number;
  slowClientTimeoutMs: number;
  maxToPeerBytes: number;
  /** Client frames held while the link is being made. */
  maxPendingBytes: number;
  connectTimeoutMs: number;
}

export interface ForwardLinkOptions {
  /** The owner's advertised URL (ws:// or wss://). */
  url: string;
  /** The `x-cxg-forward` value (forward-token.ts). */
  proof: string;
  client: ClientEnd;
  limits: ForwardLinkLimits;
  log: Logger;
  /** Called once, when both ends are closed. */
  onDone: (how: 'closed' | 'failed') => void;
}

/** `<advertise_url>/cluster/forward`, keeping a path the URL may have (a gateway behind a path-routing proxy). */
export function forwardUrl(advertiseUrl: string): string {
  const u = new URL(advertiseUrl);
  u.pathname = `${u.pathname.replace(/\/+$/, '')}${FORWARD_PATH}`;
  u.search = '';
  u.hash = '';
  return u.href;
}

export class ForwardLink {
  private readonly peer: WebSocket;
  private opened = false;
  private done = false;
  private readonly pending: Array<{ data: Uint8Array; binary: boolean }> = [];
  private pendingBytes = 0;
  /** Not reading the owner's socket while the client is behind. */
  private paused = false;
  private slowTimer: NodeJS.Timeout | undefined;

  constructor(private readonly o: ForwardLinkOptions) {
    this.peer = new WebSocket(forwardUrl(o.url), {
      headers: { [FORWARD_HEADER]: o.proof },
      perMessageDeflate: false,
      // The owner's front sends what its child sends, up to its frame limit.
      maxPayload: o.limits.maxFrameBytes * 2,
      handshakeTimeout: o.limits.connectTimeoutMs,
      followRedirects: false,
    });
    this.peer.on('open', () => this.onOpen());
    this.peer.on('message', (data: Buffer, binary: boolean) => this.fromPeer(data, binary));
    this.peer.on('close', (code: number, reason: Buffer) => this.peerClosed(code, reason.toString()));
    this.peer.on('unexpected-response', (_req, res) => {
      // A refusal before the upgrade: a wrong cluster.secret, a draining or failing owner.
      this.o.log.warn({ url: o.url, status: res.statusCode }, 'cluster: the owner refused a forwarded connection');
      res.resume();
      this.fail('GW_FORWARD_FAILED');
    });
    this.peer.on('error', (err: Error) => {
      if (this.done) return;
      this.o.log.warn({ url: o.url, err: err.message }, 'cluster: forwarded connection failed');
      this.fail('GW_FORWARD_FAILED');
    });
  }

  /** A frame from the client (the caller hands over its own copy). */
  fromClient(data: Uint8Array, binary: boolean): void {
    if (this.done) return;
    if (!this.opened) {
      if (this.pendingBytes + data.byteLength > this.o.limits.maxPendingBytes) {
        this.fail('GW_TOO_LARGE', CloseCode.PolicyViolation);
        return;
      }
      this.pending.push({ data, binary });
      this.pendingBytes += data.byteLength;
      return;
    }
    if (this.peer.bufferedAmount + data.byteLength > this.o.limits.maxToPeerBytes && this.peer.bufferedAmount > 0) {
      this.o.log.warn({ url: this.o.url, buffered: this.peer.bufferedAmount }, 'cluster: owner not taking a forwarded client\'s frames; closing the client');
      this.fail('GW_SLOW_CHILD', CloseCode.PolicyViolation);
      return;
    }
    this.peer.send(data, { binary });
  }

  private onOpen(): void {
    if (this.done) {
      this.peer.terminate();
      return;
    }
    this.opened = true;
    for (const f of this.pending.splice(0)) this.peer.send(f.data, { binary: f.binary });
    this.pendingBytes = 0;
  }

  private fromPeer(data: Buffer, binary: boolean): void {
    if (this.done) return;
    const c = this.o.client;
    const limits = this.o.limits;
    if (c.bufferedAmount() + data.byteLength > limits.clientMaxBufferedBytes + limits.maxFrameBytes) {
      this.fail('GW_SLOW_CLIENT', CloseCode.PolicyViolation);
      return;
    }
    c.send(data, binary);
    if (!this.paused && c.bufferedAmount() > limits.highWaterBytes) {
      this.paused = true;
      this.peer.pause();
      this.slowTimer = setTimeout(() => this.fail('GW_SLOW_CLIENT', CloseCode.PolicyViolation), limits.slowClientTimeoutMs);
      this.slowTimer.unref();
    }
  }

  /** The client's socket drained (uWS `drain`). */
  clientDrained(): void {
    if (!this.paused || this.done || this.o.client.bufferedAmount() > this.o.limits.lowWaterBytes) return;
    this.paused = false;
    clearTimeout(this.slowTimer);
    this.peer.resume();
  }

  /** The client went away: so does the link, with the client's code when it may be sent. */
  clientClosed(code: number): void {
    if (this.done) return;
    this.finish('closed');
    if (!this.opened) {
      this.peer.terminate();
      return;
    }
    const c = forwardableCloseCode(code);
    // 1005 (the client gave no code) and codes that may not be sent end without one.
    if (c === code && code !== CloseCode.InternalError) this.peer.close(code);
    else this.peer.close();
  }

  /** The owner this link reaches no longer owns the workspace (owner-watch.ts). */
  ownerMoved(): void {
    if (this.done) return;
    this.o.log.info({ url: this.o.url }, 'cluster: the workspace of a forwarded connection changed owner; closing it so the client reconnects');
    this.fail('GW_OWNERSHIP_LOST');
  }

  private peerClosed(code: number, reason: string): void {
    if (this.done) return;
    this.finish(this.opened ? 'closed' : 'failed');
    if (code === 1006 || !this.opened) {
      this.o.client.end(CloseCode.TryAgainLater, reasonFor('GW_FORWARD_FAILED'));
      return;
    }
    if (code === 1005) this.o.client.end(CloseCode.Normal, '');
    else this.o.client.end(forwardableCloseCode(code), truncateReason(reason));
  }

  /** Closes the client with `code` and the error code's reason, and drops the link. */
  private fail(reason: ErrorCode, code: number = CloseCode.TryAgainLater): void {
    if (this.done) return;
    this.finish(this.opened ? 'closed' : 'failed');
    this.o.client.end(code, reasonFor(reason));
    this.peer.terminate();
  }

  private finish(how: 'closed' | 'failed'): void {
    this.done = true;
    clearTimeout(this.slowTimer);
    this.pending.length = 0;
    this.o.onDone(how);
  }
}
