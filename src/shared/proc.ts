/**
 * What /proc says of a process, read in one place. A pid alone names
 * whatever process holds it now; its start time (field 22 of stat) tells a
 * reused pid apart.
 */
import { promises as fs } from 'node:fs';

/** Fields of /proc/PID/stat after the command name (field 3 onwards), or undefined when it cannot be read. */
async function procStat(pid: number): Promise<string[] | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (comm) may hold spaces and parentheses: parse after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Start time of a process in clock ticks since boot, or null when unknown or gone. */
export async function processStartTicks(pid: number): Promise<number | null> {
  const rest = await procStat(pid);
  const ticks = Number(rest?.[19]);
  return rest !== undefined && Number.isFinite(ticks) ? ticks : null;
}

/**
 * True when /proc shows `pid` as ended: a zombie (exited, not yet reaped) or
 * no longer there. A process that cannot be inspected counts as running.
 */
export async function processEnded(pid: number): Promise<boolean> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/** A process's environment as `NAME=value` entries, or undefined when it cannot be read. */
export async function processEnviron(pid: number): Promise<string[] | undefined> {
  try {
    return (await fs.readFile(`/proc/${pid}/environ`, 'utf8')).split('\0');
  } catch {
    return undefined;
  }
}

/** Resident memory of a process in bytes (VmRSS), or null when it cannot be read. */
export async function processRssBytes(pid: number): Promise<number | null> {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(await fs.readFile(`/proc/${pid}/status`, 'utf8'));
    return m === null ? null : Number(m[1]) * 1024;
  } catch {
    return null;
  }
}
