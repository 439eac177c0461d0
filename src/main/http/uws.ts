/**
 * The one place that loads uWebSockets.js, so the build can be swapped.
 * `@trufflesuite/uws-js-unofficial@20.30.0-unofficial.0` is the build whose
 * native addon loads on Node 20 with glibc 2.36. When its addon does not
 * load, the package silently falls back to a JavaScript shim without
 * backpressure; the gateway refuses to run on that.
 */
import { createRequire } from 'node:module';
import type * as UwsModule from '@trufflesuite/uws-js-unofficial';
import { GatewayError } from '../../shared/errors.js';

export type {
  HttpRequest,
  HttpResponse,
  TemplatedApp,
  WebSocket as UwsSocket,
  us_listen_socket as ListenSocket,
  us_socket_context_t as SocketContext,
} from '@trufflesuite/uws-js-unofficial';

type Uws = typeof UwsModule;

let loaded: Uws | undefined;

export function uws(): Uws {
  if (loaded !== undefined) return loaded;
  const require = createRequire(import.meta.url);
  const mod = require('@trufflesuite/uws-js-unofficial') as Uws;
  // The shim exports App but not SSLApp.
  if (typeof (mod as { SSLApp?: unknown }).SSLApp !== 'function') {
    throw new GatewayError('GW_INTERNAL', `the native uWebSockets.js addon did not load for Node ABI ${process.versions.modules} on ${process.platform}-${process.arch}; refusing the JavaScript fallback`);
  }
  loaded = mod;
  return mod;
}

/** `app.close()` exists at runtime but is missing from the bundled types. */
export function closeApp(app: UwsModule.TemplatedApp): void {
  (app as UwsModule.TemplatedApp & { close(): void }).close();
}

export function listen(app: UwsModule.TemplatedApp, host: string, port: number): Promise<{ socket: UwsModule.us_listen_socket; port: number }> {
  const u = uws();
  return new Promise((resolve, reject) => {
    app.listen(host, port, (socket) => {
      if (socket === false) {
        reject(new GatewayError('GW_SETTINGS', `cannot listen on ${host}:${port} (address in use or not available)`));
        return;
      }
      resolve({ socket, port: u.us_socket_local_port(socket) });
    });
  });
}

/** Decodes uWS's text form of a peer address. */
export function addressText(ab: ArrayBuffer): string {
  return Buffer.from(ab).toString('latin1');
}
