/**
 * Client of the local admin APIs (hub and agent): HTTP/1.1 + JSON over the
 * Unix socket in the data directory, which is 0600 so only the owner can use it.
 */
import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import { type IncomingMessage, type Server, type ServerResponse, createServer, request } from 'node:http';
import { connect } from 'node:net';
import { ErrorCodes, ZtmError, errorHttpStatus, fromWire, toZtmError } from './errors.js';
import { MAX_REQUEST_BODY_BYTES } from './limits.js';

export interface AdminRequest {
  socketPath: string;
  method: 'GET' | 'POST' | 'DELETE';
  path: string;
  body?: unknown;
  timeoutMs?: number;
}

export function adminRequest<T>(req: AdminRequest): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
    const r = request(
      {
        socketPath: req.socketPath,
        method: req.method,
        path: req.path,
        headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
        timeout: req.timeoutMs ?? 30_000,
      },
      (res) => {
        readJsonBody(res, 16 * 1024 * 1024)
          .then((body) => {
            if ((res.statusCode ?? 500) >= 400) reject(fromWire(body, res.statusCode));
            else resolve(body as T);
          })
          .catch(reject);
      },
    );
    r.on('timeout', () => r.destroy(new ZtmError(ErrorCodes.TIMEOUT, 'admin API did not answer in time')));
    r.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
        reject(new ZtmError(ErrorCodes.NOT_RUNNING, 'the daemon is not running (no admin socket)', { cause: err }));
      } else reject(err);
    });
    r.end(payload);
  });
}

/** Read a whole JSON body from a readable, refusing more than `maxBytes`. */
export async function readJsonBody(src: NodeJS.ReadableStream & { destroy?: (e?: Error) => void }, maxBytes = MAX_REQUEST_BODY_BYTES): Promise<unknown> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of src as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > maxBytes) {
      const err = new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `body exceeds ${maxBytes} bytes`);
      src.destroy?.(err);
      throw err;
    }
    chunks.push(chunk);
  }
  if (total === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new ZtmError(ErrorCodes.BAD_REQUEST, 'body is not valid JSON', { cause: err });
  }
}

/** sun_path holds 108 bytes on Linux, including the terminating NUL. */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;

export type AdminHandler = (body: unknown, url: URL) => Promise<unknown> | unknown;
/** Routes keyed by "METHOD /path". */
export type AdminRoutes = Record<string, AdminHandler>;
export interface AdminLog {
  error(obj: object, msg: string): void;
}

/** Serve the admin API on a Unix socket that only the owner may use (0600
 * from the first moment: created under umask 0177). */
export async function startAdminServer(socketPath: string, routes: AdminRoutes, log: AdminLog): Promise<Server> {
  if (Buffer.byteLength(socketPath) > MAX_UNIX_SOCKET_PATH_BYTES) {
    throw new ZtmError(
      ErrorCodes.CONFIG,
      `admin socket path ${socketPath} is ${Buffer.byteLength(socketPath)} bytes, over the ${MAX_UNIX_SOCKET_PATH_BYTES} a Unix socket allows: use a shorter --data directory`,
    );
  }
  if (existsSync(socketPath)) {
    // A live daemon answers on it: refuse to run twice on one data directory.
    const alive = await new Promise<boolean>((resolve) => {
      const s = connect(socketPath, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (alive) throw new ZtmError(ErrorCodes.CONFIG, `another daemon already runs on this data directory (${socketPath})`);
    unlinkSync(socketPath); // stale, left by a crash
  }
  const server = createServer((req, res) => void handleAdmin(req, res, routes, log));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const old = process.umask(0o177);
    server.listen(socketPath, () => {
      process.umask(old);
      server.off('error', reject);
      resolve();
    });
  });
  chmodSync(socketPath, 0o600);
  return server;
}

async function handleAdmin(req: IncomingMessage, res: ServerResponse, routes: AdminRoutes, log: AdminLog): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://admin');
  const route = routes[`${req.method} ${url.pathname}`];
  let status = 200;
  let body: unknown;
  try {
    if (!route) throw new ZtmError(ErrorCodes.NOT_FOUND, `no admin route ${req.method} ${url.pathname}`);
    body = (await route(await readJsonBody(req), url)) ?? {};
  } catch (err) {
    const e = toZtmError(err);
    if (e.code === ErrorCodes.INTERNAL) log.error({ err: e.message }, 'admin request failed');
    status = errorHttpStatus[e.code];
    body = e.toWire();
  }
  const payload = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': payload.length });
  res.end(payload);
}
