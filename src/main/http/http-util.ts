/**
 * Small helpers for answering HTTP on uWebSockets.js. Async handlers must
 * register onAborted before their first await and cork their response;
 * `asyncRoute` does both, so no route gets it wrong.
 */
import { STATUS_CODES } from 'node:http';
import type { Logger } from 'pino';
import { toGatewayError } from '../../shared/errors.js';
import { publicError } from '../../shared/public-error.js';
import type { HttpRequest, HttpResponse } from './uws.js';

export function statusLine(status: number): string {
  return `${status} ${STATUS_CODES[status] ?? 'Unknown'}`;
}

/** Writes a whole JSON response. Call corked when outside a uWS callback. */
export function sendJson(res: HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeStatus(statusLine(status));
  res.writeHeader('content-type', 'application/json');
  res.writeHeader('cache-control', 'no-store');
  for (const [k, v] of Object.entries(headers)) res.writeHeader(k, v);
  res.end(JSON.stringify(body));
}

export function sendText(res: HttpResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeStatus(statusLine(status));
  res.writeHeader('content-type', contentType);
  res.writeHeader('cache-control', 'no-store');
  res.end(body);
}

export interface HttpReply {
  status: number;
  body: unknown;
  /** Raw text body instead of JSON. */
  text?: { body: string; contentType: string };
  headers?: Record<string, string>;
}

export interface RequestInfo {
  method: string;
  url: string;
  query: string;
  headers: Record<string, string>;
  params: string[];
  remoteAddress: string;
  body: Buffer | undefined;
}

/** Error replies: `{ "error": { "code", "message" } }`. */
export function errorReply(status: number, code: string, message: string): HttpReply {
  return { status, body: { error: { code, message } } };
}

/** Writes an error reply (errorReply's body) at once. */
export function sendError(res: HttpResponse, status: number, code: string, message: string, headers: Record<string, string> = {}): void {
  sendJson(res, status, errorReply(status, code, message).body, headers);
}

const MAX_BODY = 1024 * 1024;

/**
 * Registers an async handler: copies the request (headers, params, peer,
 * body up to 1 MiB) while it is valid, answers corked, and turns a thrown
 * error into a 500 with its code.
 *
 * `gate` runs on the headers before any body is read: a request it refuses
 * (a missing or wrong token) is answered at once, so nobody without the
 * token can make the gateway buffer a body or wait for one.
 */
export function asyncRoute(
  paramCount: number,
  handler: (req: RequestInfo) => Promise<HttpReply>,
  log: Logger,
  gate?: (req: RequestInfo) => HttpReply | undefined,
): (res: HttpResponse, req: HttpRequest) => void {
  return (res, req) => {
    const headers: Record<string, string> = {};
    req.forEach((k, v) => {
      headers[k] = v;
    });
    const info: RequestInfo = {
      method: req.getMethod(),
      url: req.getUrl(),
      query: req.getQuery() ?? '',
      headers,
      params: Array.from({ length: paramCount }, (_, i) => req.getParameter(i)),
      remoteAddress: Buffer.from(res.getRemoteAddressAsText()).toString('latin1'),
      body: undefined,
    };
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    const respond = (reply: HttpReply): void => {
      if (aborted) return;
      res.cork(() => {
        if (reply.text !== undefined) {
          res.writeStatus(statusLine(reply.status));
          for (const [k, v] of Object.entries(reply.headers ?? {})) res.writeHeader(k, v);
          res.writeHeader('content-type', reply.text.contentType);
          res.end(reply.text.body);
        } else {
          sendJson(res, reply.status, reply.body, reply.headers);
        }
      });
    };
    const run = (): void => {
      handler(info).then(respond, (err: unknown) => {
        // The client gets the code; the message with its paths and URLs stays in the log.
        const e = toGatewayError(err);
        const pub = publicError(e);
        log.error({ url: info.url, peer: info.remoteAddress, err: e.describe() }, 'http handler failed');
        respond(errorReply(500, pub.code, pub.message));
      });
    };
    const refused = gate?.(info);
    if (refused !== undefined) {
      // No onData handler: whatever body follows is never buffered.
      respond(refused);
      return;
    }
    if (info.method === 'get' || info.method === 'head' || info.method === 'delete') {
      run();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    res.onData((chunk, last) => {
      size += chunk.byteLength;
      if (size > MAX_BODY) {
        if (!aborted) {
          aborted = true;
          res.cork(() => sendError(res, 413, 'GW_TOO_LARGE', 'request body too large'));
        }
        return;
      }
      chunks.push(Buffer.from(chunk.slice(0)));
      if (last && !aborted) {
        info.body = Buffer.concat(chunks);
        run();
      }
    });
  };
}
