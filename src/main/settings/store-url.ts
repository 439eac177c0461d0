/**
 * `store.url` names the object store in one string: `file:///abs/dir` or
 * `s3://bucket/optional/prefix`. Anything else is refused at load time, so a
 * typo never falls back to some other store.
 */
import { fileURLToPath } from 'node:url';
import type { StoreSpec } from '../../shared/store-spec.js';
import type { Settings } from './spec.js';

// S3's rules for new buckets: 3-63 of [a-z0-9.-], starting and ending alphanumeric.
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

type StoreLocation = { kind: 'file'; dir: string } | { kind: 's3'; bucket: string; prefix?: string };

export function parseStoreUrl(url: string | URL): StoreLocation | undefined {
  let u: URL;
  try {
    u = typeof url === 'string' ? new URL(url) : url;
  } catch {
    return undefined;
  }
  if (u.search !== '' || u.hash !== '' || u.username !== '' || u.password !== '') return undefined;
  if (u.protocol === 'file:') {
    if (u.hostname !== '') return undefined;
    return { kind: 'file', dir: fileURLToPath(u) };
  }
  if (u.protocol === 's3:') {
    if (!BUCKET.test(u.hostname) || u.port !== '') return undefined;
    let prefix: string;
    try {
      prefix = decodeURIComponent(u.pathname).split('/').filter(Boolean).join('/');
    } catch {
      return undefined;
    }
    return prefix === '' ? { kind: 's3', bucket: u.hostname } : { kind: 's3', bucket: u.hostname, prefix };
  }
  return undefined;
}

export function isStoreUrl(u: URL): boolean {
  return parseStoreUrl(u) !== undefined;
}

/** The store the settings name, with the S3 options applied to an s3:// URL. */
export function storeSpecFromSettings(settings: Settings): StoreSpec {
  const loc = parseStoreUrl(settings.store.url);
  // loadSettings has already refused any other URL.
  if (loc === undefined) throw new Error(`store.url ${settings.store.url} is not a store URL`);
  if (loc.kind === 'file') return loc;
  const s3 = settings.store.s3;
  return {
    ...loc,
    region: s3.region,
    forcePathStyle: s3.forcePathStyle,
    ...(s3.endpoint === undefined ? {} : { endpoint: s3.endpoint }),
  };
}
