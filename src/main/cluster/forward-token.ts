/**
 * The proof a forwarded connection carries from one gateway of the cluster
 * to another: header `x-cxg-forward: <payload>.<mac>`, both base64url, where
 * the payload is JSON (who forwards, to which node, the workspace, the
 * original client) and the mac is HMAC-SHA256 of the payload under
 * cluster.secret.
 *
 * The secret itself never travels, so nothing that logs headers or URLs on
 * the way can leak it. A proof is good for one node (`to`), one workspace,
 * within FRESH_MS of when it was made, and once: a proof seen before is
 * refused, so one copied off the wire cannot be used again. The mac is
 * compared in constant time before anything in the payload is believed.
 */
import { createHmac } from 'node:crypto';
import { GatewayError } from '../../shared/errors.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';
import { sameSecret } from '../../shared/secrets.js';

export const FORWARD_HEADER = 'x-cxg-forward';

/** How far a proof's time may lie from this node's clock, either way (clocks of a cluster are NTP-synced, not equal). */
export const FRESH_MS = 120_000;

/** What a forwarded connection says about itself once its proof is checked. */
export interface ForwardClaim {
  /** The node that forwarded (where the client is connected). */
  from: string;
  /** The node it was meant for. */
  to: string;
  workspaceId: string;
  /** The original client's address, as the forwarding node saw it (logs only). */
  client: string;
  /** The client's connection id on the forwarding node (logs only: it joins the two nodes' log lines). */
  conn: number;
  /** When the proof was made (ms since the epoch). */
  at: number;
}

function mac(secret: Buffer, payload: string): Buffer {
  return createHmac('sha256', secret).update(payload).digest();
}

/** The header value for `claim`. */
export function signForward(secret: Buffer, claim: ForwardClaim): string {
  const payload = Buffer.from(JSON.stringify({ v: 1, ...claim })).toString('base64url');
  return `${payload}.${mac(secret, payload).toString('base64url')}`;
}

/**
 * Checks proofs for this node: mac first, then addressee, age and reuse.
 * Each refusal is GW_UNAUTHORIZED with a message for the log (never the
 * secret, never the proof).
 */
export class ForwardVerifier {
  /** Proofs accepted within the freshness window, by mac, with when they may be forgotten. */
  private readonly seen = new Map<string, number>();

  constructor(
    private readonly secret: Buffer,
    private readonly nodeId: string,
    private readonly now: () => number = Date.now,
  ) {}

  verify(header: string): ForwardClaim {
    const dot = header.indexOf('.');
    if (dot <= 0) throw new GatewayError('GW_UNAUTHORIZED', 'forward proof: malformed');
    const payload = header.slice(0, dot);
    const given = Buffer.from(header.slice(dot + 1), 'base64url');
    const want = mac(this.secret, payload);
    if (!sameSecret(given, want)) throw new GatewayError('GW_UNAUTHORIZED', 'forward proof: bad signature (does cluster.secret differ between the nodes?)');
    const claim = parseClaim(payload);
    if (claim.to !== this.nodeId) throw new GatewayError('GW_UNAUTHORIZED', `forward proof: meant for node ${claim.to}, this is ${this.nodeId}`);
    const now = this.now();
    if (Math.abs(now - claim.at) > FRESH_MS) throw new GatewayError('GW_UNAUTHORIZED', `forward proof: made ${Math.round((now - claim.at) / 1000)} s from this node's clock (at most ${FRESH_MS / 1000} s; are the clocks synced?)`);
    this.forgetOld(now);
    const key = want.toString('base64url');
    if (this.seen.has(key)) throw new GatewayError('GW_UNAUTHORIZED', 'forward proof: already used');
    this.seen.set(key, claim.at + FRESH_MS);
    return claim;
  }

  private forgetOld(now: number): void {
    // Insertion order is close to expiry order; a proof out of order is forgotten a little late, never early.
    for (const [key, until] of this.seen) {
      if (until >= now) break;
      this.seen.delete(key);
    }
  }
}

function parseClaim(payload: string): ForwardClaim {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new GatewayError('GW_UNAUTHORIZED', 'forward proof: payload is not JSON');
  }
  const { v, from, to, workspaceId, client, conn, at } = o;
  if (v !== 1 || typeof from !== 'string' || typeof to !== 'string' || typeof client !== 'string' || typeof conn !== 'number' || typeof at !== 'number') {
    throw new GatewayError('GW_UNAUTHORIZED', 'forward proof: unknown version or missing fields');
  }
  let ws: string;
  try {
    ws = validateWorkspaceId(workspaceId);
  } catch (err) {
    throw new GatewayError('GW_UNAUTHORIZED', 'forward proof: bad workspace id', { cause: err });
  }
  return { from, to, workspaceId: ws, client, conn, at };
}
