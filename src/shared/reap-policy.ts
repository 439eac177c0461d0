import type { ReapOptions } from './protocol.js';

export interface ReapCandidate {
  lastActivity: number;
  startedAt: number;
  clients: number;
}

/**
 * Whether the idle reaper stops an entry: idle at least `idleAfterMs` with no
 * client attached, or idle past the hard limit even with clients (a client
 * that holds a connection open but never speaks), or older than `maxAgeMs`.
 */
export function shouldReap(c: ReapCandidate, now: number, o: ReapOptions): boolean {
  const idle = now - c.lastActivity;
  if (o.maxAgeMs !== undefined && o.maxAgeMs > 0 && now - c.startedAt >= o.maxAgeMs) return true;
  if (c.clients === 0) return idle >= o.idleAfterMs;
  return idle >= o.hardIdleAfterMs;
}
