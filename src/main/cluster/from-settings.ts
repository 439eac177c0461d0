/**
 * The [cluster] settings as a ClusterNode, or undefined when no etcd
 * endpoint is set (a single gateway: nothing of the cluster runs).
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { GatewayError } from '../../shared/errors.js';
import type { Settings } from '../settings/load.js';
import { ClusterNode } from './ownership.js';

export async function clusterFromSettings(settings: Settings, log: Logger): Promise<ClusterNode | undefined> {
  const c = settings.cluster;
  if (c.etcd.endpoints.length === 0) return undefined;
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
