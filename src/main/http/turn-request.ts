/**
 * The body of POST /api/turns, checked before anything runs. The shape is
 * the Go gateway's: `{workspaceId, threadId?, params, timeoutMs?}`, where
 * `params` are codex `turn/start` params (their own `threadId`, if any, must
 * agree with the body's). `interruptOnDisconnect` is this gateway's own
 * option. Unknown top-level fields are ignored, so clients may send more.
 */
import { isGatewayError } from '../../shared/errors.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';

export interface TurnApiOptions {
  /** Deadline of a turn whose request names none. */
  defaultTimeoutMs: number;
  /** Largest `timeoutMs` a request may ask for. */
  maxTimeoutMs: number;
  /** Largest request body. */
  maxBodyBytes: number;
}

export const DEFAULT_TURN_API: TurnApiOptions = {
  defaultTimeoutMs: 10 * 60_000,
  maxTimeoutMs: 60 * 60_000,
  maxBodyBytes: 1024 * 1024,
};

export interface TurnBody {
  workspaceId: string;
  threadId: string | undefined;
  params: Record<string, unknown>;
  timeoutMs: number;
  /** Interrupt the turn when the HTTP client goes away before it ends. */
  interruptOnDisconnect: boolean;
}

export interface TurnBodyError {
  code: 'GW_BAD_REQUEST' | 'GW_BAD_WORKSPACE_ID';
  message: string;
}

const MAX_THREAD_ID = 256;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function bad(message: string): TurnBodyError {
  return { code: 'GW_BAD_REQUEST', message };
}

export function parseTurnBody(body: Buffer, o: Pick<TurnApiOptions, 'defaultTimeoutMs' | 'maxTimeoutMs'>): TurnBody | TurnBodyError {
  let v: unknown;
  try {
    v = JSON.parse(body.toString('utf8'));
  } catch {
    return bad('the body is not JSON');
  }
  if (!isObject(v)) return bad('the body must be a JSON object {workspaceId, threadId?, params, timeoutMs?}');
  let workspaceId: string;
  try {
    workspaceId = validateWorkspaceId(v.workspaceId);
  } catch (err) {
    if (isGatewayError(err)) return { code: 'GW_BAD_WORKSPACE_ID', message: `workspaceId: ${err.message}` };
    throw err;
  }
  const params = v.params;
  if (!isObject(params)) return bad('params must be an object: codex turn/start params');
  if (!Array.isArray(params.input)) return bad('params.input must be an array of codex user inputs');
  const threadIds = [v.threadId, params.threadId].filter((t) => t !== undefined && t !== null);
  for (const t of threadIds) {
    if (typeof t !== 'string' || t.length === 0 || t.length > MAX_THREAD_ID) return bad(`threadId must be a string of 1-${MAX_THREAD_ID} characters`);
  }
  if (threadIds.length === 2 && threadIds[0] !== threadIds[1]) return bad('threadId and params.threadId differ');
  let timeoutMs = o.defaultTimeoutMs;
  if (v.timeoutMs !== undefined && v.timeoutMs !== null) {
    if (typeof v.timeoutMs !== 'number' || !Number.isInteger(v.timeoutMs) || v.timeoutMs < 1 || v.timeoutMs > o.maxTimeoutMs) {
      return bad(`timeoutMs must be an integer from 1 to ${o.maxTimeoutMs}`);
    }
    timeoutMs = v.timeoutMs;
  }
  if (v.interruptOnDisconnect !== undefined && typeof v.interruptOnDisconnect !== 'boolean') return bad('interruptOnDisconnect must be a boolean');
  const { threadId: _drop, ...rest } = params;
  return {
    workspaceId,
    threadId: threadIds[0] as string | undefined,
    params: rest,
    timeoutMs,
    interruptOnDisconnect: v.interruptOnDisconnect === true,
  };
}

export function isTurnBodyError(x: TurnBody | TurnBodyError): x is TurnBodyError {
  return 'code' in x;
}
