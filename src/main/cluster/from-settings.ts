/**
 * The [cluster] settings as a ClusterNode, or undefined when no etcd
 * endpoint is set (a single gateway: nothing of the cluster runs); and the
 * forwarding between gateways, when cluster.secret is set.
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { GatewayError } from '../../shared/errors.js';
import type { Settings } from '../settings/load.js';
import type { FrontLimits } from '../front/front.js';
import { ClusterForwarding } from './forwarding.js';
import { ClusterNode } from './ownership.js';
import { clusterSecret } from './secret.js';

/** Client frames held while a forwarded connection reaches the owner (codex sends one `initialize`). */
const FORWARD_PENDING_BYTES = 1024 * 1024;
/** An owner that does not complete the WebSocket handshake by then is not reached: 1013 GW_FORWARD_FAILED. */
const FORWARD_CONNECT_TIMEOUT_MS = 10_000;

export async function clusterFromSettings(settings: Settings, log: Logger): Promise<ClusterNode | undefined> {
  const c = settings.cluster;
  if (c.etcd.endpoints.length === 0) return undefined;
  // Checked first: a gateway that would accept forwarded connections without a secret does not start.
  await clusterSecret(c);
  const { caFile, certFile, keyFile, username, password } = c.etcd;
  if ((certFile === undefined) !== (keyFile === undefined)) throw new GatewayError('GW_SETTINGS', 'cluster.etcd.cert_file and cluster.etcd.key_file go together');
  if (certFile !== undefined && caFile === undefined) throw new GatewayError('GW_SETTINGS', 'cluster.etcd.cert_file needs cluster.etcd.ca_file');
  if ((username === undefined) !== (password === undefined)) throw new GatewayError('GW_SETTINGS', 'cluster.etcd.username and cluster.etcd.password go together');
  const read = async (key: string, file: string): Promise<Buffer> => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new GatewayError('GW_SETTINGS', `${key}: cannot read ${file}`, { cause: err });
    }
  };
  const tls =
    caFile === undefined
      ? undefined
      : {
          ca: await read('cluster.etcd.ca_file', caFile),
          ...(certFile === undefined ? {} : { cert: await read('cluster.etcd.cert_file', certFile) }),
          ...(keyFile === undefined ? {} : { key: await read('cluster.etcd.key_file', keyFile) }),
        };
  return await ClusterNode.create({
    nodeId: c.nodeId,
    ...(c.advertiseUrl === undefined ? {} : { advertiseUrl: c.advertiseUrl }),
    leaseTtlMs: c.leaseTtlMs,
    etcd: {
      endpoints: [...c.etcd.endpoints],
      prefix: c.etcd.prefix,
      ...(tls === undefined ? {} : { tls }),
      ...(username === undefined || password === undefined ? {} : { auth: { username, password } }),
    },
    keepSnapshots: c.keepSnapshots,
    log,
  });
}

/** Forwarding to and from peers, when the cluster is on and cluster.secret set (secret.ts says when it must be). */
export async function forwardingFromSettings(settings: Settings, cluster: ClusterNode, limits: FrontLimits, log: Logger): Promise<ClusterForwarding | undefined> {
  const secret = await clusterSecret(settings.cluster);
  if (secret === undefined) return undefined;
  return new ClusterForwarding({
    cluster,
    nodeId: settings.cluster.nodeId,
    secret,
    limits: {
      maxFrameBytes: limits.maxFrameBytes,
      highWaterBytes: limits.clientHighWaterBytes,
      lowWaterBytes: limits.clientLowWaterBytes,
      clientMaxBufferedBytes: limits.clientMaxBufferedBytes,
      slowClientTimeoutMs: limits.slowClientTimeoutMs,
      maxToPeerBytes: limits.maxUnackedToShardBytes,
      maxPendingBytes: FORWARD_PENDING_BYTES,
      connectTimeoutMs: FORWARD_CONNECT_TIMEOUT_MS,
    },
    log,
  });
}
