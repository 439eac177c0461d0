/**
 * SpawnGate with a fake Evictor: permits for starts at once, slots for
 * children at once, and making room by eviction.
 */
import { describe, expect, it } from 'vitest';
import { SpawnGate } from '../../src/main/supervisor/spawn-gate.js';
import type { Evictor } from '../../src/main/supervisor/spawn-gate.js';

/** Settles in the order the promises settle; `pending()` lists those still waiting. */
function track(p: Promise<unknown>, name: string, log: string[]): { done: () => boolean; error: () => unknown } {
  let done = false;
  let error: unknown;
  p.then(
    () => {
      done = true;
      log.push(name);
    },
    (err: unknown) => {
      done = true;
      error = err;
      log.push(`${name}:${(err as { code?: string }).code ?? 'error'}`);
    },
  );
  return { done: () => done, error: () => error };
}

const tick = (ms = 0): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until it holds; a gate that never lets the starts in fails here after 10 s. */
async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(5);
  }
}

/** An evictor over a list of idle generations: evicting one releases its slot after `delayMs`. */
function fakeEvictor(gate: () => SpawnGate | undefined, idle: string[], delayMs = 5): Evictor & { calls: number } {
  const ev = {
    calls: 0,
    evictOne(): Promise<boolean> {
      ev.calls++;
      const victim = idle.shift();
      if (victim === undefined) return Promise.resolve(false);
      setTimeout(() => gate()?.release(victim), delayMs);
      return Promise.resolve(true);
    },
  };
  return ev;
}

describe('SpawnGate', () => {
  it('without limits › every start enters at once and nothing is evicted', async () => {
    const ev = { calls: 0, evictOne: () => Promise.resolve(false) };
    const gate = new SpawnGate({}, ev);
    expect(gate.enabled).toBe(false);
    await Promise.all(Array.from({ length: 20 }, (_, i) => gate.enter(`g${i}`)));
    expect(gate.children).toBe(20);
    expect(ev.calls).toBe(0);
  });

  it('maxConcurrentSpawns › at most K starts hold a permit; the others enter in arrival order as starts settle', async () => {
    const gate = new SpawnGate({ maxConcurrentSpawns: 2 }, { evictOne: () => Promise.resolve(false) });
    expect(gate.enabled).toBe(true);
    const order: string[] = [];
    const starts = ['a', 'b', 'c', 'd', 'e'].map((g) => track(gate.enter(g), g, order));
    await tick();
    expect(order).toEqual(['a', 'b']);
    gate.settled('b', true);
    await tick();
    expect(order).toEqual(['a', 'b', 'c']);
    // A failed start frees its permit too.
    gate.settled('a', false);
    await tick();
    expect(order).toEqual(['a', 'b', 'c', 'd']);
    gate.settled('c', true);
    gate.settled('d', true);
    await tick();
    expect(order).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(starts.every((s) => s.error() === undefined)).toBe(true);
    // A settled start keeps its child slot until its process exits; a failed one does not.
    expect(gate.children).toBe(4);
  });

  it('maxChildren › when full, one idle child is evicted and the start enters once its slot is released', async () => {
    const box: { gate?: SpawnGate } = {};
    const ev = fakeEvictor(() => box.gate, ['old1', 'old2']);
    const gate = new SpawnGate({ maxChildren: 2 }, ev);
    box.gate = gate;
    await gate.enter('old1');
    await gate.enter('old2');
    gate.settled('old1', true);
    gate.settled('old2', true);
    const order: string[] = [];
    const s = track(gate.enter('new'), 'new', order);
    await tick(1);
    // Not before the evicted child's process is gone.
    expect(s.done()).toBe(false);
    await tick(30);
    expect(order).toEqual(['new']);
    expect(ev.calls).toBe(1);
    expect(gate.children).toBe(2);
  });

  it('maxChildren › with no idle child to evict the start fails with GW_CAPACITY and frees its permit', async () => {
    const ev = { calls: 0, evictOne: () => (ev.calls++, Promise.resolve(false)) };
    const gate = new SpawnGate({ maxChildren: 1, maxConcurrentSpawns: 1 }, ev);
    await gate.enter('busy');
    gate.settled('busy', true);
    const order: string[] = [];
    const s = track(gate.enter('refused'), 'refused', order);
    await tick();
    expect(order).toEqual(['refused:GW_CAPACITY']);
    expect((s.error() as { details?: unknown }).details).toEqual({ maxChildren: 1 });
    expect(gate.children).toBe(1);
    // The permit came back: once room exists, the next start enters.
    gate.release('busy');
    await gate.enter('next');
    expect(gate.children).toBe(1);
  });

  it('maxChildren › concurrent starts into a full gate evict one child each, not one each per waiter', async () => {
    const box: { gate?: SpawnGate } = {};
    const ev = fakeEvictor(() => box.gate, ['o1', 'o2', 'o3', 'o4'], 10);
    const gate = new SpawnGate({ maxChildren: 4 }, ev);
    box.gate = gate;
    for (const g of ['o1', 'o2', 'o3', 'o4']) await gate.enter(g);
    const order: string[] = [];
    const starts = ['n1', 'n2'].map((g) => track(gate.enter(g), g, order));
    // The second eviction begins only once the first start has its slot, on a timer of its own:
    // wait for both starts to settle rather than for a fixed time a loaded machine can overrun.
    await until(() => order.length === 2, 'both starts to settle');
    expect(order).toEqual(['n1', 'n2']);
    expect(starts.every((s) => s.error() === undefined)).toBe(true);
    expect(ev.calls).toBe(2);
    expect(gate.children).toBe(4);
  });

  it('maxChildren › a slot freed while the eviction is still being answered is not missed (no wait for roomWaitMs)', async () => {
    // The evicted child can exit before evictOne's answer is processed (it is
    // a cross-thread call); the start must not then sleep for roomWaitMs.
    const box: { gate?: SpawnGate } = {};
    const evictor: Evictor = {
      evictOne: () => {
        box.gate?.release('old');
        return Promise.resolve(true);
      },
    };
    const gate = new SpawnGate({ maxChildren: 1 }, evictor, 10_000);
    box.gate = gate;
    await gate.enter('old');
    const t0 = Date.now();
    await gate.enter('new');
    // Not the 10 s room wait; generous for a loaded machine.
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('maxChildren › release is idempotent and keyed by generation', async () => {
    const box: { gate?: SpawnGate } = {};
    const ev = fakeEvictor(() => box.gate, []);
    const gate = new SpawnGate({ maxChildren: 2 }, ev);
    box.gate = gate;
    await gate.enter('a');
    await gate.enter('b');
    gate.release('a');
    gate.release('a');
    gate.release('never-entered');
    expect(gate.children).toBe(1);
    gate.settled('b', false);
    gate.release('b');
    expect(gate.children).toBe(0);
  });

  it('maxChildren › an eviction that frees nothing within roomWaitMs is followed by another', async () => {
    const box: { gate?: SpawnGate } = {};
    const evicted: string[] = [];
    const evictor: Evictor = {
      evictOne: () => {
        const victim = evicted.length === 0 ? 'stuck' : 'ok';
        evicted.push(victim);
        // The first victim never exits; the second one does.
        if (victim === 'ok') setTimeout(() => box.gate?.release('ok'), 5);
        return Promise.resolve(true);
      },
    };
    const gate = new SpawnGate({ maxChildren: 2 }, evictor, 100);
    box.gate = gate;
    await gate.enter('stuck');
    await gate.enter('ok');
    await gate.enter('new');
    expect(evicted).toEqual(['stuck', 'ok']);
    expect(gate.children).toBe(2);
  });
  it('fair queue › client starts go before queued pre-starts; pre-starts follow by rank, not arrival', async () => {
    const gate = new SpawnGate({ maxConcurrentSpawns: 1 }, { evictOne: () => Promise.resolve(false) });
    const order: string[] = [];
    track(gate.enter('busy'), 'busy', order);
    track(gate.enter('p2', { priority: 'prestart', rank: 2 }), 'p2', order);
    track(gate.enter('p0', { priority: 'prestart', rank: 0 }), 'p0', order);
    track(gate.enter('c1'), 'c1', order);
    track(gate.enter('p1', { priority: 'prestart', rank: 1 }), 'p1', order);
    track(gate.enter('c2'), 'c2', order);
    expect(gate.queued).toEqual({ client: 2, prestart: 3 });
    for (const g of ['busy', 'c1', 'c2', 'p0', 'p1']) {
      await tick();
      gate.settled(g, true);
    }
    await tick();
    expect(order).toEqual(['busy', 'c1', 'c2', 'p0', 'p1', 'p2']);
    expect(gate.queued).toEqual({ client: 0, prestart: 0 });
  });

  it('fair queue › a client arriving for a queued pre-start moves it before every pre-start, behind earlier clients', async () => {
    const gate = new SpawnGate({ maxConcurrentSpawns: 1 }, { evictOne: () => Promise.resolve(false) });
    const order: string[] = [];
    const admitted = new Map<string, Promise<{ priority: string }>>();
    const enter = (g: string, t?: { priority: 'prestart'; rank: number }): void => {
      const p = gate.enter(g, t);
      admitted.set(g, p);
      track(p, g, order);
    };
    enter('busy');
    for (let r = 0; r < 4; r++) enter(`p${r}`, { priority: 'prestart', rank: r });
    enter('c1');
    expect(gate.promote('p3')).toBe(true);
    // Not queued (admitted already) or a client start: nothing to promote.
    expect(gate.promote('busy')).toBe(false);
    expect(gate.promote('c1')).toBe(false);
    expect(gate.promote('p3')).toBe(false);
    for (const g of ['busy', 'c1', 'p3', 'p0', 'p1']) {
      await tick();
      gate.settled(g, true);
    }
    await tick();
    expect(order).toEqual(['busy', 'c1', 'p3', 'p0', 'p1', 'p2']);
    await expect(admitted.get('p3')).resolves.toMatchObject({ priority: 'client' });
    await expect(admitted.get('p0')).resolves.toMatchObject({ priority: 'prestart' });
  });

  it('fair queue › the admission reports the time spent queued', async () => {
    const gate = new SpawnGate({ maxConcurrentSpawns: 1 }, { evictOne: () => Promise.resolve(false) });
    const first = await gate.enter('a');
    expect(first.queuedMs).toBeLessThan(1000);
    const second = gate.enter('b');
    await tick(30);
    gate.settled('a', true);
    expect((await second).queuedMs).toBeGreaterThanOrEqual(25);
  });

  it('fair queue › a pre-start into a full gate fails with GW_CAPACITY without evicting anything', async () => {
    const ev = { calls: 0, evictOne: () => (ev.calls++, Promise.resolve(true)) };
    const gate = new SpawnGate({ maxChildren: 1 }, ev);
    await gate.enter('running');
    gate.settled('running', true);
    const order: string[] = [];
    track(gate.enter('pre', { priority: 'prestart', rank: 0 }), 'pre', order);
    await tick();
    expect(order).toEqual(['pre:GW_CAPACITY']);
    expect(ev.calls).toBe(0);
    expect(gate.children).toBe(1);
  });
});
