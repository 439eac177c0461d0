/**
 * One pino logger per thread. No transports (each would start a thread):
 * JSON to stdout through an async destination, or pino-pretty in-thread when
 * stdout is a terminal.
 */
import { pino } from 'pino';
import type { Logger, LoggerOptions } from 'pino';
import pretty from 'pino-pretty';

export type { Logger } from 'pino';

/** Fields that may carry credentials, censored wherever they appear. */
export const REDACT_PATHS: readonly string[] = [
  'token',
  'wsToken',
  'loopbackToken',
  'secret',
  'password',
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  '*.token',
  '*.wsToken',
  '*.loopbackToken',
  '*.secret',
  '*.authorization',
  'env',
  '*.env',
  'credentials',
  '*.credentials',
];

export interface ThreadLoggerOptions {
  level: string;
  /** Pretty output (only when stdout is a terminal). */
  pretty: boolean;
  base: Record<string, unknown>;
  /** Where JSON lines go instead of stdout (tests). */
  destination?: NodeJS.WritableStream;
}

export function createThreadLogger(o: ThreadLoggerOptions): Logger {
  const options: LoggerOptions = {
    level: o.level,
    base: o.base,
    redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
  };
  if (o.destination !== undefined) return pino(options, o.destination);
  if (o.pretty) {
    return pino(options, pretty({ colorize: true, sync: true, destination: 1 }));
  }
  return pino(options, pino.destination({ dest: 1, sync: false }));
}

/** Default level when none is given: CXG_LOG_LEVEL, else info. */
export function defaultLogLevel(): string {
  return process.env.CXG_LOG_LEVEL ?? 'info';
}

/** Flush whatever an async destination still holds (call before a thread exits). */
export function flushLogger(logger: Logger): void {
  try {
    logger.flush();
  } catch {
    // A destination that was never opened has nothing to flush.
  }
}
