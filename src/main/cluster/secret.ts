/**
 * cluster.secret: the key every gateway of a cluster shares to prove to a
 * peer that a connection it forwards comes from a gateway (forward-token.ts).
 *
 * A gateway that advertises a URL (cluster.advertise_url) accepts forwarded
 * connections on it, and a forwarded connection is trusted with a workspace
 * without a client token: such a gateway must have a secret, or it does not
 * start (GW_CLUSTER_SECRET). A gateway without an advertised URL may still
 * have one, and then forwards its clients to peers that advertise theirs.
 */
import { readFile } from 'node:fs/promises';
import { GatewayError } from '../../shared/errors.js';

/** 256 bits, the size of the HMAC-SHA256 key it is used as. */
export const MIN_CLUSTER_SECRET_LENGTH = 32;

export interface ClusterSecretSettings {
  secret?: string | undefined;
  secretFile?: string | undefined;
  advertiseUrl?: string | undefined;
}

/** The secret the settings give (trimmed: editors add a newline to files), or undefined when none is needed and none is set. */
export async function clusterSecret(c: ClusterSecretSettings): Promise<Buffer | undefined> {
  if (c.secret !== undefined && c.secretFile !== undefined) throw new GatewayError('GW_CLUSTER_SECRET', 'set cluster.secret or cluster.secret_file, not both');
  let value: string | undefined = c.secret;
  let from = 'cluster.secret';
  if (c.secretFile !== undefined) {
    from = `cluster.secret_file ${c.secretFile}`;
    try {
      value = (await readFile(c.secretFile, 'utf8')).trim();
    } catch (err) {
      throw new GatewayError('GW_CLUSTER_SECRET', `${from}: cannot read it (${(err as NodeJS.ErrnoException).code ?? String(err)})`, { cause: err });
    }
  }
  if (value === undefined) {
    if (c.advertiseUrl === undefined) return undefined;
    throw new GatewayError('GW_CLUSTER_SECRET', 'cluster.advertise_url is set, so peers forward clients to this gateway: set cluster.secret or cluster.secret_file (the same on every gateway of the cluster)');
  }
  if (value.length < MIN_CLUSTER_SECRET_LENGTH) throw new GatewayError('GW_CLUSTER_SECRET', `${from}: expected at least ${MIN_CLUSTER_SECRET_LENGTH} characters, got ${value.length}`);
  return Buffer.from(value, 'utf8');
}
