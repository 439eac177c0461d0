/**
 * A fixed bearer token guarding an operator endpoint (admin API, /metrics),
 * compared in constant time so the answer's timing does not leak it.
 */
import { sameSecret } from '../../shared/secrets.js';
import { bearerToken } from './front-door.js';
import { errorReply } from '../http/http-util.js';
import type { HttpReply } from '../http/http-util.js';

/** undefined when `header` carries `token`; else the 401 to send. */
export function checkBearer(header: string | undefined, token: string): HttpReply | undefined {
  const given = bearerToken(header);
  if (given === undefined) return { ...errorReply(401, 'GW_UNAUTHORIZED', 'missing bearer token'), headers: { 'www-authenticate': 'Bearer' } };
  if (!sameSecret(given, token)) return { ...errorReply(401, 'GW_UNAUTHORIZED', 'wrong token'), headers: { 'www-authenticate': 'Bearer error="invalid_token"' } };
  return undefined;
}
