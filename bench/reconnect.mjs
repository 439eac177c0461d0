// reconnect: a deploy's thundering herd. The real codex behind the gateway
// as a real process (`bin/codex-app-gateway.mjs serve`), the Responses mock
// (test/fixtures/responses-mock.ts) as the model provider. Set-up: every
// workspace gets a thread with one finished turn. Then, per storm, the
// gateway is restarted as on every deploy (SIGTERM: drain; then a new
// process on the same data dir) while every workspace has its clients
// connected; once the new process listens, each workspace's clients
// reconnect at once, the workspaces in a shuffled order (another in each
// storm, so unrelated to their recency, which the previous storm's order set)
// spread evenly over BENCH_RECONNECT_SPREAD_MS
// (10 s: clients come back over some seconds, as reconnect back-offs and
// people do; 0 is every client at the same instant), and each measures the
// time from its own first connect attempt to the answer to `initialize`,
// then resumes its workspace's thread (`thread/resume`).
//
// Storms: warm restart off (`warm_restart.max = 0`: every start waits for
// its client), on, and the handover restart (`restart.handover`: the new
// process is started while the old one runs and adopts its codex children,
// so no workspace starts at all), each plain and while TURN_WORKSPACES other workspaces
// (not live at the drain) start with the storm and run turns back to back
// until it is over. The "off" storm is the anchor: the same herd without
// pre-starts, measured in the same run.
//
// Run with tsx (the fixtures are TypeScript): `node --import tsx
// bench/reconnect.mjs` (bench/run.mjs does). Env: BENCH_RECONNECT_WORKSPACES
// (60), BENCH_RECONNECT_CLIENTS (2 per workspace), BENCH_RECONNECT_TURN_WORKSPACES
// (20), BENCH_RECONNECT_STORMS (plain-off,plain-on,plain-handover,
// turns-off,turns-on,turns-handover).
// Bounded: a client gives up after 60 s, set-up after 10 min; every process
// is stopped by pid at the end.
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { signWorkspaceToken } from '../dist/index.js';
import { processEnded } from '../dist/shared/proc.js';
import { AppServerClient } from '../test/fixtures/app-server-client.ts';
import { TEST_API_KEY } from '../test/fixtures/codex-home.ts';
import { startResponsesMock } from '../test/fixtures/responses-mock.ts';
import { GATEWAY_KEY_ENV, realCodexToml, startGatewayProcess } from '../test/gateway-process.ts';
import { checkQuiet, freePort, machine, machineLine, mapLimit, removeDir, round, scratchDir, summarize, table, verdict, writeResult } from './common.mjs';

const WORKSPACES = Number(process.env.BENCH_RECONNECT_WORKSPACES ?? 60);
const CLIENTS = Number(process.env.BENCH_RECONNECT_CLIENTS ?? 2);
const TURN_WORKSPACES = Number(process.env.BENCH_RECONNECT_TURN_WORKSPACES ?? 20);
const STORMS = (process.env.BENCH_RECONNECT_STORMS ?? 'plain-off,plain-on,plain-handover,turns-off,turns-on,turns-handover').split(',');
// A handover needs every gateway of the run to start its children able to outlive it, and a fixed internal port.
const HANDOVER = STORMS.some((s) => s.endsWith('-handover'));
const SECRET = 'bench-reconnect-secret-bench-reconnect-0000';
const ADMIN = 'bench-reconnect-admin-token-00';
const CLIENT_DEADLINE_MS = 60_000;
const TUI_DEADLINE_MS = 10_000;
const SPREAD_MS = Number(process.env.BENCH_RECONNECT_SPREAD_MS ?? 10_000);

/** Waits (bounded) until none of `pids` runs: a child SIGKILLed a moment ago may still be writing its home. */
async function waitGone(pids) {
  const until = Date.now() + 10_000;
  for (const pid of pids) {
    // A zombie counts as gone: an orphan's reaper may never come here.
    while (Date.now() < until && !(await processEnded(pid))) await sleep(50);
  }
}

/** A seeded shuffle (mulberry32): arrival order neither follows nor reverses recency. */
function shuffled(items, seed) {
  let a = seed;
  const rnd = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

const loadavg = () => os.loadavg().map((l) => round(l, 2));

/** Connects (retrying while the gateway refuses) and initializes; times from `t0`. */
async function reconnect(url, token, t0) {
  let lastErr;
  while (performance.now() - t0 < CLIENT_DEADLINE_MS) {
    let c;
    try {
      c = await AppServerClient.connect(url, { token, timeoutMs: CLIENT_DEADLINE_MS });
      const connectedMs = performance.now() - t0;
      await c.request('initialize', { clientInfo: { name: 'bench-reconnect', title: null, version: '0.0.0' }, capabilities: null }, CLIENT_DEADLINE_MS);
      c.notify('initialized');
      return { c, connectedMs, initMs: performance.now() - t0 };
    } catch (err) {
      // A close before the answer (1011 a failed start, 1013 try later): reconnect, as a client would.
      lastErr = err;
      await c?.close().catch(() => {});
      await sleep(100);
    }
  }
  throw lastErr ?? new Error('deadline');
}

async function main() {
  console.log(`reconnect: ${WORKSPACES} workspaces × ${CLIENTS} clients after a gateway restart (real codex), workspaces spread over ${SPREAD_MS} ms; storms: ${STORMS.join(', ')}; ${TURN_WORKSPACES} workspaces running turns in the turns storms`);
  console.log(machineLine());
  const busyBefore = await checkQuiet();
  const mock = await startResponsesMock({ deltas: Array.from({ length: 20 }, (_, i) => `piece ${i} `) });
  const dir = await scratchDir('reconnect-');
  const config = path.join(dir, 'gw.toml');
  const internalPort = HANDOVER ? await freePort() : undefined;
  const writeConfig = (warmMax) =>
    writeFile(
      config,
      realCodexToml({
        dir: path.join(dir, 'data'),
        secret: SECRET,
        mockBaseUrl: mock.baseUrl,
        extra: ['[admin]', `token = ${JSON.stringify(ADMIN)}`, '[warm_restart]', `max = ${warmMax}`, '[spawn]', 'ready_timeout = "30s"', '[shutdown]', 'budget = "120s"', '[reaper]', 'idle_after = "2h"', ...(internalPort === undefined ? [] : ['[internal]', `port = ${internalPort}`, '[restart]', 'handover = true'])],
      }),
      { mode: 0o600 },
    );
  const env = { [GATEWAY_KEY_ENV]: TEST_API_KEY, CXG_LOG_LEVEL: 'info' };
  const ids = Array.from({ length: WORKSPACES }, (_, i) => `bench-rc-${i}`);
  const turnIds = Array.from({ length: TURN_WORKSPACES }, (_, i) => `bench-rc-turns-${i}`);
  const tokens = new Map();
  for (const id of [...ids, ...turnIds]) tokens.set(id, await signWorkspaceToken({ secret: SECRET, workspaceId: id, expiresIn: '2h' }));
  const threads = new Map();
  let gw;
  // Every gateway of the run: with restart.handover its children outlive it
  // (no parent-death signal), so they are ended by the pids its log names.
  const gateways = [];
  const start = async () => {
    const g = await startGatewayProcess(config, env, 60_000);
    gateways.push(g);
    return g;
  };
  const killAll = () => {
    for (const g of gateways) {
      for (const pid of [g.proc.pid, ...g.logs.filter((l) => l.msg === 'codex app-server ready' || l.msg === 'handover: child adopted').map((l) => l.pid)]) {
        try {
          process.kill(pid === g.proc.pid ? pid : -pid, 'SIGKILL');
        } catch {
          // Gone.
        }
      }
    }
  };
  // Should this process die unexpectedly, its gateways and their children go too.
  process.once('exit', killAll);
  let live = [];
  const results = [];
  try {
    await writeConfig(100);
    gw = await start();
    // Set-up: a thread with one finished turn in every workspace.
    const t0 = performance.now();
    await mapLimit([...ids, ...turnIds], 4, async (id) => {
      const c = await AppServerClient.connect(gw.url, { token: tokens.get(id), timeoutMs: 60_000 });
      try {
        await c.request('initialize', { clientInfo: { name: 'bench-setup', title: null, version: '0.0.0' }, capabilities: null }, 60_000);
        const threadId = await c.startThread();
        await c.runTurn(threadId, 'set-up turn', 120_000);
        threads.set(id, threadId);
      } finally {
        await c.close();
      }
    });
    console.log(`set-up: ${threads.size} workspaces with a finished turn in ${round((performance.now() - t0) / 1000, 1)} s`);
    // The storm's clients, connected when the deploy comes.
    live = (await mapLimit(ids.flatMap((id) => Array.from({ length: CLIENTS }, () => id)), 8, (id) => reconnect(gw.url, tokens.get(id), performance.now()))).map((r) => r.c);

    for (const [stormIndex, storm] of STORMS.entries()) {
      const [kind, mode] = storm.split('-');
      // Only the storm's workspaces are live at the drain; the turn workspaces start with the storm.
      await mapLimit(turnIds, 4, (id) => fetch(`${gw.internalUrl}/admin/workspaces/${id}/shutdown`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN}` } }));
      await writeConfig(mode === 'on' ? 100 : 0);
      const down = performance.now();
      let exit;
      if (mode === 'handover') {
        // The new process asks the old one for its children; it listens once the old one has let go of them and exited.
        const old = gw;
        gw = await start();
        exit = await old.exited;
        for (const c of live) await c.close().catch(() => {});
      } else {
        exit = await gw.stop('SIGTERM');
        for (const c of live) await c.close().catch(() => {});
        gw = await start();
      }
      const drainMs = performance.now() - down;
      const load = loadavg();
      const stormT0 = performance.now();
      let stormOver = false;
      const turnRuns = kind === 'turns'
        ? turnIds.map(async (id) => {
            const r = await reconnect(gw.url, tokens.get(id), performance.now());
            await r.c.request('thread/resume', { threadId: threads.get(id) }, CLIENT_DEADLINE_MS);
            let turns = 0;
            while (!stormOver) {
              await r.c.runTurn(threads.get(id), `turn ${turns}`, 120_000);
              turns++;
            }
            await r.c.close();
            return turns;
          }).map((p) => p.catch(() => 0))
        : [];
      const clients = await Promise.all(
        shuffled(ids, 15 + stormIndex).flatMap((id, i) =>
          Array.from({ length: CLIENTS }, async () => {
            await sleep((SPREAD_MS * i) / ids.length);
            try {
              const r = await reconnect(gw.url, tokens.get(id), performance.now());
              let resumed = true;
              try {
                await r.c.request('thread/resume', { threadId: threads.get(id) }, CLIENT_DEADLINE_MS);
              } catch {
                resumed = false;
              }
              return { id, c: r.c, initMs: r.initMs, connectedMs: r.connectedMs, resumed };
            } catch (err) {
              return { id, c: undefined, initMs: Infinity, connectedMs: Infinity, resumed: false, error: String(err?.message ?? err) };
            }
          }),
        ),
      );
      const stormMs = performance.now() - stormT0;
      stormOver = true;
      const turnCounts = await Promise.all(turnRuns);
      live = clients.map((r) => r.c).filter((c) => c !== undefined);
      const warmDone = mode === 'on' ? await gw.waitForLog((l) => l.msg === 'warm restart: done', 30_000).catch(() => undefined) : undefined;
      const init = clients.map((r) => r.initMs).filter(Number.isFinite);
      const s = summarize(init);
      const r = {
        storm,
        clients: clients.length,
        failed: clients.filter((x) => x.error !== undefined).length,
        initMs: s,
        over10s: clients.filter((x) => x.initMs > TUI_DEADLINE_MS).length,
        resumed: clients.filter((x) => x.resumed).length,
        stormMs,
        drainMs,
        drainExit: exit.code,
        turnsCompleted: turnCounts.reduce((a, b) => a + b, 0),
        spawns: gw.logs.filter((l) => l.msg === 'codex app-server ready').length,
        adopted: gw.logs.filter((l) => l.msg === 'handover: child adopted').length,
        warmRestart: warmDone === undefined ? null : { started: warmDone.started, failed: warmDone.failed, ms: warmDone.ms },
        loadavgAtStart: load,
        loadavgAtEnd: loadavg(),
      };
      results.push(r);
      console.log(`${storm}: init p50 ${round(s.p50, 0)} ms, p99 ${round(s.p99, 0)} ms, max ${round(s.max, 0)} ms; >10 s: ${r.over10s}; resumed ${r.resumed}/${r.clients}; turns ${r.turnsCompleted}; spawns ${r.spawns}, adopted ${r.adopted}; load ${load.join(' ')}`);
    }
  } finally {
    for (const c of live) await c.close().catch(() => {});
    if (gw !== undefined) await gw.stop('SIGKILL');
    killAll();
    await waitGone(gateways.flatMap((g) => g.logs.filter((l) => l.msg === 'codex app-server ready' || l.msg === 'handover: child adopted').map((l) => l.pid)));
    await mock.close();
    await removeDir(dir);
  }

  const rows = results.map((r) => [
    r.storm,
    `${r.clients}`,
    `${round(r.initMs.p50, 0)} ms`,
    `${round(r.initMs.p99, 0)} ms`,
    `${round(r.initMs.max, 0)} ms`,
    r.over10s,
    `${r.resumed}/${r.clients}`,
    r.turnsCompleted,
    r.warmRestart === null ? '—' : `${r.warmRestart.started} in ${round(r.warmRestart.ms / 1000, 1)} s`,
    `${r.loadavgAtStart.join(' ')} → ${r.loadavgAtEnd.join(' ')}`,
  ]);
  console.log(`\nreconnect (${machineLine()})`);
  console.log(table(['storm', 'clients', 'init p50', 'init p99', 'init max', '> 10 s', 'resumed', 'turns meanwhile', 'pre-started', 'load average (1, 5, 15 min)'], rows));
  const by = Object.fromEntries(results.map((r) => [r.storm, r]));
  const checks = [];
  if (by['plain-on'] !== undefined) {
    const r = by['plain-on'];
    checks.push({ target: 'plain storm, warm restart on: init p99 ≤ 2 s', value: `${round(r.initMs.p99, 0)} ms (off: ${round(by['plain-off']?.initMs.p99, 0)} ms)`, ok: r.initMs.p99 <= 2000 });
    checks.push({ target: 'plain storm, warm restart on: no client past 10 s', value: `${r.over10s} of ${r.clients}`, ok: r.over10s === 0 && r.failed === 0 });
  }
  if (by['plain-handover'] !== undefined) {
    const r = by['plain-handover'];
    checks.push({ target: 'plain storm, handover restart: init p99 ≤ 2 s', value: `${round(r.initMs.p99, 0)} ms`, ok: r.initMs.p99 <= 2000 });
    checks.push({ target: 'plain storm, handover restart: no client past 10 s', value: `${r.over10s} of ${r.clients}`, ok: r.over10s === 0 && r.failed === 0 });
  }
  if (by['turns-handover'] !== undefined) {
    const r = by['turns-handover'];
    checks.push({ target: 'with turns running, handover restart: no client past 10 s', value: `${r.over10s} of ${r.clients}`, ok: r.over10s === 0 && r.failed === 0 });
  }
  if (by['turns-on'] !== undefined) {
    const r = by['turns-on'];
    checks.push({ target: 'with turns running, warm restart on: no client past 10 s', value: `${r.over10s} of ${r.clients} (off: ${by['turns-off']?.over10s ?? '—'})`, ok: r.over10s === 0 && r.failed === 0 });
  }
  checks.push({ target: 'every client resumes its thread', value: results.map((r) => `${r.storm} ${r.resumed}/${r.clients}`).join(', '), ok: results.every((r) => r.resumed === r.clients) });
  console.log('');
  console.log(table(['target', 'measured', 'verdict'], checks.map((k) => [k.target, k.value, verdict(k.ok)])));
  await writeResult('reconnect', {
    busyBefore,
    settings: { workspaces: WORKSPACES, clientsPerWorkspace: CLIENTS, turnWorkspaces: TURN_WORKSPACES, storms: STORMS, spreadMs: SPREAD_MS, cores: machine().cores },
    results,
    checks,
  });
}

await main();
