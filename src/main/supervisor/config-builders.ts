/**
 * The ConfigBuilders a shard may call back: the supervisor's own (id 0) and
 * those passed to ensureSubprocess, registered for the length of the call.
 */
import type { SpawnConfig } from '../../shared/codex-config.js';
import { GatewayError } from '../../shared/errors.js';
import type { ConfigBuilder } from './options.js';

export class ConfigBuilders {
  private readonly byId = new Map<number, ConfigBuilder>();
  private nextId = 1;

  constructor(private readonly fallback: ConfigBuilder | undefined) {}

  /** Runs `f` with `build` registered under the id it is given. */
  async with<T>(build: ConfigBuilder, f: (builderId: number) => Promise<T>): Promise<T> {
    const id = this.nextId++;
    this.byId.set(id, build);
    try {
      return await f(id);
    } finally {
      this.byId.delete(id);
    }
  }

  async build(builderId: number, workspaceId: string, loopbackToken: string): Promise<SpawnConfig> {
    const build = builderId === 0 ? this.fallback : this.byId.get(builderId);
    if (build === undefined) throw new GatewayError('GW_BUILDER_FAILED', 'no config builder is configured');
    return await build(loopbackToken, { workspaceId });
  }
}
