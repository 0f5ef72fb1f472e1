/**
 * Keeps an agent's TLS connection to the hub reading while one of its writes
 * waits for the peer.
 *
 * Why: node:http2 stops reading its socket while one of its own writes is
 * pending (node_http2.cc, MaybeStopReading — a guard against peers that never
 * read). When both peers of a session write more than the TCP buffers between
 * them hold — bulk data both ways at once over a thin link — each waits for
 * the other's write to complete and neither reads: the session locks up until
 * the keepalive timeout. The hub is a node:http2 peer too. One side that keeps
 * reading is enough to break the cycle, so the agents take that side
 * (test/two-way-bulk.test.ts).
 *
 * How: the connection is node's TLS on a native TCP socket, so no byte crosses
 * JavaScript. While the connection is busy (bytes moved or a write queued in
 * the last second) a check runs every 10 ms: when the TCP socket has a write
 * queued — the kernel's buffer is full, the peer is not reading — it starts
 * the socket reading again. node:http2 does not stop a socket it has already
 * stopped, and starts it itself when the write completes, so one start keeps
 * it reading for the rest of that write. What reading lets in stays bounded by
 * HTTP/2 flow control (the windows the agent grants). An idle connection is
 * checked once a second.
 *
 * This reads two members node does not document: the TLS socket's `_handle`
 * (`readStart()`) and the TCP handle under it (`_parent`: `writeQueueSize`,
 * `bytesRead`, `bytesWritten`). `ReadGuard.attach` returns undefined where they
 * are missing, and dialTls then puts the connection on EagerWriteSocket, a
 * JavaScript socket layer that needs none of them and costs ≈ 0.2 CPU s more
 * per GB sent (docs/performance.md); ZTM_HUB_SOCKET=eager chooses it anyway.
 */
import type * as tls from 'node:tls';

/** How often a busy connection is checked: the longest a lock-up lasts. */
export const READ_GUARD_BUSY_MS = 10;
/** How often one is checked within a second of a stall: they come in runs. */
export const READ_GUARD_STALLING_MS = 1;
/** How often an idle one is, and how long without traffic makes it idle. */
export const READ_GUARD_IDLE_MS = 1_000;

interface TcpHandle {
  writeQueueSize: number;
  bytesRead: number;
  bytesWritten: number;
}
interface TlsHandle {
  readStart(): number;
  /** net.Socket's own view: false while JavaScript paused the socket. */
  reading?: boolean;
  _parent?: TcpHandle;
}

function tcpOf(socket: tls.TLSSocket): { tls: TlsHandle; tcp: TcpHandle } | undefined {
  const h = (socket as unknown as { _handle?: TlsHandle | null })._handle;
  const tcp = h?._parent;
  if (!h || typeof h.readStart !== 'function' || !tcp) return undefined;
  if (typeof tcp.writeQueueSize !== 'number' || typeof tcp.bytesRead !== 'number' || typeof tcp.bytesWritten !== 'number') return undefined;
  return { tls: h, tcp };
}

export class ReadGuard {
  /** Times a guard of this process started a socket HTTP/2 had stopped. */
  static resumes = 0;
  readonly #socket: tls.TLSSocket;
  #timer: NodeJS.Timeout | undefined;
  #moved = -1;
  #busyAt = 0;
  #stalledAt = 0;
  #read = 0;

  private constructor(socket: tls.TLSSocket) {
    this.#socket = socket;
    this.#busyAt = Date.now();
    // Not before the handshake: net.Socket starts reading a connected socket
    // itself, and takes a socket already reading for an error.
    socket.once('secureConnect', () => this.#schedule(READ_GUARD_BUSY_MS));
    socket.once('close', () => clearTimeout(this.#timer));
  }

  /** A guard for a TLS socket on a native TCP socket, or undefined if this Node hides what it needs. */
  static attach(socket: tls.TLSSocket): ReadGuard | undefined {
    return tcpOf(socket) ? new ReadGuard(socket) : undefined;
  }

  /** Bytes read from the peer so far, TLS records included (the last count
   * once the socket is gone, so that a closed socket does not look alive). */
  get bytesRead(): number {
    const n = tcpOf(this.#socket)?.tcp.bytesRead;
    if (n !== undefined) this.#read = n;
    return this.#read;
  }

  #schedule(ms: number): void {
    this.#timer = setTimeout(() => this.#check(), ms);
    this.#timer.unref();
  }

  #check(): void {
    const h = tcpOf(this.#socket);
    if (!h || this.#socket.destroyed) return;
    const now = Date.now();
    const queued = h.tcp.writeQueueSize > 0;
    // Never a socket JavaScript paused: it starts that one itself, and takes
    // EALREADY from a socket already reading for an error.
    if (queued && h.tls.reading !== false && h.tls.readStart() === 0) {
      ReadGuard.resumes++;
      this.#stalledAt = now;
    }
    const moved = h.tcp.bytesRead + h.tcp.bytesWritten;
    if (queued || moved !== this.#moved) this.#busyAt = now;
    this.#moved = moved;
    if (now - this.#stalledAt < READ_GUARD_IDLE_MS) this.#schedule(READ_GUARD_STALLING_MS);
    else this.#schedule(now - this.#busyAt < READ_GUARD_IDLE_MS ? READ_GUARD_BUSY_MS : READ_GUARD_IDLE_MS);
  }
}
