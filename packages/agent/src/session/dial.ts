/** TLS 1.3 dial to a hub address, with errors that say what to do. */
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { ErrorCodes, ZtmError } from '@ztm/proto';
import { EagerWriteSocket } from './eager-write-socket.js';

export interface DialOptions {
  ca: string;
  cert?: string;
  key?: string;
  alpn: string;
  timeoutMs?: number;
}

export function splitHostPort(hostPort: string): { host: string; port: number } {
  const m = /^\[(.+)\]:(\d+)$/.exec(hostPort) ?? /^(.+):(\d+)$/.exec(hostPort);
  if (!m) throw new ZtmError(ErrorCodes.CONFIG, `${hostPort} is not host:port`);
  return { host: m[1] as string, port: Number(m[2]) };
}

const TRUST_ERRORS = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_GET_ISSUER_CERT',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_HAS_EXPIRED',
]);

const rawOf = new WeakMap<tls.TLSSocket, EagerWriteSocket>();

/** Bytes read so far from the hub on a connection made by dialTls (0 for others). */
export function bytesReadFromHub(socket: tls.TLSSocket): number {
  return rawOf.get(socket)?.bytesRead ?? 0;
}

export function dialTls(hostPort: string, o: DialOptions): Promise<tls.TLSSocket> {
  const { host, port } = splitHostPort(hostPort);
  return new Promise((resolve, reject) => {
    // TLS over a connection whose writes complete at once: see
    // eager-write-socket.ts for why HTTP/2 over a plain socket can lock up
    // with bulk data both ways.
    const raw = new EagerWriteSocket({ host, port });
    const socket = tls.connect({
      socket: raw as unknown as Duplex,
      ca: [o.ca],
      cert: o.cert,
      key: o.key,
      ALPNProtocols: [o.alpn],
      minVersion: 'TLSv1.3',
      servername: net.isIP(host) ? undefined : host,
    });
    const timer = setTimeout(() => socket.destroy(new ZtmError(ErrorCodes.TIMEOUT, `TLS handshake with hub ${hostPort} timed out`)), o.timeoutMs ?? 10_000);
    rawOf.set(socket, raw);
    socket.once('close', () => raw.destroy());
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      if (socket.alpnProtocol !== o.alpn) {
        socket.destroy();
        reject(new ZtmError(ErrorCodes.HUB_UNREACHABLE, `${hostPort} is not a ztm hub (ALPN ${String(socket.alpnProtocol)})`));
        return;
      }
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (err instanceof ZtmError) return reject(err);
      if (err.code && TRUST_ERRORS.has(err.code)) {
        return reject(
          new ZtmError(
            ErrorCodes.HUB_UNTRUSTED,
            `hub at ${hostPort} presented a certificate this mesh's CA does not vouch for (${err.code}): the address is wrong or the permit belongs to another mesh`,
            { cause: err },
          ),
        );
      }
      reject(new ZtmError(ErrorCodes.HUB_UNREACHABLE, `cannot reach hub at ${hostPort}: ${err.code ?? err.message}`, { cause: err }));
    });
  });
}
