/**
 * A level-triggered reconcile loop: `trigger()` on any change; the work runs
 * once per burst (debounced), never twice at once, and again after a failure
 * with capped backoff, until it succeeds. Controllers compute the whole
 * desired state each pass, so a missed or merged trigger loses nothing.
 */
import type { Logger } from '../log.js';

const RETRY_BASE_MS = 500;
const RETRY_MAX_MS = 15_000;

export class ReconcileLoop {
  readonly #name: string;
  readonly #work: () => Promise<void>;
  readonly #log: Logger;
  readonly #debounceMs: number;
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #dirty = false;
  #failures = 0;
  #stopped = false;
  #lastError: string | null = null;
  #passes = 0;

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

  trigger(delayMs = this.#debounceMs): void {
    if (this.#stopped) return;
    if (this.#running) {
      this.#dirty = true;
      return;
    }
    if (this.#timer) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.#run();
    }, delayMs);
    this.#timer.unref();
  }

  async #run(): Promise<void> {
    if (this.#stopped) return;
    this.#running = true;
    this.#dirty = false;
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
