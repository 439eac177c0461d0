/**
 * WebSocket close codes a client of the gateway can see, and why.
 */
export const CloseCode = {
  Normal: 1000,
  /** The gateway is shutting down, or the workspace was stopped (idle, admin). */
  GoingAway: 1001,
  /** Slow client or slow child past its limit. */
  PolicyViolation: 1008,
  /** A frame above the size limit. */
  MessageTooBig: 1009,
  /** The child failed to start, exited, or its connection failed. */
  InternalError: 1011,
  /** The gateway is restarting the workspace's child: reconnect. */
  ServiceRestart: 1012,
  /** Crash-loop backoff, capacity, shutdown in progress, or (cluster) the workspace runs on another gateway: retry later. */
  TryAgainLater: 1013,
} as const;

/**
 * Start failures a client should retry later (1013, HTTP 503): waiting
 * helps. GW_OWNED_ELSEWHERE: another gateway of the cluster runs the
 * workspace; a later try may land there, or find it free.
 */
export const RETRY_LATER_CODES: ReadonlySet<string> = new Set(['GW_CRASH_LOOP', 'GW_CAPACITY', 'GW_CLOSED', 'GW_OWNED_ELSEWHERE', 'GW_CLUSTER_UNAVAILABLE']);

export type GoneReasonName = 'shutdown' | 'idle' | 'restart' | 'drain' | 'evict' | 'fenced' | 'crash';

/** Every reason starts with a stable `GW_…` code; the words after it are for people. */
export function closeCodeForGone(reason: GoneReasonName): { code: number; text: string } {
  switch (reason) {
    case 'crash':
      return { code: CloseCode.InternalError, text: 'GW_CHILD_EXITED: codex app-server exited' };
    case 'restart':
      return { code: CloseCode.ServiceRestart, text: 'GW_RESTARTING: workspace restarting; reconnect' };
    case 'idle':
      return { code: CloseCode.GoingAway, text: 'GW_STOPPED: workspace stopped after being idle' };
    case 'drain':
      return { code: CloseCode.GoingAway, text: 'GW_CLOSED: gateway shutting down' };
    case 'evict':
      return { code: CloseCode.GoingAway, text: 'GW_STOPPED: workspace stopped to make room' };
    case 'shutdown':
      return { code: CloseCode.GoingAway, text: 'GW_STOPPED: workspace stopped' };
    case 'fenced':
      return { code: CloseCode.TryAgainLater, text: 'GW_OWNERSHIP_LOST: gateway could not prove it still owns the workspace; reconnect' };
  }
}

/**
 * A close code the child sent that may be passed on to the client as it is;
 * others (1005, 1006, reserved ranges) become 1011.
 */
export function forwardableCloseCode(code: number): number {
  if (code === 1000 || code === 1001 || code === 1003 || (code >= 1007 && code <= 1014 && code !== 1010) || (code >= 3000 && code <= 4999)) return code;
  return CloseCode.InternalError;
}
