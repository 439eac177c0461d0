/**
 * Event-loop delay of one thread, as a p99 over fixed windows. The
 * histogram is reset by the window's own timer, never by a reader: a
 * scrape, an admin listing and a second Prometheus replica each read the
 * same figure instead of erasing what the others would have seen.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { IntervalHistogram } from 'node:perf_hooks';

export const LOOP_DELAY_WINDOW_MS = 10_000;

export class LoopDelayWindow {
  private readonly histogram: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  /** p99 of the last complete window, in nanoseconds. */
  private lastP99 = 0;

  constructor(windowMs = LOOP_DELAY_WINDOW_MS) {
    this.histogram = monitorEventLoopDelay({ resolution: 10 });
    this.histogram.enable();
    this.timer = setInterval(() => {
      this.lastP99 = this.histogram.percentile(99);
      this.histogram.reset();
    }, windowMs);
    this.timer.unref();
  }

  /**
   * The larger of the last complete window's p99 and the current window's so
   * far, so a stall shows at once and stays visible for a whole window.
   */
  p99Ms(): number {
    return Math.max(this.lastP99, this.histogram.percentile(99)) / 1e6;
  }

  close(): void {
    clearInterval(this.timer);
    this.histogram.disable();
  }
}
