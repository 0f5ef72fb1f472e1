/**
 * Talking to a hub by hand, below the agent: TLS + HTTP/2 sessions with or
 * without an enrolled agent's certificate, control streams, raw frames.
 */
import { once } from 'node:events';
import * as http2 from 'node:http2';
import { FrameDecoder } from '@ztm/proto';

export interface TlsCreds {
  ca: string;
  cert?: string;
  key?: string;
}

/** An HTTP/2 session to the hub (TLS 1.3, ALPN h2), verified against the mesh CA. */
export async function h2Session(address: string, creds: TlsCreds): Promise<http2.ClientHttp2Session> {
  const s = http2.connect(`https://${address}`, { ...creds, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
  s.on('error', () => {});
  const timer = setTimeout(() => s.destroy(new Error('h2 connect timed out')), 5_000);
  try {
    await once(s, 'connect');
  } finally {
    clearTimeout(timer);
  }
  return s;
}

export interface ControlStream {
  stream: http2.ClientHttp2Stream;
  /** Response headers' :status. */
  status: Promise<number>;
  /** Frames the hub sent, decoded as they arrive. */
  frames: Record<string, unknown>[];
  /** Raw response body (for non-frame answers). */
  body(): string;
  /** Resolves when the stream has closed (either side). */
  closed: Promise<void>;
}

/** POST /v1/control and collect what comes back. */
export function openControl(s: http2.ClientHttp2Session, version = '1'): ControlStream {
  const stream = s.request({ ':method': 'POST', ':path': '/v1/control', 'ztm-version': version }, { endStream: false });
  stream.on('error', () => {});
  const chunks: Buffer[] = [];
  const frames: Record<string, unknown>[] = [];
  const decoder = new FrameDecoder();
  let decoding = true;
  stream.on('data', (c: Buffer) => {
    chunks.push(c);
    if (!decoding) return;
    try {
      frames.push(...(decoder.push(c) as Record<string, unknown>[]));
    } catch {
      decoding = false;
    }
  });
  const status = new Promise<number>((resolve) => {
    stream.once('response', (h) => resolve(Number(h[':status'])));
    stream.once('close', () => resolve(0));
  });
  const closed = once(stream, 'close').then(() => undefined);
  return { stream, status, frames, body: () => Buffer.concat(chunks).toString('utf8'), closed };
}

/** A 4-byte big-endian length header, as the control-stream codec writes it. */
export function frameHeader(length: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(length, 0);
  return b;
}

/** Resolve with 'closed' if `p` settles within `ms`, else 'open'. */
export async function within(p: Promise<unknown>, ms: number): Promise<'closed' | 'open'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'open'>((resolve) => {
    timer = setTimeout(() => resolve('open'), ms);
  });
  const r = await Promise.race([p.then(() => 'closed' as const), timeout]);
  clearTimeout(timer);
  return r;
}
