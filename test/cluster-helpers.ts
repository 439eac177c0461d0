/**
 * What the cluster tests share: a node's `[admin]` and `[cluster]` config
 * lines, its admin API, bounded waits, and the etcd records a test asserts
 * on (the owner key and the current-state pointer), read straight from etcd
 * as an operator would with etcdctl.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Etcd3 } from 'etcd3';
import { fakeCodexBin } from './fixtures/codex-home.js';
import { gatewayToml } from './gateway-process.js';
import type { GatewayProcess } from './gateway-process.js';

export const CLUSTER_ADMIN_TOKEN = 'admin-token-admin-token-0123456789';

/** The config lines that make a gateway node `nodeId` of the cluster behind `endpoint` (keys under `prefix`). */
export function clusterLines(o: { nodeId: string; endpoint: string; prefix: string; leaseTtl?: string }): string[] {
  return [
    '[admin]',
    `token = ${JSON.stringify(CLUSTER_ADMIN_TOKEN)}`,
    '[cluster]',
    `node_id = ${JSON.stringify(o.nodeId)}`,
    `lease_ttl = ${JSON.stringify(o.leaseTtl ?? '3s')}`,
    '[cluster.etcd]',
    `endpoints = [${JSON.stringify(o.endpoint)}]`,
    `prefix = ${JSON.stringify(o.prefix)}`,
  ];
}

/** A gateway.toml with the fake codex: data under `dir`, port 0, the file store at `store` (a directory), HS256 with `jwtSecret`, plus `extra` lines. */
export function fakeCodexToml(o: { dir: string; store: string; jwtSecret: string; extra: string[] }): string {
  return gatewayToml({ dir: o.dir, secret: o.jwtSecret, extra: ['[codex]', `bin = ${JSON.stringify(fakeCodexBin())}`, '[store]', `url = ${JSON.stringify(pathToFileURL(path.resolve(o.store)).href)}`, ...o.extra] });
}

/** `p`, or a failure naming `what` once `ms` have passed: no step of the cluster tests waits unbounded. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

export function closeText(c: { code: number; reason: string }): string {
  return `${c.code} ${c.reason}`;
}

/** A call to a node's admin API. */
export async function admin(gw: GatewayProcess, route: string, method = 'GET'): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${gw.internalUrl}${route}`, { method, headers: { authorization: `Bearer ${CLUSTER_ADMIN_TOKEN}` } });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

/** Workspaces whose child runs on `gw` now (its admin API). */
export async function runningOn(gw: GatewayProcess): Promise<string[]> {
  const body = (await admin(gw, '/admin/workspaces')).body as { workspaces: Array<{ workspace_id: string }> };
  return body.workspaces.map((w) => w.workspace_id);
}

/** The cluster's records of one workspace in etcd: its owner and its current-state pointer (null: none). */
export async function etcdRecords(endpoint: string, prefix: string, workspaceId: string): Promise<{ owner: { node: string; epoch: number } | null; state: { snapshot: string; epoch: number; generation: string } | null }> {
  const client = new Etcd3({ hosts: [endpoint] });
  try {
    const [owner, state] = await Promise.all([client.get(`${prefix}owner/${workspaceId}`).json(), client.get(`${prefix}state/${workspaceId}`).json()]);
    return { owner: owner as { node: string; epoch: number } | null, state: state as { snapshot: string; epoch: number; generation: string } | null };
  } finally {
    client.close();
  }
}
