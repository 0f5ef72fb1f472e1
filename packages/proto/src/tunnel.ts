/**
 * Tunnels: named port mappings `tcp/NAME` and `udp/NAME`.
 *
 * An endpoint may hold an **inbound** end (local listeners) and/or an
 * **outbound** end (targets) of a tunnel; many to many. One relayed TCP
 * connection or UDP flow is one HTTP/2 stream on each hop:
 *
 *   client → agent A (inbound) ──POST /v1/tunnel/tcp/NAME──▶ hub
 *   hub ──POST /v1/tunnel/tcp/NAME (reverse session, source stamped)──▶ agent B
 *   agent B connects to a target, *then* answers 200 (or 502 + error), so
 *   refusal reaches the client as a prompt close and server-speaks-first
 *   protocols work. The hub answers A only once an exit said 200; if an exit
 *   refuses, the hub tries the next one.
 *
 * TCP bytes travel as plain DATA frames (no framing inside the stream). UDP
 * datagrams travel length-prefixed (udp-framing below), one stream per client
 * flow.
 */
import { ErrorCodes, ZtmError } from './errors.js';

export type TunnelProtocol = 'tcp' | 'udp';
export type TunnelDirection = 'inbound' | 'outbound';

export interface TunnelId {
  protocol: TunnelProtocol;
  name: string;
}

const TUNNEL_NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;

export function parseTunnelId(text: string): TunnelId {
  const m = /^(tcp|udp)\/(.+)$/.exec(text);
  if (!m) throw new ZtmError(ErrorCodes.BAD_REQUEST, `tunnel ${JSON.stringify(text)} must be tcp/NAME or udp/NAME`);
  const name = m[2] as string;
  if (!TUNNEL_NAME.test(name)) {
    throw new ZtmError(ErrorCodes.BAD_REQUEST, `tunnel name ${JSON.stringify(name)} is not valid: use lowercase letters, digits, '.', '-', '_' (at most 63)`);
  }
  return { protocol: m[1] as TunnelProtocol, name };
}

export const tunnelKey = (t: TunnelId): string => `${t.protocol}/${t.name}`;
export const tunnelPath = (t: TunnelId): string => `/v1/tunnel/${t.protocol}/${t.name}`;

/** `/v1/tunnel/tcp/NAME` → TunnelId, or null if the path is not a tunnel path. */
export function tunnelFromPath(path: string | undefined): TunnelId | null {
  const m = /^\/v1\/tunnel\/(tcp|udp)\/([^/?]+)$/.exec(path ?? '');
  if (!m) return null;
  try {
    return parseTunnelId(`${m[1]}/${m[2]}`);
  } catch {
    return null;
  }
}

export interface HostPort {
  host: string;
  port: number;
}

/** `[IP:]PORT` for listeners (default ip 127.0.0.1), `HOST:PORT` for targets. */
export function parseListen(text: string): HostPort {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):)?(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[2]);
  if (!m || !(port >= 1 && port <= 65535)) {
    throw new ZtmError(ErrorCodes.BAD_REQUEST, `listen address ${JSON.stringify(text)} must be [IP:]PORT with a port from 1 to 65535`);
  }
  const host = (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, '');
  return { host, port };
}

export function parseTarget(text: string): HostPort {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[3]);
  if (!m || !(port >= 1 && port <= 65535)) {
    throw new ZtmError(ErrorCodes.BAD_REQUEST, `target ${JSON.stringify(text)} must be HOST:PORT with a port from 1 to 65535`);
  }
  return { host: (m[1] as string).replace(/^\[|\]$/g, ''), port };
}

export const formatHostPort = (h: HostPort): string => (h.host.includes(':') ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`);

/** Largest UDP payload carried (IPv4 maximum). */
export const MAX_DATAGRAM_BYTES = 65_507;
/** Bytes of a UDP flow buffered toward a slow stream before datagrams are
 * dropped (UDP semantics: drop and count, never queue without bound). */
export const UDP_MAX_BACKLOG_BYTES = 1024 * 1024;
export const UDP_FLOW_IDLE_MS = 60_000;

/** UDP framing: [u16 BE length][payload], repeated. */
export function encodeDatagram(payload: Buffer): Buffer {
  if (payload.length > MAX_DATAGRAM_BYTES) throw new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `datagram of ${payload.length} bytes exceeds ${MAX_DATAGRAM_BYTES}`);
  const out = Buffer.allocUnsafe(2 + payload.length);
  out.writeUInt16BE(payload.length, 0);
  payload.copy(out, 2);
  return out;
}

export class DatagramDecoder {
  #pending: Buffer = Buffer.alloc(0);

  /** Whole datagrams in `chunk` (plus what was pending). */
  push(chunk: Buffer): Buffer[] {
    let buf = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
    const out: Buffer[] = [];
    while (buf.length >= 2) {
      const len = buf.readUInt16BE(0);
      if (len > MAX_DATAGRAM_BYTES) throw new ZtmError(ErrorCodes.FRAME_TOO_LARGE, `datagram of ${len} bytes exceeds ${MAX_DATAGRAM_BYTES}`);
      if (buf.length < 2 + len) break;
      out.push(buf.subarray(2, 2 + len));
      buf = buf.subarray(2 + len);
    }
    this.#pending = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
    return out;
  }

  get buffered(): number {
    return this.#pending.length;
  }
}
