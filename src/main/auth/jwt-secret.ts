/**
 * The HS256 key for client tokens. When nothing is configured the gateway
 * keeps one in `<data.dir>/jwt.secret`, created on first use, so `npm start`
 * on a fresh machine works and `codex-app-gateway token` signs with the same
 * key the server checks.
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { GatewayError } from '../../shared/errors.js';
import type { Settings } from '../settings/spec.js';

/** 256 bits, as RFC 7518 asks of an HS256 key; the generated key is 64 hex characters. */
export const MIN_SECRET_LENGTH = 32;

/** The file's content without surrounding whitespace (editors add a newline). */
export async function readJwtSecretFile(file: string): Promise<string> {
  const secret = (await readFile(file, 'utf8')).trim();
  if (secret.length < MIN_SECRET_LENGTH) {
    throw new GatewayError('GW_SETTINGS', `auth.jwt.secret_file ${file}: expected at least ${MIN_SECRET_LENGTH} characters, got ${secret.length}`);
  }
  return secret;
}

/**
 * The configured secret; else, when tokens are not verified remotely, the
 * content of auth.jwt.secret_file, created (32 random bytes as hex, mode 0600
 * in a 0700 directory) if it does not exist yet.
 */
export async function ensureJwtSecret(settings: Settings): Promise<string> {
  const { secret, secretFile } = settings.auth.jwt;
  if (secret !== undefined) return secret;
  if (settings.auth.verifyUrl !== undefined) {
    // A locally signed token would not be accepted by the remote verifier anyway.
    throw new GatewayError('GW_SETTINGS', 'auth.jwt.secret: not set, and auth.verify_url is set, so tokens are checked remotely; set auth.jwt.secret (CXG_AUTH_JWT_SECRET) to sign tokens locally');
  }
  if (settings.auth.jwt.jwksFile !== undefined) {
    // Tokens come from the identity provider whose keys are in the JWKS file.
    throw new GatewayError('GW_SETTINGS', 'auth.jwt.secret: not set, and auth.jwt.jwks_file is set, so tokens are signed by an identity provider; set auth.jwt.secret (CXG_AUTH_JWT_SECRET) to sign tokens locally too');
  }
  try {
    return await readJwtSecretFile(secretFile);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw toSettingsError(secretFile, err);
  }
  try {
    await createKeyFile(secretFile);
    return await readJwtSecretFile(secretFile);
  } catch (err) {
    throw toSettingsError(secretFile, err);
  }
}

/**
 * Written whole to a private temporary name, then linked into place: link()
 * fails if the name exists, so when two processes race both end up reading
 * the winner's complete key, never a half-written file.
 */
async function createKeyFile(file: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  try {
    await link(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    await rm(tmp, { force: true });
  }
}

function toSettingsError(file: string, err: unknown): GatewayError {
  if (err instanceof GatewayError) return err;
  const code = (err as NodeJS.ErrnoException).code ?? String(err);
  return new GatewayError('GW_SETTINGS', `auth.jwt.secret_file ${file}: cannot read or create it (${code})`, { cause: err });
}
