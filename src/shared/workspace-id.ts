import { GatewayError } from './errors.js';

export const WORKSPACE_ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * A workspace id becomes a directory name and an object key, so it is held to
 * a safe alphabet before any work is done for it.
 */
export function validateWorkspaceId(id: unknown): string {
  if (typeof id !== 'string' || !WORKSPACE_ID_PATTERN.test(id) || id === '.' || id === '..') {
    const shown = typeof id === 'string' ? JSON.stringify(id.length > 64 ? `${id.slice(0, 64)}…` : id) : typeof id;
    throw new GatewayError('GW_BAD_WORKSPACE_ID', `bad workspace id ${shown}: must be 1-128 characters of [A-Za-z0-9._-], not "." or ".."`);
  }
  return id;
}

/**
 * Stable shard index for a workspace: FNV-1a (32-bit) of its UTF-8 bytes.
 * Stable across processes and restarts, so a workspace always lands on the
 * same shard for a given shard count.
 */
export function shardOf(workspaceId: string, shards: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < workspaceId.length; i++) {
    // Workspace ids are ASCII (validated above), so char codes are bytes.
    h ^= workspaceId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % shards;
}
