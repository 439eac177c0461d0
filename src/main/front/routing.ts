/**
 * The front's side of forwarding between gateways (cluster/forwarding.ts):
 * where a client whose workspace is known is served, its shard here or the
 * live peer that owns the workspace, and the upgrades peers forward to this
 * node on FORWARD_PATH. Without [cluster] forwarding every client is served
 * here, as on a single gateway.
 */
import { CloseCode } from '../../shared/close-codes.js';
import { GatewayError } from '../../shared/errors.js';
import { publicError, reasonFor } from '../../shared/public-error.js';
import type { ClientEnd } from '../cluster/forward-link.js';
import type { ForwardClaim } from '../cluster/forward-token.js';
import type { Route } from '../cluster/forwarding.js';
import { sendJson } from '../http/http-util.js';
import type { HttpResponse } from '../http/uws.js';
import type { Client, ClientData } from './client.js';
import type { DataPlane } from './data-plane.js';
import type { FrontOptions } from './limits.js';

export class ClientRouting {
  constructor(
    private readonly o: FrontOptions,
    private readonly plane: DataPlane,
    private readonly draining: () => boolean,
  ) {}

  /** True when a client of `workspaceId` is served here without asking etcd: no forwarding, or this node holds the workspace. */
  atOnce(workspaceId: string): boolean {
    return this.o.forwarding === undefined || this.o.forwarding.localAtOnce(workspaceId);
  }

  /** The claim of a peer's forwarded upgrade, or undefined once it was refused (401; why goes to the log). */
  acceptForwarded(res: HttpResponse, proof: string, peer: string): ForwardClaim | undefined {
    const f = this.o.forwarding;
    try {
      if (f === undefined) throw new GatewayError('GW_UNAUTHORIZED', 'no forwarding here');
      return f.acceptForwarded(proof, peer);
    } catch {
      sendJson(res, 401, { error: publicError(new GatewayError('GW_UNAUTHORIZED')) });
      return undefined;
    }
  }

  /**
   * Serves an open connection whose workspace is known, with the frames it
   * sent meanwhile (in pendingAuth): at its shard, or forwarded to the
   * workspace's owner. A connection that arrived forwarded is never
   * forwarded again.
   */
  attach(ws: Client, d: ClientData, workspaceId: string): void {
    const f = this.o.forwarding;
    const route = f === undefined || d.forwardedIn ? 'local' : f.route(workspaceId);
    if (route instanceof Promise) {
      void route.then((r) => !d.closed && this.attachTo(ws, d, workspaceId, r));
      return;
    }
    this.attachTo(ws, d, workspaceId, route);
  }

  private attachTo(ws: Client, d: ClientData, workspaceId: string, route: Route): void {
    if (route === 'local') {
      const shard = this.o.sup.shardFor(workspaceId);
      if (this.draining() || this.plane.isDown(shard)) {
        d.closed = true;
        d.pendingAuth = undefined;
        ws.cork(() => ws.end(this.draining() ? CloseCode.TryAgainLater : CloseCode.InternalError, reasonFor(this.draining() ? 'GW_CLOSED' : 'GW_SHARD_FAILED')));
        return;
      }
      this.plane.attach(d, workspaceId, shard);
      return;
    }
    const pending = d.pendingAuth;
    d.pendingAuth = undefined;
    d.workspaceId = workspaceId;
    const end: ClientEnd = {
      send: (data, binary) => {
        if (d.closed) return;
        ws.cork(() => ws.send(data, binary));
        this.o.observer?.frame?.('out', data.byteLength);
      },
      bufferedAmount: () => (d.closed ? 0 : ws.getBufferedAmount()),
      end: (code, reason) => {
        if (d.closed) return;
        d.closed = true;
        ws.cork(() => ws.end(code, reason));
      },
    };
    const link = (this.o.forwarding as NonNullable<FrontOptions['forwarding']>).forward(route, { workspaceId, address: d.address, connId: d.id, end });
    d.link = link;
    for (const fr of pending?.frames ?? []) link.fromClient(fr.data, fr.binary);
  }
}
