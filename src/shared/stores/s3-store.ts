/**
 * An object store in an S3 bucket (or an S3-compatible server):
 * `s3://<bucket>/<prefix>/<workspaceId>.tar.gz`.
 *
 * The AWS SDK is loaded on first use, not on import: a gateway running on the
 * file store never pays for it, and neither does any thread that only builds
 * specs.
 */
import { Readable } from 'node:stream';
import type * as ClientS3 from '@aws-sdk/client-s3';
import type * as LibStorage from '@aws-sdk/lib-storage';
import type { ErrorCode } from '../errors.js';
import { GatewayError, isGatewayError } from '../errors.js';
import type { S3StoreSpec } from '../store-spec.js';
import { objectName } from '../store-spec.js';
import { validateWorkspaceId } from '../workspace-id.js';
import type { ObjectHead, ObjectMeta, ObjectStore } from './object-store.js';

/** User metadata (x-amz-meta-cxg-generation) naming the generation an object was packed from. */
const GENERATION_META = 'cxg-generation';
/** User metadata naming the CODEX_HOME an object was packed from, URI-encoded (S3 metadata is ASCII). */
const HOME_PATH_META = 'cxg-home-path';

/** Multipart upload shape: memory held per upload is about PART_SIZE × QUEUE_SIZE. */
const PART_SIZE = 8 * 1024 * 1024;
const QUEUE_SIZE = 4;
/** A store that accepts no connection within this is treated as down, not waited on. */
const CONNECTION_TIMEOUT_MS = 5_000;
/** A request or response body that moves no byte for this long fails (TimeoutError) instead of hanging a worker. */
const SOCKET_IDLE_TIMEOUT_MS = 120_000;

interface Sdk {
  s3: typeof ClientS3;
  Upload: typeof LibStorage.Upload;
  client: ClientS3.S3Client;
}

export class S3ObjectStore implements ObjectStore {
  readonly spec: S3StoreSpec;
  #sdk: Promise<Sdk> | undefined;

  constructor(opts: Omit<S3StoreSpec, 'kind'>) {
    this.spec = { kind: 's3', ...opts };
  }

  key(workspaceId: string): string {
    const name = objectName(validateWorkspaceId(workspaceId));
    return this.spec.prefix ? `${this.spec.prefix}/${name}` : name;
  }

  describe(workspaceId: string): string {
    return `s3://${this.spec.bucket}/${this.key(workspaceId)}`;
  }

  async get(workspaceId: string): Promise<Readable | undefined> {
    return (await this.open(workspaceId))?.body;
  }

  async open(workspaceId: string): Promise<{ body: Readable; meta: ObjectMeta } | undefined> {
    const { s3, client } = await this.sdk();
    let body: unknown;
    let meta: ObjectMeta;
    try {
      const out = await client.send(new s3.GetObjectCommand({ Bucket: this.spec.bucket, Key: this.key(workspaceId) }));
      body = out.Body;
      meta = metaOf(out.Metadata);
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw storeError(err, 'GW_STORE_DOWNLOAD', `download ${this.describe(workspaceId)}`);
    }
    if (!(body instanceof Readable)) {
      throw new GatewayError('GW_STORE_DOWNLOAD', `download ${this.describe(workspaceId)}: response has no body stream`);
    }
    const what = `download ${this.describe(workspaceId)}`;
    return { body: Readable.from(mapErrors(body, (err) => storeError(err, 'GW_STORE_DOWNLOAD', what)), { objectMode: false }), meta };
  }

  async put(workspaceId: string, body: Readable, meta: ObjectMeta = {}): Promise<{ bytes: number }> {
    let bytes = 0;
    let bodyError: unknown;
    const counted = Readable.from(
      (async function* count() {
        try {
          for await (const chunk of body as AsyncIterable<Buffer>) {
            bytes += chunk.length;
            yield chunk;
          }
        } catch (err) {
          // An AbortError is Upload tearing the body down after its own failure, not a failure of the body.
          if (!(err instanceof Error && err.name === 'AbortError')) bodyError = err;
          throw err;
        }
      })(),
      { objectMode: false },
    );
    try {
      const { Upload, client } = await this.sdk();
      // A multipart upload becomes an object only on CompleteMultipartUpload,
      // and a body shorter than one part is sent as one PutObject after it has
      // been read to the end: either way a failed body never replaces the
      // previous object. Failed multipart uploads are aborted
      // (leavePartsOnError: false), so no parts are left behind.
      const upload = new Upload({
        client,
        params: {
          Bucket: this.spec.bucket,
          Key: this.key(workspaceId),
          Body: counted,
          ContentType: 'application/gzip',
          Metadata: {
            ...(meta.generation === undefined ? {} : { [GENERATION_META]: meta.generation }),
            ...(meta.homePath === undefined ? {} : { [HOME_PATH_META]: encodeURIComponent(meta.homePath) }),
          },
        },
        partSize: PART_SIZE,
        queueSize: QUEUE_SIZE,
        leavePartsOnError: false,
      });
      await upload.done();
      return { bytes };
    } catch (err) {
      counted.destroy();
      body.destroy();
      // Upload reports a failure of its abort in place of the body's error
      // (s3rver, for one, refuses AbortMultipartUpload): the body's error is
      // the cause worth reporting.
      throw storeError(bodyError ?? err, 'GW_STORE_UPLOAD', `upload ${this.describe(workspaceId)}`);
    }
  }

  async head(workspaceId: string): Promise<ObjectHead | undefined> {
    const { s3, client } = await this.sdk();
    try {
      const out = await client.send(new s3.HeadObjectCommand({ Bucket: this.spec.bucket, Key: this.key(workspaceId) }));
      const { generation } = metaOf(out.Metadata);
      const head = { bytes: out.ContentLength ?? 0, modified: out.LastModified ?? new Date(0) };
      return generation === undefined ? head : { ...head, generation };
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw storeError(err, 'GW_STORE_DOWNLOAD', `stat ${this.describe(workspaceId)}`);
    }
  }

  async delete(workspaceId: string): Promise<void> {
    const { s3, client } = await this.sdk();
    try {
      await client.send(new s3.DeleteObjectCommand({ Bucket: this.spec.bucket, Key: this.key(workspaceId) }));
    } catch (err) {
      throw storeError(err, 'GW_STORE_UPLOAD', `delete ${this.describe(workspaceId)}`);
    }
  }

  /** One client per store instance, created on first use; a failed load is retried on the next call. */
  private sdk(): Promise<Sdk> {
    this.#sdk ??= loadSdk(this.spec).catch((err: unknown) => {
      this.#sdk = undefined;
      throw new GatewayError('GW_INTERNAL', 'load the AWS SDK', { cause: err });
    });
    return this.#sdk;
  }
}

async function loadSdk(spec: S3StoreSpec): Promise<Sdk> {
  // The SDK warns on every process that runs Node below 22; this gateway
  // requires Node 20 (its uWebSockets.js build) and pins the SDK in its
  // lockfile, so the warning tells an operator nothing they can act on.
  // An operator's own setting wins.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const [s3, storage] = await Promise.all([import('@aws-sdk/client-s3'), import('@aws-sdk/lib-storage')]);
  const custom = spec.endpoint !== undefined;
  const config: ClientS3.S3ClientConfig = {
    requestHandler: { connectionTimeout: CONNECTION_TIMEOUT_MS, socketTimeout: SOCKET_IDLE_TIMEOUT_MS },
    forcePathStyle: spec.forcePathStyle ?? custom,
  };
  if (custom) {
    config.endpoint = spec.endpoint;
    // S3-compatible servers commonly reject the SDK's default CRC32 checksums.
    config.requestChecksumCalculation = 'WHEN_REQUIRED';
    config.responseChecksumValidation = 'WHEN_REQUIRED';
  }
  // Without a region the SDK's default chain (AWS_REGION, profile) decides;
  // a custom endpoint usually ignores the region but signing still needs one.
  const region = spec.region ?? (custom ? 'us-east-1' : undefined);
  if (region !== undefined) config.region = region;
  // Without static credentials the SDK's default provider chain applies.
  if (spec.credentials !== undefined) config.credentials = { ...spec.credentials };
  return { s3, Upload: storage.Upload, client: new s3.S3Client(config) };
}

async function* mapErrors(body: Readable, map: (err: unknown) => unknown): AsyncGenerator<Buffer> {
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) yield chunk;
  } catch (err) {
    throw map(err);
  }
}


/** What a put recorded, from an object's user metadata. */
function metaOf(metadata: Record<string, string> | undefined): ObjectMeta {
  const generation = metadata?.[GENERATION_META];
  const homePath = metadata?.[HOME_PATH_META];
  let decoded: string | undefined;
  try {
    decoded = homePath === undefined || homePath === '' ? undefined : decodeURIComponent(homePath);
  } catch {
    decoded = undefined;
  }
  return {
    ...(generation === undefined || generation === '' ? {} : { generation }),
    ...(decoded === undefined ? {} : { homePath: decoded }),
  };
}

/**
 * No object under the key. A missing bucket is not "no object": reading it as
 * a fresh workspace would hide a misconfiguration behind an empty home.
 * (HeadObject cannot tell the two apart: its 404 has no body.)
 */
function isMissing(err: unknown): boolean {
  const e = err as { name?: unknown; $metadata?: { httpStatusCode?: unknown } } | undefined;
  if (e?.name === 'NoSuchBucket') return false;
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

/** Socket-level failures that mean "the store is not there", as opposed to "the store said no". */
const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EPIPE',
]);

function isUnreachable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && UNREACHABLE.has(code)) return true;
    if (e.name === 'TimeoutError') return true;
    const status = (e as { $metadata?: { httpStatusCode?: unknown } }).$metadata?.httpStatusCode;
    if (status === 503) return true;
  }
  return false;
}

function storeError(err: unknown, code: ErrorCode, what: string): GatewayError {
  if (isGatewayError(err)) return err;
  if (isUnreachable(err)) return new GatewayError('GW_STORE_UNAVAILABLE', `${what}: object store unreachable`, { cause: err });
  return new GatewayError(code, what, { cause: err });
}
