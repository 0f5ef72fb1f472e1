/**
 * The bidirectional stream pipe used on every relay hop (agent: socket ↔
 * HTTP/2 stream; hub: stream ↔ stream).
 *
 * - Backpressure: `pipe()` pauses a source while its destination is full, so
 *   nothing is buffered beyond the destination's high-water mark and HTTP/2
 *   flow-control windows.
 * - Half-close: the clean end of one direction ends the other side's writable
 *   side only; the opposite direction keeps flowing (TCP sockets need
 *   `allowHalfOpen: true`).
 * - Resets: an error or an early close on one side resets the other (RST_STREAM
 *   CANCEL on a stream, RST on a TCP socket), never a fake clean end.
 */
import type { Duplex } from 'node:stream';

export type SpliceEnd = 'done' | 'reset';

export interface SpliceSide {
  stream: Duplex;
  /** Abort this side now (reset, not a clean end). */
  reset(): void;
  /** Release after a clean finish of both directions (optional). */
  release?(): void;
}

export interface SpliceResult {
  /** Bytes read from a and written to b. */
  bytesAtoB: number;
  bytesBtoA: number;
  durationMs: number;
  end: SpliceEnd;
  /** Which side failed first and why, for logs and counters. */
  reason: string;
}

/** Live byte counters a splice adds to as data moves (for throughput views);
 * several splices may share one. */
export interface ByteMeter {
  bytesIn: number;
  bytesOut: number;
}

export function splice(a: SpliceSide, b: SpliceSide, onDone: (r: SpliceResult) => void, meter?: ByteMeter): void {
  const started = Date.now();
  let aToB = 0;
  let bToA = 0;
  let over = false;

  const finish = (end: SpliceEnd, reason: string) => {
    if (over) return;
    over = true;
    if (end === 'reset') {
      a.stream.unpipe(b.stream);
      b.stream.unpipe(a.stream);
      a.reset();
      b.reset();
    } else {
      a.release?.();
      b.release?.();
    }
    onDone({ bytesAtoB: aToB, bytesBtoA: bToA, durationMs: Date.now() - started, end, reason });
  };
  // Done when both sides have read to their end and written their end. The
  // properties, not the events, are checked: an HTTP/2 stream may emit
  // 'close' before its 'finish' event has been delivered.
  const doneWith = (s: Duplex) => s.readableEnded && s.writableFinished;
  const check = () => {
    if (doneWith(a.stream) && doneWith(b.stream)) finish('done', 'closed');
  };
  const watch = (side: SpliceSide, name: 'a' | 'b') => {
    const s = side.stream;
    s.on('end', check);
    s.on('finish', check);
    s.on('error', (err: NodeJS.ErrnoException) => finish('reset', `${name}: ${err.code ?? err.message}`));
    s.on('close', () => {
      // A clean close has read and written everything (an HTTP/2 stream ends
      // with rstCode NO_ERROR); anything else is a reset to pass on.
      const rst = (s as Duplex & { rstCode?: number }).rstCode;
      if (s.readableEnded && s.writableEnded && (rst === undefined || rst === 0)) {
        if (!s.writableFinished) s.once('finish', check);
        setImmediate(check);
      } else finish('reset', `${name}: closed early${rst ? ` (rst ${rst})` : ''}`);
    });
  };
  const m = meter ?? { bytesIn: 0, bytesOut: 0 };
  a.stream.on('data', (c: Buffer) => {
    aToB += c.length;
    m.bytesIn += c.length;
  });
  b.stream.on('data', (c: Buffer) => {
    bToA += c.length;
    m.bytesOut += c.length;
  });
  watch(a, 'a');
  watch(b, 'b');
  a.stream.pipe(b.stream);
  b.stream.pipe(a.stream);
}
