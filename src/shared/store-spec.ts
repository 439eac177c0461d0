/**
 * A plain, cloneable description of an object store. The store's I/O runs in
 * the archive pool, so what crosses threads is this spec, never a client.
 */
export interface FileStoreSpec {
  kind: 'file';
  /** Directory holding one `<workspaceId>.tar.gz` per workspace. */
  dir: string;
}

export interface S3StoreSpec {
  kind: 's3';
  bucket: string;
  /** Key prefix, without leading or trailing slash; objects are `<prefix>/<workspaceId>.tar.gz`. */
  prefix?: string;
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  /** Static credentials; when absent the AWS SDK's default chain is used. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
}

export type StoreSpec = FileStoreSpec | S3StoreSpec;

export function objectName(workspaceId: string): string {
  return `${workspaceId}.tar.gz`;
}
