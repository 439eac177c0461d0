/**
 * What the front door asks of an authenticator: a bearer token in, the
 * workspace it grants out. Every implementation fails with GW_UNAUTHORIZED
 * (the token is no good: answer 401) or GW_AUTH_UNAVAILABLE (could not tell
 * right now: answer 503, the client may retry). Messages reach the client, so
 * they never carry the token, a secret or an internal address.
 */
import { GatewayError } from '../../shared/errors.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';

export interface Authenticator {
  verify(token: string): Promise<{ workspaceId: string }>;
  /**
   * The answer without waiting, when there is one: the workspace, or a throw
   * as from verify(); undefined when only verify() can tell (a remote
   * verifier's cache miss). On an answer here the front upgrades or refuses
   * (HTTP 401/503) at once; without one it upgrades at once and verifies
   * after, closing with 1008 or 1013 on a refusal: uWS 20.30 can cut a socket
   * it upgraded after an await from res.cork (docs/operations.md, "Clients
   * dropped right after connecting").
   */
  verifyNow?(token: string): { workspaceId: string } | undefined;
}

/**
 * Real tokens are well under 2 KiB. Verifying (or forwarding) megabytes
 * because a client sent them is cheap for an attacker and costly for us.
 */
export const MAX_TOKEN_LENGTH = 8192;

export function checkTokenShape(token: string): void {
  if (typeof token !== 'string' || token === '') throw new GatewayError('GW_UNAUTHORIZED', 'empty bearer token');
  if (token.length > MAX_TOKEN_LENGTH) throw new GatewayError('GW_UNAUTHORIZED', `bearer token longer than ${MAX_TOKEN_LENGTH} characters`);
}

/**
 * The workspace a verified token names. It becomes a directory name and an
 * object key, so a token that names "../x" is refused like a forged one.
 */
export function workspaceIdFromClaim(value: unknown, claim: string): string {
  if (value === undefined || value === null) throw new GatewayError('GW_UNAUTHORIZED', `token has no "${claim}" claim`);
  try {
    return validateWorkspaceId(value);
  } catch (err) {
    throw new GatewayError('GW_UNAUTHORIZED', `the workspace claim "${claim}" is invalid: it must be 1-128 characters of [A-Za-z0-9._-], not "." or ".."`, { cause: err });
  }
}
