/** A store rebuilt from its cloneable StoreSpec, in the thread that uses it. */
import { GatewayError } from '../errors.js';
import type { StoreSpec } from '../store-spec.js';
import { FileObjectStore } from './file-store.js';
import type { ObjectStore } from './object-store.js';
import { S3ObjectStore } from './s3-store.js';

export function storeFromSpec(spec: StoreSpec): ObjectStore {
  switch (spec.kind) {
    case 'file':
      return new FileObjectStore(spec.dir);
    case 's3': {
      const { kind: _kind, ...opts } = spec;
      return new S3ObjectStore(opts);
    }
    default: {
      const unknown: never = spec;
      throw new GatewayError('GW_SETTINGS', `unknown object store kind ${JSON.stringify((unknown as { kind?: unknown }).kind)}`);
    }
  }
}
