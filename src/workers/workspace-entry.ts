/**
 * What a shard's workspace table is made of, shared by the files that
 * implement its parts: one Entry per workspace with a child starting,
 * running or stopping (workspaces.ts holds the table and its lifecycle,
 * child-start.ts a start, handover-table.ts adoption and release), the host
 * it reports to, and the table's own state (TableCore).
 */
import type { Logger } from 'pino';
import type { CrashLoopGuard } from '../shared/crash-loop.js';
import type { ChildInfo, ShardInit, SpawnPriority, StopReason, WorkspaceState, WorkspaceStatus } from '../shared/protocol.js';
import type { HomeStore } from './home-store.js';
import { homePath } from './home.js';
import type { Home } from './home.js';
import type { LoopbackTokens } from './loopback-tokens.js';
import type { TableHost } from './table-host.js';
import type { ExitInfo, RunningChild } from './spawn.js';

/** Start failures that mean the process itself is broken (they feed crash-loop protection). */
export const PROCESS_FAILURES: ReadonlySet<string> = new Set(['GW_SPAWN_EXITED', 'GW_SPAWN_TIMEOUT', 'GW_SPAWN_NOT_READY']);

/** Why a child's clients lose it: a stop reason, or the child ended by itself. */
export type GoneReason = StopReason | 'crash';

export interface TableEvents {
  /** The child of `generation` is going away; its client connections must close. */
  childGone(workspaceId: string, generation: string, reason: GoneReason): void;
}

export interface Entry {
  workspaceId: string;
  generation: string;
  state: WorkspaceState;
  ready: Promise<ChildInfo>;
  info: ChildInfo | undefined;
  home: Home | undefined;
  child: RunningChild | undefined;
  pid: number | undefined;
  loopbackToken: string;
  wsToken: string;
  lastActivity: number;
  startedAt: number;
  readyAt: number;
  clients: number;
  exitHandled: boolean;
  /** `prestart` until a client asks for it (then `client`: it is promoted at the gate). */
  priority: SpawnPriority;
  rank: number;
  /** A pre-start no client has claimed yet: the activity its drain record gave it. */
  prestarted: { lastActivity: number } | undefined;
}

/**
 * The table's state, open to the files that implement its parts (and to
 * nothing else): everything about one workspace happens on the shard's one
 * event loop, so no part needs a lock.
 */
export interface TableCore {
  readonly init: ShardInit;
  readonly host: TableHost;
  readonly events: TableEvents;
  readonly log: Logger;
  readonly live: Map<string, Entry>;
  /** A workspace's stop or upload under way; its next start waits for it. */
  readonly busy: Map<string, Promise<unknown>>;
  readonly tokens: LoopbackTokens;
  readonly homes: HomeStore;
  readonly crashLoop: CrashLoopGuard;
  /** Set by close() and release(): new ensures fail. */
  closed: boolean;
  setBusy(workspaceId: string, p: Promise<unknown>): void;
  onExit(e: Entry, exit: ExitInfo): void;
}

export function describeEntry(init: ShardInit, e: Entry): WorkspaceStatus {
  return {
    workspaceId: e.workspaceId,
    state: e.state,
    generation: e.generation,
    pid: e.pid,
    shard: init.shard,
    clients: e.clients,
    lastActivity: e.lastActivity,
    startedAt: e.startedAt,
    codexHome: e.home?.dir ?? homePath(init.homeRoot, e.workspaceId),
    ...(e.prestarted === undefined ? {} : { prestarted: { ...e.prestarted } }),
  };
}
