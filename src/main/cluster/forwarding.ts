/**
 * Routing is a hint, never the guarantee: a load balancer sends a client to
 * some gateway, and that gateway serves the client wherever the workspace
 * runs. If a live peer holds the workspace's lease, the client's connection
 * is forwarded to that peer (forward-link.ts); otherwise it is served here,
 * where the shard's claim decides, in one etcd transaction, who runs the
 * workspace. So adding or removing a node never starts a workspace twice: a
 * client that lands on a node that does not own its workspace still reaches
 * the one child.
 *
 * No loops: a connection that arrived forwarded (path /cluster/forward,
 * proof checked by forward-token.ts) is served here or refused, never
 * forwarded again. If this node does not own its workspace either (it
 * changed hands meanwhile), the shard's claim refuses it with 1013
 * GW_OWNED_ELSEWHERE, which the forwarding node passes to the client, whose
 * next attempt finds the current owner.
 *
 * A client never reaches the hop: a request on /cluster/forward without a
 * valid proof, made with cluster.secret, is refused (401), and the proof
 * is good once, for one node, for about two minutes.
 */
import type { Logger } from 'pino';
import { toGatewayError } from '../../shared/errors.js';
import { ForwardLink } from './forward-link.js';
import type { ClientEnd, ForwardLinkLimits } from './forward-link.js';
import { ForwardVerifier, signForward } from './forward-token.js';
import type { ForwardClaim } from './forward-token.js';
import { OwnerWatches } from './owner-watch.js';
import type { OwnerWatchSource } from './owner-watch.js';
import type { OwnerRecord } from './ownership.js';

/** What forwarding needs of this node's cluster membership (ClusterNode). */
export interface ForwardingCluster extends OwnerWatchSource {
  holds(workspaceId: string): boolean;
}

/** A live peer that owns a workspace, and where it listens. */
export interface PeerTarget extends OwnerRecord {
  url: string;
}

export interface ForwardStats {
  /** Client connections this node forwards to a peer now. */
  outOpen: number;
  outTotal: number;
  /** Forwards that ended before the owner answered (unreachable, refused). */
  outFailed: number;
  /** Connections peers forward to this node now. */
  inOpen: number;
  inTotal: number;
  /** Requests on the hop refused for their proof. */
  inRefused: number;
}

export interface ForwardingOptions {
  cluster: ForwardingCluster;
  nodeId: string;
  secret: Buffer;
  limits: ForwardLinkLimits;
  log: Logger;
}

/** Who serves a client: this node, or the peer that owns its workspace. */
export type Route = 'local' | PeerTarget;

export class ClusterForwarding {
  private readonly verifier: ForwardVerifier;
  private readonly watches: OwnerWatches;
  private readonly counts: ForwardStats = { outOpen: 0, outTotal: 0, outFailed: 0, inOpen: 0, inTotal: 0, inRefused: 0 };

  constructor(private readonly o: ForwardingOptions) {
    this.verifier = new ForwardVerifier(o.secret, o.nodeId);
    this.watches = new OwnerWatches(o.cluster, o.log);
  }

  get nodeId(): string {
    return this.o.nodeId;
  }

  /**
   * Where a client of `workspaceId` is served: 'local' at once when this node
   * holds the workspace; else after one etcd read. The read's answer is a
   * hint too: an owner that is gone or not reachable is settled by the
   * claim (local) or by the client's retry (forwarded, then refused).
   */
  /** True when route() answers 'local' without waiting: this node holds the workspace. */
  localAtOnce(workspaceId: string): boolean {
    return this.o.cluster.holds(workspaceId);
  }

  route(workspaceId: string): Route | Promise<Route> {
    if (this.o.cluster.holds(workspaceId)) return 'local';
    return this.o.cluster.owner(workspaceId).then(
      (rec): Route => (rec === null || rec.node === this.o.nodeId || rec.url === null ? 'local' : { ...rec, url: rec.url }),
      // etcd does not answer: the local claim will not either, and says so (GW_CLUSTER_UNAVAILABLE).
      (): Route => 'local',
    );
  }

  /**
   * Checks the proof of a request on the hop. A refusal is GW_UNAUTHORIZED,
   * counted and logged here (with the peer's address, never the proof).
   */
  acceptForwarded(proof: string, peer: string): ForwardClaim {
    try {
      return this.verifier.verify(proof);
    } catch (err) {
      this.counts.inRefused += 1;
      this.o.log.warn({ peer, err: toGatewayError(err).describe() }, 'cluster: forwarded connection refused');
      throw err;
    }
  }

  /** A connection accepted by acceptForwarded is open (upgraded). */
  forwardedOpened(): void {
    this.counts.inOpen += 1;
    this.counts.inTotal += 1;
  }

  /** A connection counted by forwardedOpened has closed. */
  forwardedClosed(): void {
    this.counts.inOpen -= 1;
  }

  /**
   * Forwards a client to `target`; the front then hands the link the
   * client's frames, drains and close. The link closes the client itself
   * when the owner closes, cannot be reached, or loses the workspace.
   */
  forward(target: PeerTarget, client: { workspaceId: string; address: string; connId: number; end: ClientEnd }): ForwardLink {
    const proof = signForward(this.o.secret, { from: this.o.nodeId, to: target.node, workspaceId: client.workspaceId, client: client.address, conn: client.connId, at: Date.now() });
    this.counts.outOpen += 1;
    this.counts.outTotal += 1;
    const log = this.o.log.child({ workspaceId: client.workspaceId, connId: client.connId, owner: target.node });
    log.info({ url: target.url, epoch: target.epoch }, 'cluster: forwarding a client to the workspace\'s owner');
    const link: ForwardLink = new ForwardLink({
      url: target.url,
      proof,
      client: client.end,
      limits: this.o.limits,
      log,
      onDone: (how) => {
        this.counts.outOpen -= 1;
        if (how === 'failed') this.counts.outFailed += 1;
        unwatch();
      },
    });
    // onDone runs on a later event, after this line.
    const unwatch = this.watches.watch(client.workspaceId, target, () => link.ownerMoved());
    return link;
  }

  stats(): ForwardStats {
    return { ...this.counts };
  }

  close(): void {
    this.watches.close();
  }
}
