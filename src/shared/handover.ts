/**
 * What a gateway hands a successor started on the same host with the same
 * data.dir (see docs/operations.md#handover-restart): one record per live
 * child it lets go of without stopping it. The successor adopts the child
 * from it: same process, same capability token, same loopback token, so
 * neither codex nor its reach-back to the gateway notices the restart.
 *
 * Records cross a Unix socket as JSON and then a MessagePort; they are
 * checked field by field on arrival (parseHandoverRecords), and a child whose
 * record does not pass is left to start-up recovery, which stops it and
 * stores its home (its state file names its pid).
 */
import { WORKSPACE_ID_PATTERN } from './workspace-id.js';

export interface HandoverRecord {
  workspaceId: string;
  generation: string;
  pid: number;
  /** /proc/PID/stat start time: the successor adopts only that very process, never a reused pid. */
  startTicks: number;
  wsUrl: string;
  httpUrl: string;
  /** The child's capability token (its argv holds only the SHA-256). */
  wsToken: string;
  /** The token the child sends back to the internal API (CXG_LOOPBACK_TOKEN in its environment). */
  loopbackToken: string;
  lastActivity: number;
  startedAt: number;
  /** Set while a pre-start no client claimed yet: the activity its warm-restart record gave it. */
  prestartedActivity?: number;
}

/** The handover socket's name in data.dir. */
export const HANDOVER_SOCKET = 'handover.sock';

const LOOPBACK_URL = /^ws:\/\/127\.0\.0\.1:\d{1,5}\/?$/;
const HTTP_URL = /^http:\/\/127\.0\.0\.1:\d{1,5}$/;
const TOKEN = /^[A-Za-z0-9_-]{16,256}$/;

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/** The records that are well formed; the rest are counted in `refused`. */
export function parseHandoverRecords(raw: unknown): { records: HandoverRecord[]; refused: number } {
  const records: HandoverRecord[] = [];
  let refused = 0;
  const seen = new Set<string>();
  for (const r of Array.isArray(raw) ? (raw as unknown[]) : []) {
    const o = (typeof r === 'object' && r !== null ? r : {}) as Record<string, unknown>;
    const ok =
      typeof o.workspaceId === 'string' && WORKSPACE_ID_PATTERN.test(o.workspaceId) && o.workspaceId !== '.' && o.workspaceId !== '..' && !seen.has(o.workspaceId) &&
      typeof o.generation === 'string' && /^[0-9a-z-]{1,64}$/.test(o.generation) &&
      isCount(o.pid) && o.pid > 1 && isCount(o.startTicks) &&
      typeof o.wsUrl === 'string' && LOOPBACK_URL.test(o.wsUrl) && typeof o.httpUrl === 'string' && HTTP_URL.test(o.httpUrl) &&
      typeof o.wsToken === 'string' && TOKEN.test(o.wsToken) && typeof o.loopbackToken === 'string' && TOKEN.test(o.loopbackToken) &&
      isCount(o.lastActivity) && isCount(o.startedAt) && (o.prestartedActivity === undefined || isCount(o.prestartedActivity));
    if (!ok) {
      refused++;
      continue;
    }
    seen.add(o.workspaceId as string);
    records.push({
      workspaceId: o.workspaceId as string,
      generation: o.generation as string,
      pid: o.pid as number,
      startTicks: o.startTicks as number,
      wsUrl: o.wsUrl as string,
      httpUrl: o.httpUrl as string,
      wsToken: o.wsToken as string,
      loopbackToken: o.loopbackToken as string,
      lastActivity: o.lastActivity as number,
      startedAt: o.startedAt as number,
      ...(o.prestartedActivity === undefined ? {} : { prestartedActivity: o.prestartedActivity as number }),
    });
  }
  return { records, refused };
}
