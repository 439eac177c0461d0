/**
 * The loopback tokens of a shard's children, as the shard tells the main
 * thread about them: each child sends its token back to the gateway's
 * internal API, and the main thread answers from its own registry of
 * digests (src/main/supervisor/token-registry.ts) without asking a shard.
 *
 * Only the SHA-256 of a token crosses the thread. `add` waits for the main
 * thread's answer: a start calls it before it spawns the child that holds
 * the token, so the child can use it from its first moment. `remove` is a
 * notice on the same port, so it is processed after the registration even
 * when it is sent before the answer came; it is sent once per token.
 */
import { tokenKey } from '../shared/secrets.js';

export interface TokenSink {
  registerToken(key: string, workspaceId: string): Promise<void>;
  forgetToken(key: string): void;
}

export class LoopbackTokens {
  private readonly registered = new Set<string>();

  constructor(private readonly sink: TokenSink) {}

  async add(token: string, workspaceId: string): Promise<void> {
    const key = tokenKey(token);
    // Before the call: a remove() while it is in flight must send its notice.
    this.registered.add(key);
    await this.sink.registerToken(key, workspaceId);
  }

  remove(token: string): void {
    const key = tokenKey(token);
    if (this.registered.delete(key)) this.sink.forgetToken(key);
  }

  get size(): number {
    return this.registered.size;
  }
}
