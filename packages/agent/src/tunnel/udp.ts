/**
 * UDP ends. One HTTP/2 stream per client flow (client address), datagrams
 * length-prefixed inside it. A flow idle for UDP_FLOW_IDLE_MS is closed. When a
 * stream cannot take more (backlog full) datagrams are dropped and counted:
 * UDP semantics, never an unbounded queue.
 */
import * as dgram from 'node:dgram';
import { type ClientHttp2Stream, type IncomingHttpHeaders, type ServerHttp2Stream, constants as h2 } from 'node:http2';
import { isIPv6 } from 'node:net';
import {
  DatagramDecoder,
  ErrorCodes,
  type HostPort,
  Headers,
  UDP_FLOW_IDLE_MS,
  UDP_MAX_BACKLOG_BYTES,
  ZtmError,
  encodeDatagram,
  formatHostPort,
  respondError,
  tunnelPath,
} from '@ztm/proto';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { type EndStats, countClose, countFailure } from './end-stats.js';
import { listenError } from './tcp.js';
import type { InboundEnd, OutboundEnd } from './tunnel-spec.js';

/** Kernel socket buffers asked for (the kernel caps them at net.core.rmem_max
 * / wmem_max): bursts wait there instead of being dropped by the kernel. */
const UDP_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

/** Datagrams held per flow while its stream is being set up. */
const MAX_PENDING_DATAGRAMS = 64;

export interface UdpListener {
  close(): void;
  readonly flows: number;
}

interface Flow {
  stream: ClientHttp2Stream;
  ready: boolean;
  pending: Buffer[];
  lastActive: number;
}

export function listenUdp(end: InboundEnd, at: HostPort, client: HubClient, stats: EndStats, log: Logger, idleMs = UDP_FLOW_IDLE_MS): Promise<UdpListener> {
  const sock = dgram.createSocket({
    type: isIPv6(at.host) ? 'udp6' : 'udp4',
    recvBufferSize: UDP_SOCKET_BUFFER_BYTES,
    sendBufferSize: UDP_SOCKET_BUFFER_BYTES,
  });
  const flows = new Map<string, Flow>();

  const closeFlow = (key: string, flow: Flow, reason: string) => {
    if (flows.get(key) !== flow) return;
    flows.delete(key);
    if (flow.ready) countClose(stats, reason);
    if (!flow.stream.destroyed) flow.stream.end();
  };

  const openFlow = (key: string, rinfo: dgram.RemoteInfo): Flow | undefined => {
    let stream: ClientHttp2Stream;
    try {
      stream = client.openStream({ ':path': tunnelPath(end.id), ...(end.exits.length ? { [Headers.exits]: end.exits.join(',') } : {}) });
    } catch (err) {
      countFailure(stats, (err as ZtmError).code);
      return undefined;
    }
    const flow: Flow = { stream, ready: false, pending: [], lastActive: Date.now() };
    flows.set(key, flow);
    stream.on('error', () => {});
    stream.once('response', (h) => {
      if (Number(h[':status']) !== 200) {
        countFailure(stats, `HTTP_${h[':status']}`);
        log.info({ tunnel: end.key, status: h[':status'] }, 'udp flow refused');
        flows.delete(key);
        stream.close(h2.NGHTTP2_CANCEL);
        return;
      }
      flow.ready = true;
      stream.on('data', onData);
      stats.open++;
      stats.total++;
      for (const d of flow.pending) stream.write(encodeDatagram(d));
      flow.pending = [];
    });
    const decoder = new DatagramDecoder();
    // Attached on a 200 only ('response' comes a tick after the HEADERS frame,
    // so a listener set now could see datagrams before the answer).
    const onData = (chunk: Buffer) => {
      let datagrams: Buffer[];
      try {
        datagrams = decoder.push(chunk);
      } catch {
        closeFlow(key, flow, 'bad-frame');
        return;
      }
      flow.lastActive = Date.now();
      for (const d of datagrams) {
        stats.bytesOut += d.length;
        sock.send(d, rinfo.port, rinfo.address);
      }
    };
    stream.once('close', () => closeFlow(key, flow, 'closed'));
    return flow;
  };

  sock.on('message', (msg, rinfo) => {
    const key = `${rinfo.address}|${rinfo.port}`;
    const flow = flows.get(key) ?? openFlow(key, rinfo);
    if (!flow) {
      stats.dropped++;
      return;
    }
    flow.lastActive = Date.now();
    if (!flow.ready) {
      if (flow.pending.length < MAX_PENDING_DATAGRAMS) flow.pending.push(Buffer.from(msg));
      else stats.dropped++;
      return;
    }
    if (flow.stream.writableLength > UDP_MAX_BACKLOG_BYTES) {
      stats.dropped++;
      return;
    }
    stats.bytesIn += msg.length;
    flow.stream.write(encodeDatagram(msg));
  });
  sock.on('error', (err) => log.warn({ tunnel: end.key, reason: err.message }, 'udp socket error'));

  const sweep = setInterval(
    () => {
      const now = Date.now();
      for (const [key, flow] of flows) if (now - flow.lastActive > idleMs) closeFlow(key, flow, 'idle');
    },
    Math.max(250, Math.floor(idleMs / 4)),
  );
  sweep.unref();

  return new Promise((resolve, reject) => {
    sock.once('error', (err: NodeJS.ErrnoException) => reject(listenError(end.key, at, err)));
    sock.bind(at.port, at.host, () => {
      sock.removeAllListeners('error');
      sock.on('error', (err) => log.warn({ tunnel: end.key, reason: err.message }, 'udp socket error'));
      resolve({
        get flows() {
          return flows.size;
        },
        close() {
          clearInterval(sweep);
          for (const [key, flow] of flows) closeFlow(key, flow, 'closed');
          sock.close();
        },
      });
    });
  });
}

export function serveUdpExit(
  end: OutboundEnd,
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  rr: number,
  stats: EndStats,
  log: Logger,
  idleMs = UDP_FLOW_IDLE_MS,
): void {
  const target = end.targets[rr % end.targets.length] as HostPort;
  const source = String(headers[Headers.sourceEndpoint] ?? '');
  const sock = dgram.createSocket({
    type: isIPv6(target.host) ? 'udp6' : 'udp4',
    recvBufferSize: UDP_SOCKET_BUFFER_BYTES,
    sendBufferSize: UDP_SOCKET_BUFFER_BYTES,
  });
  let lastActive = Date.now();
  let open = false;
  let finished = false;
  const finish = (reason: string) => {
    if (finished) return;
    finished = true;
    clearInterval(idle);
    if (open) countClose(stats, reason);
    try {
      sock.close();
    } catch {}
    if (!stream.destroyed) stream.end();
  };
  const idle = setInterval(
    () => {
      if (Date.now() - lastActive > idleMs) finish('idle');
    },
    Math.max(250, Math.floor(idleMs / 4)),
  );
  idle.unref();
  stream.once('close', () => finish('closed'));
  sock.once('error', (err: NodeJS.ErrnoException) => {
    countFailure(stats, ErrorCodes.TARGET_UNREACHABLE);
    respondError(stream, new ZtmError(ErrorCodes.TARGET_UNREACHABLE, `${end.key}: target ${formatHostPort(target)}: ${err.code ?? err.message}`));
    finish('error');
  });
  sock.connect(target.port, target.host, () => {
    sock.removeAllListeners('error');
    // ICMP port unreachable on a connected socket: the datagram is lost, as it
    // would be without the tunnel; count it and go on.
    sock.on('error', () => {
      stats.dropped++;
    });
    open = true;
    stats.open++;
    stats.total++;
    stream.respond({ ':status': 200 });
    const decoder = new DatagramDecoder();
    stream.on('data', (chunk: Buffer) => {
      let datagrams: Buffer[];
      try {
        datagrams = decoder.push(chunk);
      } catch {
        log.warn({ tunnel: end.key, source }, 'bad udp framing; closing flow');
        stream.close(h2.NGHTTP2_PROTOCOL_ERROR);
        return;
      }
      lastActive = Date.now();
      for (const d of datagrams) {
        stats.bytesIn += d.length;
        sock.send(d);
      }
    });
    stream.on('end', () => finish('closed'));
    sock.on('message', (msg) => {
      lastActive = Date.now();
      if (stream.writableLength > UDP_MAX_BACKLOG_BYTES || !stream.writable) {
        stats.dropped++;
        return;
      }
      stats.bytesOut += msg.length;
      stream.write(encodeDatagram(msg));
    });
  });
}
