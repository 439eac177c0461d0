/**
 * Warm restart: a drain records which workspaces were live and when they
 * were last active (`warm-restart.json` in the data dir); the next start
 * takes the record and pre-starts them, most recently active first, at most
 * `max` of them, so that after a deploy a workspace's child is often running
 * (from its warm home, homes.cache) before its clients have reconnected.
 *
 * Pre-starts are speculative: at the spawn gate every start a client waits
 * for goes first, and a client that asks for a workspace still queued
 * promotes it (spawn-gate.ts). So a warm restart never makes a client wait
 * longer than a cold start would. A pre-started child that no client claims
 * is an ordinary idle child: the idle reaper stops it after reaper.idle_after.
 *
 * The record is written atomically (a temporary file, fsync, rename): a crash
 * while writing it leaves the previous record or none, never a torn one. A
 * start takes the record (reads and removes it), so a later crash does not
 * bring back a set of workspaces from an older deploy.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { toGatewayError } from '../../shared/errors.js';
import type { WorkspaceStatus } from '../../shared/protocol.js';
import { validateWorkspaceId } from '../../shared/workspace-id.js';
import type { Supervisor } from './supervisor.js';

/** The record's name in data.dir. */
export const WARM_RESTART_FILE = 'warm-restart.json';

export interface WarmRestartOptions {
  /** Where the drain writes the record: `<data.dir>/warm-restart.json`. */
  file: string;
  /** Workspaces a start pre-starts at most; 0: off (the record is still written at a drain, and removed unused at a start). */
  max: number;
}

export interface WarmEntry {
  workspaceId: string;
  /** Epoch ms. */
  lastActivity: number;
}

interface WarmRecordFile {
  version: 1;
  writtenAt: number;
  workspaces: WarmEntry[];
}

export type WarmRestartState = 'off' | 'running' | 'done';

export interface WarmRestartProgress {
  state: WarmRestartState;
  /** Workspaces to pre-start (the record's most recent, at most `max`). */
  total: number;
  /** Pre-starts issued so far. */
  issued: number;
  /** Children running from a pre-start (or found running already). */
  started: number;
  failed: number;
}

/** The workspaces to record from a drain's stats: live children, most recently active first. */
export function liveForRecord(workspaces: WorkspaceStatus[]): WarmEntry[] {
  return workspaces
    .filter((w) => w.state !== 'stopping')
    // A pre-start no client claimed keeps the activity it was recorded with.
    .map((w) => ({ workspaceId: w.workspaceId, lastActivity: w.prestarted?.lastActivity ?? w.lastActivity }))
    .sort((a, b) => b.lastActivity - a.lastActivity);
}

/** Writes the record atomically: the previous one stays whole until the rename. */
export async function writeWarmRecord(file: string, workspaces: WarmEntry[]): Promise<void> {
  const body: WarmRecordFile = { version: 1, writtenAt: Date.now(), workspaces };
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.mkdir(path.dirname(file), { recursive: true });
  const fh = await fs.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(body)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
  // The rename itself must reach the disk before the process exits.
  const dir = await fs.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/**
 * Reads and removes the record. Absent: []. Unreadable or malformed: [] and
 * a warning (a warm restart is an optimization, never a reason not to start).
 */
export async function takeWarmRecord(file: string, log: Logger): Promise<WarmEntry[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ file, err: toGatewayError(err).describe() }, 'warm restart: record unreadable; starting cold');
    return [];
  }
  await fs.rm(file, { force: true }).catch((err: unknown) => log.warn({ file, err: toGatewayError(err).describe() }, 'warm restart: could not remove the record'));
  try {
    const rec = JSON.parse(text) as Partial<WarmRecordFile>;
    if (rec.version !== 1 || !Array.isArray(rec.workspaces)) throw new Error('not a version 1 record');
    const out: WarmEntry[] = [];
    const seen = new Set<string>();
    for (const w of rec.workspaces as unknown[]) {
      const e = w as Partial<WarmEntry> | null;
      if (typeof e?.workspaceId !== 'string' || typeof e.lastActivity !== 'number' || seen.has(e.workspaceId)) continue;
      validateWorkspaceId(e.workspaceId);
      seen.add(e.workspaceId);
      out.push({ workspaceId: e.workspaceId, lastActivity: e.lastActivity });
    }
    return out.sort((a, b) => b.lastActivity - a.lastActivity);
  } catch (err) {
    log.warn({ file, err: toGatewayError(err).describe() }, 'warm restart: record malformed; starting cold');
    return [];
  }
}

/**
 * Pre-starts the recorded workspaces in order. Each is issued once the one
 * before it has reached the spawn gate (or ended), so they queue in rank
 * order while the next one's home is prepared during this one's wait; the
 * gate then serves client starts first. Stops issuing when `stop()` is
 * called (a drain).
 */
export class WarmRestart {
  private readonly p: WarmRestartProgress;
  private stopped = false;
  readonly done: Promise<void>;

  constructor(
    private readonly sup: Supervisor,
    entries: WarmEntry[],
    private readonly log: Logger,
  ) {
    this.p = { state: entries.length === 0 ? 'done' : 'running', total: entries.length, issued: 0, started: 0, failed: 0 };
    this.done = entries.length === 0 ? Promise.resolve() : this.run(entries);
  }

  static off(sup: Supervisor, log: Logger): WarmRestart {
    const w = new WarmRestart(sup, [], log);
    w.p.state = 'off';
    return w;
  }

  get progress(): WarmRestartProgress {
    return { ...this.p };
  }

  stop(): void {
    this.stopped = true;
  }

  private async run(entries: WarmEntry[]): Promise<void> {
    const t0 = Date.now();
    this.log.info({ workspaces: entries.length }, 'warm restart: pre-starting the workspaces live at the last drain');
    const starts: Array<Promise<void>> = [];
    for (const [rank, e] of entries.entries()) {
      if (this.stopped) break;
      let step: ReturnType<Supervisor['prestart']>;
      try {
        step = this.sup.prestart(e.workspaceId, { rank, lastActivity: e.lastActivity });
      } catch (err) {
        // The supervisor is closing.
        this.log.info({ err: toGatewayError(err).describe() }, 'warm restart: stopped');
        break;
      }
      this.p.issued += 1;
      starts.push(
        step.started.then(
          () => {
            this.p.started += 1;
          },
          (err: unknown) => {
            this.p.failed += 1;
            const failure = toGatewayError(err);
            // No child slot is free (limits.max_children): the rest would fail the same way.
            if (failure.code === 'GW_CAPACITY') this.stopped = true;
            this.log.warn({ workspaceId: e.workspaceId, err: failure.describe() }, 'warm restart: pre-start failed');
          },
        ),
      );
      await step.atGate;
    }
    await Promise.all(starts);
    this.p.state = 'done';
    this.log.info({ started: this.p.started, failed: this.p.failed, issued: this.p.issued, total: this.p.total, ms: Date.now() - t0 }, 'warm restart: done');
  }
}
