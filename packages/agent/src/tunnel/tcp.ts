/**
 * TCP ends. Inbound: a local listener; each accepted connection becomes one
 * HTTP/2 stream to the hub, spliced once the hub says an exit is connected.
 * Outbound: for a stream from the hub, connect to a target first, then answer
 * 200 and splice; refusal answers 502 with the reason.
 */
import * as net from 'node:net';
import { type ClientHttp2Stream, type IncomingHttpHeaders, type ServerHttp2Stream, constants as h2 } from 'node:http2';
import {
  DATA_HIGH_WATER_MARK_BYTES,
  ErrorCodes,
  type HostPort,
  Headers,
  ZtmError,
  formatHostPort,
  fromWire,
  readJsonBody,
  earlyPump,
  respondError,
  splice,
  tuneDataStream,
  tunnelPath,
} from '@ztm/proto';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { type EndStats, countClose, countFailure } from './end-stats.js';
import type { InboundEnd, OutboundEnd } from './tunnel-spec.js';

const CONNECT_TIMEOUT_MS = 10_000;

export function listenTcp(end: InboundEnd, at: HostPort, client: HubClient, stats: EndStats, log: Logger): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true, noDelay: true, highWaterMark: DATA_HIGH_WATER_MARK_BYTES } as net.ServerOpts, (socket) =>
    onInboundSocket(end, socket, client, stats, log),
  );
  return listenOn(server, end.key, at);
}

export function listenError(key: string, at: HostPort, err: NodeJS.ErrnoException): ZtmError {
  const why =
    err.code === 'EADDRINUSE'
      ? 'the port is in use by another process'
      : err.code === 'EACCES'
        ? 'permission denied (ports below 1024 need privileges)'
        : (err.code ?? err.message);
  return new ZtmError(ErrorCodes.LISTEN_FAILED, `${key}: cannot listen on ${formatHostPort(at)}: ${why}`, { cause: err });
}

function listenOn(server: net.Server, key: string, at: HostPort): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => reject(listenError(key, at, err));
    server.once('error', onError);
    server.listen(at.port, at.host, () => {
      server.off('error', onError);
      resolve(server);
    });
  });
}

function onInboundSocket(end: InboundEnd, socket: net.Socket, client: HubClient, stats: EndStats, log: Logger): void {
  socket.on('error', () => {});
  // Its read-ahead while the hub finds an exit: this connection's share.
  tuneDataStream(socket);
  let stream: ClientHttp2Stream;
  try {
    stream = client.openStream({ ':path': tunnelPath(end.id), ...(end.exits.length ? { [Headers.exits]: end.exits.join(',') } : {}) });
  } catch (err) {
    const e = err as ZtmError;
    countFailure(stats, e.code);
    log.info({ tunnel: end.key, code: e.code, reason: e.message }, 'connection refused');
    socket.resetAndDestroy();
    return;
  }
  stream.on('error', () => {});
  // The client's first bytes go with the stream's HEADERS: the hub holds them
  // (unread, within the stream's window) until an exit has connected its
  // target, and an exit that refuses never saw them. Nothing comes back to
  // the client before the answer.
  const early = earlyPump(socket, stream);
  let answered = false;
  const onEarlyClose = () => stream.close(h2.NGHTTP2_CANCEL);
  socket.once('close', onEarlyClose);
  stream.once('close', () => {
    if (answered) return;
    countFailure(stats, ErrorCodes.HUB_UNREACHABLE);
    log.info({ tunnel: end.key, code: ErrorCodes.HUB_UNREACHABLE, rstCode: stream.rstCode }, 'hub closed the stream before answering');
    socket.resetAndDestroy();
  });
  stream.once('response', (h) => {
    answered = true;
    const sentEarly = early.stop();
    const status = Number(h[':status']);
    if (status !== 200) {
      readJsonBody(stream)
        .then((body) => fromWire(body, status))
        .catch(() => new ZtmError(ErrorCodes.INTERNAL, `hub answered ${status}`))
        .then((e) => {
          countFailure(stats, e.code);
          log.info({ tunnel: end.key, code: e.code, reason: e.message }, 'connection refused');
          // RST, as a refused connection would get without the tunnel.
          socket.resetAndDestroy();
        });
      return;
    }
    socket.off('close', onEarlyClose);
    stats.open++;
    stats.total++;
    stats.bytesIn += sentEarly;
    splice(
      { stream: socket, reset: () => socket.resetAndDestroy(), release: () => socket.destroy() },
      { stream, reset: () => stream.close(h2.NGHTTP2_CANCEL) },
      (r) => {
        countClose(stats, r.end === 'done' ? 'closed' : 'reset');
        log.debug(
          { tunnel: end.key, bytesIn: sentEarly + r.bytesAtoB, bytesOut: r.bytesBtoA, durationMs: r.durationMs, end: r.end, reason: r.reason },
          'stream closed',
        );
      },
      { meter: stats, batchWrites: true },
    );
  });
}

/** Connect to the first target that accepts, starting at `start` (round-robin). */
export function connectTarget(targets: readonly HostPort[], start: number, signal: { aborted: boolean }): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const errors: string[] = [];
    const attempt = (i: number) => {
      if (signal.aborted) return reject(new ZtmError(ErrorCodes.CLOSED, 'entrance went away'));
      if (i >= targets.length) return reject(new ZtmError(ErrorCodes.TARGET_UNREACHABLE, `no target accepted the connection: ${errors.join('; ')}`));
      const t = targets[(start + i) % targets.length] as HostPort;
      const socket = net.connect({
        host: t.host,
        port: t.port,
        allowHalfOpen: true,
        noDelay: true,
        highWaterMark: DATA_HIGH_WATER_MARK_BYTES,
      } as net.NetConnectOpts);
      const timer = setTimeout(() => socket.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })), CONNECT_TIMEOUT_MS);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(socket);
      });
      socket.once('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        errors.push(`${formatHostPort(t)} ${err.code ?? err.message}`);
        attempt(i + 1);
      });
    };
    attempt(0);
  });
}

export function serveTcpExit(end: OutboundEnd, stream: ServerHttp2Stream, headers: IncomingHttpHeaders, rr: number, stats: EndStats, log: Logger): void {
  const source = String(headers[Headers.sourceEndpoint] ?? '');
  const signal = { aborted: false };
  stream.once('close', () => {
    signal.aborted = true;
  });
  connectTarget(end.targets, rr, signal).then(
    (socket) => {
      if (signal.aborted) return socket.destroy();
      socket.on('error', () => {});
      stream.respond({ ':status': 200 });
      stats.open++;
      stats.total++;
      splice(
        { stream, reset: () => stream.close(h2.NGHTTP2_CANCEL) },
        { stream: socket, reset: () => socket.resetAndDestroy(), release: () => socket.destroy() },
        (r) => {
          countClose(stats, r.end === 'done' ? 'closed' : 'reset');
          log.debug(
            { tunnel: end.key, source, bytesIn: r.bytesAtoB, bytesOut: r.bytesBtoA, durationMs: r.durationMs, end: r.end, reason: r.reason },
            'stream closed',
          );
        },
        { batchWrites: true },
      );
    },
    (err: ZtmError) => {
      countFailure(stats, err.code);
      log.warn({ tunnel: end.key, source, code: err.code, reason: err.message }, 'target unreachable');
      respondError(stream, new ZtmError(err.code, `${end.key}: ${err.message}`));
    },
  );
}
