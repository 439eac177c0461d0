/**
 * Children run below the gateway's priority (spawn.nice), every thread of
 * them, including the sandboxed codex under bubblewrap's init.
 */
import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';

/**
 * Lowers the priority of every thread of a process (Linux priorities are per
 * thread; threads started later inherit from their creator). The gateway's
 * own threads then keep serving frames when many children compete for CPU,
 * as in a burst of starts.
 */
export function renice(pid: number, nice: number): void {
  reniceThreads(pid, nice);
  // Under bubblewrap `pid` is the sandbox's init; codex is its child.
  for (const child of childPids(pid)) reniceThreads(child, nice);
}

/** Direct children of a process (/proc/PID/task/TID/children; none when it cannot be read). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (c !== '') out.push(Number(c));
    } catch {
      // Gone: no children to find.
    }
  }
  return out;
}

function reniceThreads(pid: number, nice: number): void {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    tids = [String(pid)];
  }
  for (const tid of tids) {
    try {
      os.setPriority(Number(tid), Math.min(19, Math.max(os.getPriority(Number(tid)), os.getPriority(0) + nice)));
    } catch {
      // Gone, or not permitted: it keeps its priority.
    }
  }
}
