/**
 * A TCP connection whose writes complete at once, placed under the agent's TLS
 * where the read guard cannot be (read-guard.ts: a Node that hides what it
 * needs, or ZTM_HUB_SOCKET=eager). It costs more CPU than the guard (every
 * byte crosses JavaScript once more) and needs nothing undocumented.
 *
 * Why: node:http2 stops reading its socket while one of its own writes is
 * pending (node_http2.cc, MaybeStopReading — a guard against peers that never
 * read). When both peers of a session write more than the TCP buffers between
 * them hold — bulk data both ways at once over a thin link — each waits for the
 * other's write to complete and neither reads: the session locks up until the
 * keepalive timeout. The hub is a node:http2 peer too. One side that keeps
 * reading is enough to break the cycle, so the agents take that side: here a
 * write completes as soon as it is queued on the socket, and HTTP/2 never sees
 * a write pending (test/two-way-bulk.test.ts).
 *
 * What bounds the queue: HTTP/2 flow control. Everything DATA-bearing the
 * session can queue is limited by the windows the hub granted (8 MiB per
 * session), and the hub grants more only by reading. The rest (HEADERS, PING
 * and SETTINGS acks, RST_STREAM) is small and capped by nghttp2's own limits.
 * `maxQueuedBytes` is a backstop far above that: past it the connection is
 * destroyed with an error that says so, rather than grow.
 *
 * Shape: not a stream.Duplex but the few methods node's JSStreamSocket (what
 * TLS wraps a non-native stream in) calls — pause/resume, cork/uncork,
 * write(buf, cb), end, destroy and the 'data'/'end'/'error'/'close' events —
 * forwarded straight to the TCP socket. Reads land in one reused buffer
 * (`onread`; TLS copies what it takes), so the layer allocates nothing per
 * read. Both cut the layer's CPU cost against a Duplex (docs/performance.md).
 * Reads keep their backpressure: pause() stops reading the TCP socket.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { ErrorCodes, ZtmError } from '@ztm/proto';

/** Far above the session window (8 MiB) plus control frames. */
export const EAGER_WRITE_MAX_QUEUED_BYTES = 64 * 1024 * 1024;
const READ_BUFFER_BYTES = 64 * 1024;

export class EagerWriteSocket extends EventEmitter {
  readonly socket: net.Socket;
  /** JSStreamSocket refuses object-mode streams; this one carries bytes. */
  readonly readableObjectMode = false;
  /** Bytes read from the peer so far (the agent's keepalive counts them as life). */
  bytesRead = 0;
  readonly #maxQueuedBytes: number;

  constructor(opts: { host: string; port: number }, maxQueuedBytes = EAGER_WRITE_MAX_QUEUED_BYTES) {
    super();
    this.#maxQueuedBytes = maxQueuedBytes;
    this.socket = net.connect({
      host: opts.host,
      port: opts.port,
      noDelay: true,
      onread: {
        buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
        // The chunk is only valid during the call: TLS copies it at once.
        callback: (nread: number, buf: Uint8Array) => {
          this.bytesRead += nread;
          this.emit('data', Buffer.from(buf.buffer, buf.byteOffset, nread));
          return true;
        },
      },
    });
    this.socket.on('end', () => this.emit('end'));
    this.socket.on('error', (err) => this.emit('error', err));
    this.socket.on('close', () => this.emit('close'));
  }

  get readable(): boolean {
    return this.socket.readable;
  }

  get writable(): boolean {
    return this.socket.writable;
  }

  pause(): this {
    this.socket.pause();
    return this;
  }

  resume(): this {
    this.socket.resume();
    return this;
  }

  cork(): void {
    this.socket.cork();
  }

  uncork(): void {
    this.socket.uncork();
  }

  write(chunk: Uint8Array, cb?: (err?: Error | null) => void): boolean {
    this.socket.write(chunk);
    const queued = this.socket.writableLength;
    if (queued > this.#maxQueuedBytes) {
      this.socket.destroy(
        new ZtmError(
          ErrorCodes.INTERNAL,
          `${queued} bytes queued for the hub, more than HTTP/2 flow control allows (${this.#maxQueuedBytes}); dropping the connection`,
        ),
      );
    }
    cb?.();
    return true;
  }

  end(cb?: () => void): this {
    this.socket.end(cb);
    return this;
  }

  destroy(err?: Error): this {
    this.socket.destroy(err);
    return this;
  }
}
