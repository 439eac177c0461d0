/**
 * What a client may learn about an error: its stable code and the code's
 * short fixed message (ERROR_CODES), never the error's own message. Those
 * messages are written for the log and often carry host paths, store URLs
 * (`s3://bucket/…`), codex's stderr or a config builder's error text.
 * Whoever sends a public error logs the full one (`describe()`) next to the
 * connection id, so an operator can find it from what the client reports.
 */
import { ERROR_CODES, isGatewayError } from './errors.js';
import type { ErrorCode } from './errors.js';

export interface PublicError {
  code: ErrorCode;
  message: string;
}

/** The public face of `err`; anything but a GatewayError is GW_INTERNAL. */
export function publicError(err: unknown): PublicError {
  if (!isGatewayError(err)) return { code: 'GW_INTERNAL', message: ERROR_CODES.GW_INTERNAL };
  let message: string = ERROR_CODES[err.code];
  // Built from a number only: when a crash-looping workspace may start again.
  const retryAfterMs = err.details?.retryAfterMs;
  if (err.code === 'GW_CRASH_LOOP' && typeof retryAfterMs === 'number' && Number.isFinite(retryAfterMs)) message += ` in ${Math.ceil(retryAfterMs / 1000)} s`;
  return { code: err.code, message };
}

/** A close reason: `CODE: message`, at most 123 bytes as the protocol asks. */
export function publicReason(err: unknown): string {
  const e = publicError(err);
  return truncateReason(`${e.code}: ${e.message}`);
}

/** `CODE: message` for a code, with its fixed message. */
export function reasonFor(code: ErrorCode): string {
  return truncateReason(`${code}: ${ERROR_CODES[code]}`);
}

/** Close reasons are limited to 123 bytes by the protocol. */
export function truncateReason(reason: string): string {
  const buf = Buffer.from(reason);
  if (buf.byteLength <= 123) return reason;
  let s = buf.subarray(0, 120).toString();
  while (Buffer.byteLength(s) > 120) s = s.slice(0, -1);
  return `${s.replace(/\uFFFD$/, '')}…`;
}
