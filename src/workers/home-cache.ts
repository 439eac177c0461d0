/**
 * The warm cache: stored homes kept on disk after their upload, so the next
 * start of a workspace skips the download when its copy is still the stored
 * generation (one HEAD request tells). Bounded by a disk budget; past it the
 * least recently used homes are removed. Only homes with no process, no
 * upload and no start under way are in here: a start takes its home out.
 *
 * This class only keeps the books; removing a home is the shard's
 * (WorkspaceTable), which serializes it with starts of the same workspace.
 */
export class HomeCache {
  /** Insertion order is use order: a home put back goes to the end. */
  private readonly entries = new Map<string, number>();
  private total = 0;

  constructor(
    /** Disk budget of this shard's cached homes; 0 keeps none. */
    readonly maxBytes: number,
  ) {}

  get enabled(): boolean {
    return this.maxBytes > 0;
  }

  /** Records a cached home of `bytes` (as most recently used). */
  add(workspaceId: string, bytes: number): void {
    this.take(workspaceId);
    this.entries.set(workspaceId, bytes);
    this.total += bytes;
  }

  /** Takes a home out of the books (it is in use, or being removed). */
  take(workspaceId: string): void {
    const bytes = this.entries.get(workspaceId);
    if (bytes === undefined) return;
    this.entries.delete(workspaceId);
    this.total -= bytes;
  }

  has(workspaceId: string): boolean {
    return this.entries.has(workspaceId);
  }

  get bytes(): number {
    return this.total;
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * Homes to remove, least recently used first, until the rest fit the
   * budget. `removable` may refuse one (its workspace is busy): it is kept
   * and the next is tried. Chosen homes are taken out of the books.
   */
  overBudget(removable: (workspaceId: string) => boolean): string[] {
    const out: string[] = [];
    for (const [workspaceId] of this.entries) {
      if (this.total <= this.maxBytes) break;
      if (!removable(workspaceId)) continue;
      this.take(workspaceId);
      out.push(workspaceId);
    }
    return out;
  }
}
