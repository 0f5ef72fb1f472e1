/**
 * An informer: a local cache of one kind of object, kept current by list +
 * watch. The watch resumes from the last resourceVersion it saw (bookmarks
 * keep that fresh), and only a 410 Gone (the version was compacted away) makes
 * it list again. Errors back off (capped, jittered) and never stop it: an API
 * server that is restarted or unreachable for a while is simply waited for.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from '../log.js';
import { KubeError, type KubeApi, type KubeObject, type WatchEvent } from './kube-api.js';

export type InformerEvent = 'added' | 'modified' | 'deleted';

export interface InformerOptions {
  api: KubeApi;
  /** Collection path, e.g. /api/v1/services. */
  path: string;
  labelSelector?: string;
  log: Logger;
  /** Server-side watch timeout (jittered ±20 %): the watch is renewed this often. */
  watchTimeoutSec?: number;
  pageSize?: number;
}

const BACKOFF_BASE_MS = 250;
const BACKOFF_MAX_MS = 15_000;

export const objectKey = (o: KubeObject): string => (o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name);

export class Informer<T extends KubeObject = KubeObject> extends EventEmitter<{ event: [InformerEvent, T]; synced: [] }> {
  readonly path: string;
  readonly #o: InformerOptions;
  readonly #store = new Map<string, T>();
  #rv = '';
  #synced = false;
  #stopped = false;
  #abort: AbortController | undefined;
  #failures = 0;
  #lastError: string | null = null;
  #relists = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(o: InformerOptions) {
    super();
    this.#o = o;
    this.path = o.path;
  }

  get synced(): boolean {
    return this.#synced;
  }

  get lastError(): string | null {
    return this.#lastError;
  }

  get resourceVersion(): string {
    return this.#rv;
  }

  get relists(): number {
    return this.#relists;
  }

  get(key: string): T | undefined {
    return this.#store.get(key);
  }

  list(): IterableIterator<T> {
    return this.#store.values();
  }

  get size(): number {
    return this.#store.size;
  }

  start(): void {
    void this.#run();
  }

  /** Resolves once the first list has been loaded. */
  waitSynced(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve) => this.once('synced', resolve));
  }

  /** Put an object we just wrote into the cache ahead of its watch event, so a
   * reconcile that runs before the event does not write it again. */
  observe(obj: T): void {
    const key = objectKey(obj);
    const old = this.#store.get(key);
    if (old && Number(old.metadata.resourceVersion) >= Number(obj.metadata.resourceVersion)) return;
    this.#store.set(key, obj);
  }

  forget(key: string): void {
    this.#store.delete(key);
  }

  stop(): void {
    this.#stopped = true;
    this.#abort?.abort();
    clearTimeout(this.#timer);
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      try {
        if (!this.#rv) await this.#list();
        await this.#watch();
        this.#failures = 0;
      } catch (err) {
        if (this.#stopped) return;
        const e = err instanceof KubeError ? err : new KubeError(0, 'Error', (err as Error).message, err);
        if (e.status === 410 || e.reason === 'Expired' || e.reason === 'Gone') {
          this.#o.log.info({ path: this.path, resourceVersion: this.#rv }, 'watch expired (410); listing again');
          this.#rv = '';
          this.#relists++;
          continue;
        }
        this.#failures++;
        if (this.#lastError !== e.message || this.#failures === 1)
          this.#o.log.warn({ path: this.path, status: e.status, reason: e.message }, 'informer error; retrying');
        this.#lastError = e.message;
        const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(this.#failures, 10));
        await new Promise<void>((r) => {
          this.#timer = setTimeout(r, ceiling / 2 + Math.random() * (ceiling / 2));
          this.#timer.unref();
        });
      }
    }
  }

  async #list(): Promise<void> {
    const fresh = new Map<string, T>();
    let cont: string | undefined;
    let rv = '';
    do {
      const page = await this.#o.api.list<T>(this.path, {
        labelSelector: this.#o.labelSelector,
        limit: String(this.#o.pageSize ?? 500),
        continue: cont,
      });
      for (const item of page.items) fresh.set(objectKey(item), item);
      cont = page.metadata.continue || undefined;
      rv = page.metadata.resourceVersion ?? rv;
    } while (cont);
    const old = new Map(this.#store);
    this.#store.clear();
    for (const [k, v] of fresh) this.#store.set(k, v);
    this.#rv = rv;
    this.#lastError = null;
    for (const [k, v] of old) if (!fresh.has(k)) this.emit('event', 'deleted', v);
    for (const [k, v] of fresh) {
      const before = old.get(k);
      if (!before) this.emit('event', 'added', v);
      else if (before.metadata.resourceVersion !== v.metadata.resourceVersion) this.emit('event', 'modified', v);
    }
    if (!this.#synced) {
      this.#synced = true;
      this.emit('synced');
    }
  }

  async #watch(): Promise<void> {
    const abort = new AbortController();
    this.#abort = abort;
    const base = this.#o.watchTimeoutSec ?? 300;
    const timeout = Math.round(base * (0.8 + Math.random() * 0.4));
    let gone: KubeError | undefined;
    // The server ends the watch after `timeout`; a connection that went silent
    // (no FIN, no RST) is given up a little later.
    const watchdog = setTimeout(() => abort.abort(), (timeout + 30) * 1000);
    watchdog.unref();
    await this.#o.api
      .watch<T>(
        this.path,
        {
          resourceVersion: this.#rv,
          allowWatchBookmarks: 'true',
          labelSelector: this.#o.labelSelector,
          timeoutSeconds: String(timeout),
        },
        (e: WatchEvent<T>) => {
          if (e.type === 'ERROR') {
            const s = e.object as unknown as { code?: number; reason?: string; message?: string };
            gone = new KubeError(s.code ?? 500, s.reason ?? 'Error', `watch ${this.path}: ${s.message ?? 'error event'}`);
            abort.abort();
            return;
          }
          const rv = e.object?.metadata?.resourceVersion;
          if (rv) this.#rv = rv;
          if (e.type === 'BOOKMARK') return;
          const key = objectKey(e.object);
          if (e.type === 'DELETED') {
            this.#store.delete(key);
            this.emit('event', 'deleted', e.object);
          } else {
            this.#store.set(key, e.object);
            this.emit('event', e.type === 'ADDED' ? 'added' : 'modified', e.object);
          }
        },
        abort.signal,
      )
      .finally(() => clearTimeout(watchdog));
    this.#lastError = null;
    if (gone) throw gone;
  }
}
