/**
 * The shipped HAProxy config (deploy/haproxy/haproxy.cfg) is accepted by
 * Debian's HAProxy (installed by .ci/run), and routes by the token's
 * workspace claim with consistent hashing, and keeps clients off the
 * gateways' forwarding hop. Live runs: test/cluster-routing-haproxy.test.ts
 * and test/cluster-routing-reload.test.ts.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const CFG = fileURLToPath(new URL('../deploy/haproxy/haproxy.cfg', import.meta.url));

describe('deploy/haproxy/haproxy.cfg', () => {
  it('haproxy -c accepts it', async () => {
    const { stdout } = await promisify(execFile)('haproxy', ['-c', '-f', CFG]);
    expect(stdout).toMatch(/Configuration file is valid/);
  });

  it('hashes the bearer token\'s workspace claim, consistently', async () => {
    const cfg = await readFile(CFG, 'utf8');
    expect(cfg).toMatch(/http-request set-var\(txn\.ws\) http_auth_bearer,jwt_payload_query\('\$\.workspace_id'\)/);
    expect(cfg).toMatch(/^\s*balance hash var\(txn\.ws\)$/m);
    expect(cfg).toMatch(/^\s*hash-type consistent$/m);
  });

  it('keeps clients off the forwarding hop between gateways', async () => {
    const cfg = await readFile(CFG, 'utf8');
    expect(cfg).toMatch(/^\s*http-request deny deny_status 403 if \{ path_beg \/cluster\/ \}$/m);
    expect(cfg).toMatch(/^\s*http-request del-header x-cxg-forward$/m);
  });
});
