/**
 * `codex-app-gateway drain`: asks a running gateway to drain through its
 * admin API and follows the progress it streams, as a progress bar on a
 * terminal and as plain lines otherwise. Exit 0 when every home was stored.
 */
import { GatewayError } from '../../shared/errors.js';

export interface DrainIo {
  out(text: string): void;
  err(text: string): void;
  /** Whether err is a terminal (draw a bar instead of lines). */
  tty: boolean;
}

export interface DrainEvent {
  event: 'start' | 'progress' | 'done';
  total?: number;
  stopped?: number;
  saved?: number;
  unsaved?: number;
  timed_out?: boolean;
  workspace_id?: string | null;
  unsaved_workspaces?: string[];
}

const BAR_WIDTH = 30;

export function progressBar(done: number, total: number): string {
  const frac = total === 0 ? 1 : Math.min(1, done / total);
  const filled = Math.round(frac * BAR_WIDTH);
  return `[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${done}/${total} uploaded`;
}

/** Drives one drain; resolves with the exit code. */
export async function runDrain(url: string, token: string, io: DrainIo, fetchImpl: typeof fetch = fetch): Promise<number> {
  const endpoint = `${url.replace(/\/+$/, '')}/admin/drain`;
  let res: Response;
  try {
    res = await fetchImpl(endpoint, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  } catch (err) {
    throw new GatewayError('GW_INTERNAL', `cannot reach ${endpoint}: ${err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err)}`);
  }
  if (!res.ok || res.body === null) {
    const text = await res.text().catch(() => '');
    io.err(`drain refused: HTTP ${res.status} ${text.trim()}\n`);
    return 1;
  }
  let total = 0;
  let final: DrainEvent | undefined;
  const show = (e: DrainEvent): void => {
    if (e.event === 'start') {
      total = e.total ?? 0;
      if (io.tty) io.err(`\r${progressBar(e.saved ?? 0, total)}`);
      else io.err(`drain: ${total} workspace(s) to stop and upload\n`);
    } else if (e.event === 'progress') {
      total = e.total ?? total;
      if (io.tty) io.err(`\r${progressBar(e.saved ?? 0, total)}`);
      else io.err(`drain: ${e.saved ?? 0} of ${total} uploaded (${e.workspace_id ?? '?'}${e.stopped !== e.saved ? ', some kept on disk' : ''})\n`);
    }
  };
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line === '') continue;
      const e = JSON.parse(line) as DrainEvent;
      if (e.event === 'done') final = e;
      else show(e);
    }
  }
  if (io.tty) io.err('\n');
  if (final === undefined) {
    io.err('drain: the gateway closed the connection before it reported the end\n');
    return 1;
  }
  const unsaved = final.unsaved ?? 0;
  io.out(`drain done: ${final.saved ?? 0} uploaded, ${unsaved} kept on disk${final.timed_out === true ? ' (budget exceeded)' : ''}\n`);
  for (const id of final.unsaved_workspaces ?? []) io.out(`  not uploaded: ${id}\n`);
  return unsaved === 0 && final.timed_out !== true ? 0 : 1;
}
