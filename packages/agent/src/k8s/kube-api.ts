/**
 * The agent's Kubernetes API client. `@kubernetes/client-node` (loaded here,
 * lazily, and only in Kubernetes mode) reads the kubeconfig or the in-cluster
 * service account and supplies credentials (client certificates, bearer
 * tokens re-read on rotation, exec plugins); the requests themselves are plain
 * node:https with a keep-alive agent, so the watch, server-side apply and
 * status-subresource calls the controllers need stay small and explicit.
 */
import * as http from 'node:http';
import * as https from 'node:https';
import { ErrorCodes, ZtmError } from '@ztm/proto';

/** Just enough of client-node's KubeConfig. */
interface KubeConfigLike {
  loadFromFile(file: string): void;
  loadFromCluster(): void;
  getCurrentCluster(): { server: string; skipTLSVerify?: boolean; proxyUrl?: string } | null;
  applyToHTTPSOptions(opts: https.RequestOptions): Promise<void>;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean; blockOwnerDeletion?: boolean }[];
  };
  // biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects are open-ended JSON
  spec?: any;
  // biome-ignore lint/suspicious/noExplicitAny: Kubernetes objects are open-ended JSON
  status?: any;
  // biome-ignore lint/suspicious/noExplicitAny: EndpointSlice fields live at the top level
  [field: string]: any;
}

export interface KubeList<T> {
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

/** An API error: `status` is the HTTP status (0: no answer), `reason` the
 * Status reason (NotFound, Conflict, Gone, Forbidden…). */
export class KubeError extends ZtmError {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string, cause?: unknown) {
    const code =
      status === 404
        ? ErrorCodes.NOT_FOUND
        : status === 401
          ? ErrorCodes.UNAUTHENTICATED
          : status === 403
            ? ErrorCodes.FORBIDDEN
            : status === 0 || status >= 500
              ? ErrorCodes.OFFLINE
              : ErrorCodes.BAD_REQUEST;
    super(code, message, { cause, retryable: status === 0 || status >= 500 || status === 409 || status === 429 });
    this.status = status;
    this.reason = reason;
  }
}

const REQUEST_TIMEOUT_MS = 15_000;
/** Largest response body read into memory (a list page is ≤ 500 objects). */
const MAX_BODY_BYTES = 64 * 1024 * 1024;
export const FIELD_MANAGER = 'ztm-agent';

export interface KubeApiOptions {
  /** kubeconfig file; none: the in-cluster service account. */
  kubeconfig?: string;
}

export class KubeApi {
  readonly server: string;
  readonly #kc: KubeConfigLike;
  readonly #base: URL;
  #agent: http.Agent | undefined;

  private constructor(kc: KubeConfigLike) {
    this.#kc = kc;
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new ZtmError(ErrorCodes.CONFIG, 'kubeconfig has no current cluster');
    this.server = cluster.server;
    this.#base = new URL(cluster.server);
  }

  static async create(o: KubeApiOptions): Promise<KubeApi> {
    const k8s = await import('@kubernetes/client-node');
    const kc = new k8s.KubeConfig();
    try {
      if (o.kubeconfig) kc.loadFromFile(o.kubeconfig);
      else kc.loadFromCluster();
    } catch (err) {
      throw new ZtmError(ErrorCodes.CONFIG, `cannot load ${o.kubeconfig ? `kubeconfig ${o.kubeconfig}` : 'the in-cluster config'}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    return new KubeApi(kc as unknown as KubeConfigLike);
  }

  async get<T = KubeObject>(path: string): Promise<T> {
    return (await this.request('GET', path)) as T;
  }

  async list<T = KubeObject>(path: string, query: Record<string, string | undefined> = {}): Promise<KubeList<T>> {
    return (await this.request('GET', path, { query })) as KubeList<T>;
  }

  /** Server-side apply (the object's whole intent, owned by our field manager). */
  async apply<T = KubeObject>(path: string, body: unknown, force = true): Promise<T> {
    return (await this.request('PATCH', path, {
      body,
      contentType: 'application/apply-patch+yaml',
      query: { fieldManager: FIELD_MANAGER, force: force ? 'true' : undefined },
    })) as T;
  }

  async delete(path: string, query: Record<string, string | undefined> = {}): Promise<void> {
    try {
      await this.request('DELETE', path, { query });
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return;
      throw err;
    }
  }

  /** One request; JSON in and out. */
  async request(
    method: string,
    path: string,
    o: { body?: unknown; query?: Record<string, string | undefined>; contentType?: string; timeoutMs?: number } = {},
  ): Promise<unknown> {
    const res = await this.#open(method, path, o.query ?? {}, o.body, o.contentType, o.timeoutMs ?? REQUEST_TIMEOUT_MS);
    const text = await readBody(res);
    const status = res.statusCode ?? 0;
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : {};
    } catch {
      json = undefined;
    }
    if (status >= 200 && status < 300) return json;
    throw toKubeError(status, json, `${method} ${path}`);
  }

  /** Watch a collection from `resourceVersion`; events until the server ends
   * the watch (timeoutSeconds), the connection drops, or `signal` aborts.
   * Resolves on a clean end; rejects with a KubeError otherwise. */
  async watch<T>(path: string, query: Record<string, string | undefined>, onEvent: (e: WatchEvent<T>) => void, signal: AbortSignal): Promise<void> {
    const res = await this.#open('GET', path, { ...query, watch: 'true' }, undefined, undefined, 0, signal);
    const status = res.statusCode ?? 0;
    if (status !== 200) {
      const text = await readBody(res).catch(() => '');
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {}
      throw toKubeError(status, json, `watch ${path}`);
    }
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      res.setEncoding('utf8');
      const onAbort = () => {
        res.destroy();
        resolve();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      res.on('data', (chunk: string) => {
        buf += chunk;
        let nl = buf.indexOf('\n');
        while (nl >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          nl = buf.indexOf('\n');
          if (!line) continue;
          let e: WatchEvent<T>;
          try {
            e = JSON.parse(line) as WatchEvent<T>;
          } catch {
            continue;
          }
          onEvent(e);
        }
        if (buf.length > MAX_BODY_BYTES) res.destroy(new Error('watch event too large'));
      });
      res.on('end', () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
      res.on('error', (err) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) resolve();
        else reject(new KubeError(0, 'ConnectionLost', `watch ${path}: ${err.message}`, err));
      });
      res.on('close', () => {
        signal.removeEventListener('abort', onAbort);
        if (!res.complete && !signal.aborted) reject(new KubeError(0, 'ConnectionLost', `watch ${path}: connection closed`));
        else resolve();
      });
    });
  }

  close(): void {
    this.#agent?.destroy();
  }

  async #open(
    method: string,
    path: string,
    query: Record<string, string | undefined>,
    body: unknown,
    contentType: string | undefined,
    timeoutMs: number,
    signal?: AbortSignal,
  ): Promise<http.IncomingMessage> {
    const opts: https.RequestOptions = { headers: {} };
    await this.#kc.applyToHTTPSOptions(opts);
    const url = new URL(this.#base.pathname.replace(/\/$/, '') + path, this.#base);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, v);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: http.OutgoingHttpHeaders = { ...(opts.headers as http.OutgoingHttpHeaders), accept: 'application/json' };
    if (payload) {
      headers['content-type'] = contentType ?? 'application/json';
      headers['content-length'] = payload.length;
    }
    const isHttps = url.protocol === 'https:';
    const agent = this.#agentFor(opts, isHttps);
    return new Promise((resolve, reject) => {
      const req = (isHttps ? https : http).request(url, { method, headers, agent, signal }, resolve);
      // Long watches: notice a peer that vanished without closing.
      req.on('socket', (s) => s.setKeepAlive(true, 15_000));
      if (timeoutMs > 0) req.setTimeout(timeoutMs, () => req.destroy(new KubeError(0, 'Timeout', `${method} ${path}: no answer in ${timeoutMs} ms`)));
      req.on('error', (err) =>
        reject(
          err instanceof KubeError
            ? err
            : new KubeError(0, 'ConnectionFailed', `${method} ${path}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, err),
        ),
      );
      req.end(payload);
    });
  }

  /** One keep-alive agent with the kubeconfig's TLS material (rebuilt if the
   * client certificate changes); client-node's own agent when a proxy is set. */
  #agentFor(opts: https.RequestOptions, isHttps: boolean): http.Agent {
    if (this.#kc.getCurrentCluster()?.proxyUrl && opts.agent) return opts.agent as http.Agent;
    const material = { ca: opts.ca, cert: opts.cert, key: opts.key, servername: opts.servername, rejectUnauthorized: opts.rejectUnauthorized };
    const a = this.#agent as (http.Agent & { ztmMaterial?: typeof material }) | undefined;
    if (a && sameMaterial(a.ztmMaterial, material)) return a;
    a?.destroy();
    const fresh = (isHttps ? new https.Agent({ keepAlive: true, maxSockets: 16, ...material }) : new http.Agent({ keepAlive: true })) as http.Agent & {
      ztmMaterial?: typeof material;
    };
    fresh.ztmMaterial = material;
    this.#agent = fresh;
    return fresh;
  }
}

function sameMaterial(a: Record<string, unknown> | undefined, b: Record<string, unknown>): boolean {
  if (!a) return false;
  return Object.keys(b).every((k) => String(a[k]) === String(b[k]));
}

function readBody(res: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    res.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_BODY_BYTES) res.destroy(new Error('response too large'));
      else chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', (err) => reject(new KubeError(0, 'ConnectionLost', err.message, err)));
  });
}

function toKubeError(status: number, json: unknown, what: string): KubeError {
  const s = json as { reason?: string; message?: string; code?: number } | undefined;
  return new KubeError(status, s?.reason ?? `HTTP${status}`, `${what}: ${s?.message ?? `HTTP ${status}`}`);
}
