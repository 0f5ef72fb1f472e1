/**
 * A level-triggered reconcile loop: `trigger()` on any change; the work runs
 * once per burst, never twice at once, and again after a failure with capped
 * backoff, until it succeeds. Controllers compute the whole desired state each
 * pass, so a missed or merged trigger loses nothing.
 *
 * How long a trigger waits: a change that comes to a loop at rest (no pass
 * started within `debounceMs`) runs after QUICK_MS, enough to take in the
 * rest of the watch events of one change, so a ServiceExport reaches the other
 * clusters without two 100 ms waits on its way (docs/performance.md); while
 * passes follow each other (a storm of events, a controller answering its own
 * writes), triggers wait `debounceMs`, so a storm costs at most one pass per
 * `debounceMs` plus one for what changed while a pass ran.
 */
import type { Logger } from '../log.js';

const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 15_000;
/** The wait of a trigger that finds the loop at rest. */
const QUICK_MS = 5;

export class ReconcileLoop {
  readonly #name: string;
  readonly #work: () => Promise<void>;
  readonly #log: Logger;
  readonly #debounceMs: number;
  #timer: NodeJS.Timeout | undefined;
  #wake: { at: number; timer: NodeJS.Timeout } | undefined;
  #running = false;
  #dirty = false;
  #failures = 0;
  #stopped = false;
  #lastError: string | null = null;
  #passes = 0;
  #lastStart = Number.NEGATIVE_INFINITY;

  constructor(name: string, work: () => Promise<void>, log: Logger, debounceMs = 100) {
    this.#name = name;
    this.#work = work;
    this.#log = log;
    this.#debounceMs = debounceMs;
  }

  get lastError(): string | null {
    return this.#lastError;
  }

  get passes(): number {
    return this.#passes;
  }

  /** Run a pass soon: after `delayMs` if given (a retry, a timed wake-up),
   * else QUICK_MS or `debounceMs` (above). */
  trigger(delayMs?: number): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#dirty = true;
      return;
    }
    if (this.#timer) return;
    const wait = delayMs ?? (performance.now() - this.#lastStart >= this.#debounceMs ? QUICK_MS : this.#debounceMs);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#run();
    }, wait);
    this.#timer.unref();
  }

  /** A pass in `delayMs` (a deadline the work knows of, such as the end of a
   * grace period), whether or not a pass runs now; the earliest asked for
   * wins. Unlike trigger(), a call from inside a pass does not make the loop
   * run again at once: it would spin until the deadline. */
  wakeIn(delayMs: number): void {
    if (this.#stopped) return;
    const at = performance.now() + delayMs;
    if (this.#wake && this.#wake.at <= at) return;
    if (this.#wake) clearTimeout(this.#wake.timer);
    const timer = setTimeout(() => {
      this.#wake = undefined;
      this.trigger(0);
    }, delayMs);
    timer.unref();
    this.#wake = { at, timer };
  }

  async #run(): Promise<void> {
    if (this.#stopped) return;
    this.#running = true;
    this.#dirty = false;
    this.#lastStart = performance.now();
    let retryIn = 0;
    try {
      await this.#work();
      this.#passes++;
      if (this.#failures > 0) this.#log.info({ loop: this.#name }, 'reconcile recovered');
      this.#failures = 0;
      this.#lastError = null;
    } catch (err) {
      this.#failures++;
      const msg = (err as Error).message;
      if (msg !== this.#lastError) this.#log.warn({ loop: this.#name, reason: msg, failures: this.#failures }, 'reconcile failed; retrying');
      this.#lastError = msg;
      const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(this.#failures - 1, 8));
      retryIn = ceiling / 2 + Math.random() * (ceiling / 2);
    } finally {
      this.#running = false;
    }
    if (retryIn > 0) this.trigger(retryIn);
    else if (this.#dirty) this.trigger(0);
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#wake?.timer);
  }
}

/** Deep equality of JSON values (key order ignored). */
export function sameJsonValue(a: unknown, b: unknown): boolean {
  return canonical(a) === canonical(b);
}

function canonical(v: unknown): string {
  return (
    JSON.stringify(v, (_k, x) =>
      x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([p], [q]) => (p < q ? -1 : p > q ? 1 : 0))) : x,
    ) ?? 'undefined'
  );
}
