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

export function splice(a: SpliceSide, b: SpliceSide, onDone: (r: SpliceResult) => void): void {
  const started = Date.now();
  let aToB = 0;
  let bToA = 0;
  let aEnded = false; // a's readable ended
  let bEnded = false;
  let aFinished = false; // a's writable finished (we ended it)
  let bFinished = false;
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
  const check = () => {
    if (aEnded && bEnded && aFinished && bFinished) finish('done', 'closed');
  };

  a.stream.on('data', (c: Buffer) => {
    aToB += c.length;
  });
  b.stream.on('data', (c: Buffer) => {
    bToA += c.length;
  });
  a.stream.on('end', () => {
    aEnded = true;
    check();
  });
  b.stream.on('end', () => {
    bEnded = true;
    check();
  });
  a.stream.on('finish', () => {
    aFinished = true;
    check();
  });
  b.stream.on('finish', () => {
    bFinished = true;
    check();
  });
  a.stream.on('error', (err: NodeJS.ErrnoException) => finish('reset', `a: ${err.code ?? err.message}`));
  b.stream.on('error', (err: NodeJS.ErrnoException) => finish('reset', `b: ${err.code ?? err.message}`));
  a.stream.on('close', () => {
    if (!(aEnded && aFinished)) finish('reset', 'a: closed early');
    else check();
  });
  b.stream.on('close', () => {
    if (!(bEnded && bFinished)) finish('reset', 'b: closed early');
    else check();
  });
  a.stream.pipe(b.stream);
  b.stream.pipe(a.stream);
}
