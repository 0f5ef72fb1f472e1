/** Real TCP/UDP servers and clients for tunnel tests (loopback, port 0). */
import { createHash, createCipheriv } from 'node:crypto';
import * as dgram from 'node:dgram';
import { once } from 'node:events';
import * as net from 'node:net';
import { readFileSync } from 'node:fs';

type T = { teardown(fn: () => unknown): void };

export async function tcpServer(t: T, onConn: (s: net.Socket) => void, opts: net.ServerOpts = {}): Promise<{ port: number; server: net.Server }> {
  const server = net.createServer({ allowHalfOpen: true, ...opts }, (s) => {
    s.on('error', () => {});
    onConn(s);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, server };
}

/** Echo server: writes back what it reads; ends when the client ends. */
export const echoServer = (t: T) => tcpServer(t, (s) => s.pipe(s));

export async function udpEchoServer(t: T): Promise<{ port: number; received: () => number }> {
  const sock = dgram.createSocket('udp4');
  let n = 0;
  sock.on('message', (msg, rinfo) => {
    n++;
    sock.send(msg, rinfo.port, rinfo.address);
  });
  sock.bind(0, '127.0.0.1');
  await once(sock, 'listening');
  t.teardown(() => sock.close());
  return { port: sock.address().port, received: () => n };
}

/** How a connection ended, as one side saw it first: a clean end of stream,
 * an error (a reset) or a bare close. */
export type ConnectionEnd = 'end' | 'error' | 'close';

/** Calls `onEnd` once, with the first of `s`'s end, error and close. */
export function onceEnded(s: net.Socket, onEnd: (how: ConnectionEnd) => void): void {
  let seen = false;
  const first = (how: ConnectionEnd) => {
    if (seen) return;
    seen = true;
    onEnd(how);
  };
  s.once('end', () => first('end'));
  s.once('error', () => first('error'));
  s.once('close', () => first('close'));
}

export function connect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host, allowHalfOpen: true });
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

/** Deterministic pseudo-random bytes (AES-CTR keystream), `total` bytes in chunks. */
export function* pseudoRandom(seed: string, total: number, chunk = 256 * 1024): Generator<Buffer> {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(chunk);
  for (let sent = 0; sent < total; sent += chunk) yield cipher.update(zeros.subarray(0, Math.min(chunk, total - sent)));
}

export function sha256Of(seed: string, total: number): string {
  const h = createHash('sha256');
  for (const b of pseudoRandom(seed, total)) h.update(b);
  return h.digest('hex');
}

/** Write all of a generator to a socket, respecting backpressure. */
export async function writeAll(s: net.Socket, gen: Iterable<Buffer>, end = true): Promise<void> {
  for (const b of gen) {
    if (!s.write(b)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          s.off('drain', done);
          s.off('close', done);
          resolve();
        };
        s.on('drain', done);
        s.on('close', done);
      });
    }
    if (s.destroyed) throw new Error('socket closed while writing');
  }
  if (end) s.end();
}

/** Read a socket to its end; resolves with byte count and SHA-256. */
export function hashAll(s: net.Socket): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let bytes = 0;
    s.on('data', (c: Buffer) => {
      bytes += c.length;
      h.update(c);
    });
    s.once('end', () => resolve({ bytes, sha256: h.digest('hex') }));
    s.once('error', reject);
  });
}

export function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.once('end', () => resolve(Buffer.concat(chunks)));
    s.once('error', reject);
  });
}

/** Resident set size of a process, in bytes (Linux). */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** TCP states (include/net/tcp_states.h) that follow a FIN from the peer. */
const AFTER_PEER_FIN = new Set(['08', '09', '0B', '06']); // CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT

/**
 * For a connected socket `s`: a function to call when it emits 'end', which
 * says whether the peer really ended its data with a FIN. libuv reports a
 * reset that arrives together with data as a clean end (a short read and
 * POLLHUP in one wakeup, the error left unread), so a test that tells a reset
 * from a FIN asks the kernel: after a FIN the connection is in CLOSE_WAIT (or
 * a later closing state, TIME_WAIT included); after a reset it is gone from
 * /proc/net/tcp. The ports are taken now: once the kernel has closed the
 * socket, getsockname() no longer names its port. IPv4 loopback only, as the
 * tests are.
 */
export function finCheck(s: net.Socket): () => boolean {
  const hex = (p: number | undefined) => `:${(p ?? -1).toString(16).toUpperCase().padStart(4, '0')}`;
  const local = hex(s.localPort);
  const remote = hex(s.remotePort);
  return () => {
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[1]?.endsWith(local) && f[2]?.endsWith(remote)) return AFTER_PEER_FIN.has(f[3] ?? '');
    }
    return false;
  };
}
