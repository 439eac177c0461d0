import type { ChildInfo } from '../../shared/protocol.js';

export interface ExitStatus {
  code: number | null;
  signal: string | null;
}

/**
 * A live codex app-server as seen by a caller of ensureSubprocess. Connect to
 * `wsUrl` with `Authorization: Bearer ${wsToken}` (and no Origin header).
 */
export class ChildHandle {
  readonly workspaceId: string;
  readonly generation: string;
  readonly pid: number;
  readonly wsUrl: string;
  readonly wsToken: string;
  readonly httpUrl: string;
  readonly codexHome: string;
  readonly startedAt: number;
  readonly shard: number;
  private exit: ExitStatus | undefined;
  private readonly exited: Promise<ExitStatus>;
  private settle!: (s: ExitStatus) => void;

  constructor(info: ChildInfo) {
    this.workspaceId = info.workspaceId;
    this.generation = info.generation;
    this.pid = info.pid;
    this.wsUrl = info.wsUrl;
    this.wsToken = info.wsToken;
    this.httpUrl = info.httpUrl;
    this.codexHome = info.codexHome;
    this.startedAt = info.startedAt;
    this.shard = info.shard;
    this.exited = new Promise((resolve) => (this.settle = resolve));
  }

  /** Whether the process is still running. Cheap: no system call, no message. */
  isAlive(): boolean {
    return this.exit === undefined;
  }

  /** Resolves once the process has exited (shutdown, reap or crash). */
  done(): Promise<ExitStatus> {
    return this.exited;
  }

  /** @internal Called when the shard reports the exit. */
  markExited(s: ExitStatus): void {
    if (this.exit !== undefined) return;
    this.exit = s;
    this.settle(s);
  }

  toJSON(): Omit<ChildInfo, 'wsToken'> & { alive: boolean } {
    return {
      workspaceId: this.workspaceId,
      generation: this.generation,
      pid: this.pid,
      wsUrl: this.wsUrl,
      httpUrl: this.httpUrl,
      codexHome: this.codexHome,
      startedAt: this.startedAt,
      shard: this.shard,
      alive: this.isAlive(),
    };
  }
}
