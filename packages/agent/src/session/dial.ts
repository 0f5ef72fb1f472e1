/** TLS 1.3 dial to a hub address, with errors that say what to do. */
import type { X509Certificate } from 'node:crypto';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { ErrorCodes, HubDialContext, ZtmError, hubCertificateError, hubTlsOptions, parseCaBundle } from '@ztm/proto';
import { EagerWriteSocket } from './eager-write-socket.js';
import { ReadGuard } from './read-guard.js';

export interface DialOptions {
  ca: string;
  cert?: string;
  key?: string;
  alpn: string;
  timeoutMs?: number;
  /** 'eager': TLS over EagerWriteSocket even where the read guard works.
   * Default: ZTM_HUB_SOCKET=eager in the environment, else the guard. */
  socketLayer?: 'guard' | 'eager';
}

export function splitHostPort(hostPort: string): { host: string; port: number } {
  const m = /^\[(.+)\]:(\d+)$/.exec(hostPort) ?? /^(.+):(\d+)$/.exec(hostPort);
  if (!m) throw new ZtmError(ErrorCodes.CONFIG, `${hostPort} is not host:port`);
  return { host: m[1] as string, port: Number(m[2]) };
}

/** This process's identity's TLS context, kept across reconnects (hub-trust.ts). */
const dialContext = new HubDialContext();

/** What keeps a connection made by dialTls reading (read-guard.ts). */
const layerOf = new WeakMap<tls.TLSSocket, ReadGuard | EagerWriteSocket>();

/** Bytes read so far from the hub on a connection made by dialTls (0 for others). */
export function bytesReadFromHub(socket: tls.TLSSocket): number {
  return layerOf.get(socket)?.bytesRead ?? 0;
}

/** Which layer keeps a connection made by dialTls reading while its writes wait. */
export function socketLayerOf(socket: tls.TLSSocket): 'guard' | 'eager' | undefined {
  const l = layerOf.get(socket);
  return l instanceof ReadGuard ? 'guard' : l ? 'eager' : undefined;
}

function guardedOrEager(host: string, port: number, tlsOptions: tls.ConnectionOptions, layer: DialOptions['socketLayer']): tls.TLSSocket {
  if (layer !== 'eager') {
    const socket = tls.connect({ ...tlsOptions, host, port });
    const guard = ReadGuard.attach(socket);
    if (guard) {
      socket.setNoDelay(true);
      layerOf.set(socket, guard);
      return socket;
    }
    // This Node hides what the guard needs: TLS over a JavaScript socket
    // layer whose writes complete at once instead.
    socket.destroy();
  }
  const raw = new EagerWriteSocket({ host, port });
  const socket = tls.connect({ ...tlsOptions, socket: raw as unknown as Duplex });
  layerOf.set(socket, raw);
  socket.once('close', () => raw.destroy());
  return socket;
}

export function dialTls(hostPort: string, o: DialOptions): Promise<tls.TLSSocket> {
  const { host, port } = splitHostPort(hostPort);
  let ca: X509Certificate[];
  try {
    ca = parseCaBundle(o.ca);
  } catch (err) {
    return Promise.reject(new ZtmError(ErrorCodes.CONFIG, `the mesh CA certificate is not readable: ${(err as Error).message}`, { cause: err }));
  }
  return new Promise((resolve, reject) => {
    // The hub is checked against the mesh CA below, not by OpenSSL (hub-trust.ts).
    const tlsOptions = hubTlsOptions({ alpn: o.alpn, host, context: dialContext.for(o) });
    // HTTP/2 over a socket that keeps reading while its writes wait: see
    // read-guard.ts for why a plain one can lock up with bulk both ways.
    const socket = guardedOrEager(host, port, tlsOptions, o.socketLayer ?? (process.env.ZTM_HUB_SOCKET === 'eager' ? 'eager' : 'guard'));
    const timer = setTimeout(() => socket.destroy(new ZtmError(ErrorCodes.TIMEOUT, `TLS handshake with hub ${hostPort} timed out`)), o.timeoutMs ?? 10_000);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const untrusted = hubCertificateError(socket, ca, host);
      if (untrusted) {
        socket.destroy();
        const hint = /^CERT_(NOT_YET_VALID|HAS_EXPIRED)$/.test(untrusted.code)
          ? "check this machine's clock and the hub's certificate"
          : 'the address is wrong or the permit belongs to another mesh';
        reject(
          new ZtmError(
            ErrorCodes.HUB_UNTRUSTED,
            `hub at ${hostPort} presented a certificate this mesh's CA does not vouch for (${untrusted.code}: ${untrusted.message}): ${hint}`,
            { cause: untrusted },
          ),
        );
        return;
      }
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
      reject(new ZtmError(ErrorCodes.HUB_UNREACHABLE, `cannot reach hub at ${hostPort}: ${err.code ?? err.message}`, { cause: err }));
    });
  });
}
