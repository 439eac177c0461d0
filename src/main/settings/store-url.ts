/**
 * `store.url` names the object store in one string: `file:///abs/dir` or
 * `s3://bucket/optional/prefix`. Anything else is refused at load time, so a
 * typo never falls back to some other store.
 */
import { fileURLToPath } from 'node:url';

// S3's rules for new buckets: 3-63 of [a-z0-9.-], starting and ending alphanumeric.
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export type StoreLocation = { kind: 'file'; dir: string } | { kind: 's3'; bucket: string; prefix?: string };

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
