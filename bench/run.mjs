// Runs the benchmarks one after another, each in a process of its own, then
// prints every target with its verdict from bench/results/latest.json.
//
//   node bench/run.mjs                 all of them
//   node bench/run.mjs dataplane lookup
//   node bench/run.mjs --summary       only the summary of latest.json (markdown)
//
// Missed targets never fail the run: these are benchmarks, not tests. A bench
// that crashes makes the exit code 1.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { BENCH_DIR, RESULTS_DIR, machineLine, table } from './common.mjs';

const BENCHES = ['dataplane', 'connections', 'spawn', 'spawn-storm', 'archive', 'lookup'];
/** Run only when named: long (tens of real codex children, several gateway restarts). */
const BY_NAME = ['reconnect', 'spawn-concurrency', 'ownership'];
/** Node flags per bench: reconnect and ownership import the TypeScript test fixtures. */
const EXEC_ARGS = { reconnect: ['--import', 'tsx'], ownership: ['--import', 'tsx'] };

function runOne(name) {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [...(EXEC_ARGS[name] ?? []), path.join(BENCH_DIR, `${name}.mjs`)], { stdio: 'inherit' });
    const forward = (sig) => p.kill(sig);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    p.once('exit', (code, signal) => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
      resolve(code === 0 ? 'ok' : `failed (${signal ?? `exit ${code}`})`);
    });
  });
}

async function summary(names) {
  const file = path.join(RESULTS_DIR, 'latest.json');
  if (!existsSync(file)) return 'no results yet';
  const latest = JSON.parse(await readFile(file, 'utf8'));
  const rows = [];
  for (const name of names) {
    const r = latest[name];
    if (r === undefined) {
      rows.push([name, '—', 'not run', '']);
      continue;
    }
    for (const c of r.checks ?? []) {
      const v = c.ok === undefined ? 'n/a' : c.ok ? 'met' : 'MISSED';
      rows.push([name, c.target, c.value, c.partial ? `${v} ${typeof c.partial === 'string' ? c.partial : '(reduced run)'}` : v]);
    }
  }
  const machines = [...new Set(names.map((n) => latest[n]?.machine).filter(Boolean).map((m) => `${m.cores} cores (${m.cpu}), ${m.memGiB} GiB, Node ${m.node.replace(/^v/, '')}`))];
  return `machine: ${machines.join('; ')}\n\n${table(['bench', 'target', 'measured', 'verdict'], rows)}`;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.includes('--summary')) {
    console.log(await summary([...BENCHES, ...BY_NAME]));
    return;
  }
  const unknown = args.filter((a) => !BENCHES.includes(a) && !BY_NAME.includes(a));
  if (unknown.length > 0) {
    console.error(`unknown bench ${unknown.join(', ')}; known: ${[...BENCHES, ...BY_NAME].join(', ')}`);
    process.exitCode = 2;
    return;
  }
  const names = args.length > 0 ? args : BENCHES;
  console.log(`benchmarks: ${names.join(', ')}\n${machineLine()}\n`);
  const outcome = {};
  for (const name of names) {
    console.log(`\n======== ${name} ========`);
    const t0 = Date.now();
    outcome[name] = await runOne(name);
    console.log(`======== ${name}: ${outcome[name]} in ${Math.round((Date.now() - t0) / 1000)} s`);
  }
  console.log(`\n======== summary ========\n${await summary(names)}`);
  const failed = Object.entries(outcome).filter(([, o]) => o !== 'ok');
  if (failed.length > 0) {
    console.log(`\nbenches that did not finish: ${failed.map(([n, o]) => `${n} ${o}`).join(', ')}`);
    process.exitCode = 1;
  }
}

await main();
