/**
 * Adopting a child another gateway handed over (src/shared/handover.ts).
 * It is not our ChildProcess: no 'exit' event, no pipes. Its identity is
 * checked through /proc before anything trusts its record (the same pid and
 * start time, the environment the previous gateway gave it), its readiness
 * through its /readyz, and its end is noticed by watching /proc: once it has
 * exited it is a zombie of init (or of whatever reaps orphans here) or gone,
 * and either counts as ended (processEnded).
 *
 * What codex does without its parent was checked with 0.169.0: it ignores
 * SIGPIPE, so once the gateway that read its stdout and stderr has exited,
 * its log writes fail with EPIPE and are dropped, and it keeps serving. Its
 * output is therefore not seen after a handover; its exit still is.
 */
import type { HandoverRecord } from '../shared/handover.js';
import { processEnded, processEnviron, processStartTicks } from '../shared/proc.js';
import type { ExitInfo, RunningChild } from './spawn.js';
import { probe } from './spawn.js';

/** How often an adopted child's /proc entry is looked at. */
const WATCH_MS = 250;

/** Why a record cannot be adopted, or undefined when its child is the one recorded and answers. */
export async function adoptionRefusal(rec: HandoverRecord, codexHome: string): Promise<string | undefined> {
  if ((await processStartTicks(rec.pid)) !== rec.startTicks) return 'no process with the recorded pid and start time';
  if (await processEnded(rec.pid)) return 'the process has exited';
  const env = await processEnviron(rec.pid);
  if (env === undefined) return 'its environment cannot be read';
  // The loopback token is a secret only its gateway and the child know: the record names this very child.
  if (!env.includes(`CXG_LOOPBACK_TOKEN=${rec.loopbackToken}`) || !env.includes(`CODEX_HOME=${codexHome}`)) return 'its environment is not the recorded one';
  if (!(await probe(`${rec.httpUrl}/readyz`, 5000))) return 'its /readyz does not answer 200';
  return undefined;
}

export interface AdoptedChild extends RunningChild {
  /** Stops watching (the gateway is closing or handing the child on). */
  release(): void;
}

/**
 * A RunningChild for a process this gateway did not start. Its exit status
 * is unknown (another process reaps it): `exited` resolves with nulls.
 * `onExit` runs before `exited` resolves, as spawn.ts's does.
 */
export function adoptedChild(rec: HandoverRecord, onExit?: () => void): AdoptedChild {
  let exit: ExitInfo | undefined;
  let timer: NodeJS.Timeout | undefined;
  let resolveExit: (e: ExitInfo) => void = () => {};
  const exited = new Promise<ExitInfo>((resolve) => (resolveExit = resolve));
  const look = async (): Promise<void> => {
    timer = undefined;
    const gone = (await processEnded(rec.pid)) || (await processStartTicks(rec.pid)) !== rec.startTicks;
    if (!gone) {
      if (!released) schedule();
      return;
    }
    exit = { code: null, signal: null };
    try {
      onExit?.();
    } finally {
      resolveExit(exit);
    }
  };
  let released = false;
  const schedule = (): void => {
    // Unref'd: watching a child must not keep a closing shard alive.
    timer = setTimeout(() => void look(), WATCH_MS);
    timer.unref();
  };
  schedule();
  return {
    pid: rec.pid,
    wsUrl: rec.wsUrl,
    httpUrl: rec.httpUrl,
    exited,
    exitInfo: () => exit,
    release: () => {
      released = true;
      clearTimeout(timer);
    },
  };
}
