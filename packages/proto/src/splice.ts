/**
 * The bidirectional stream pipe used on every relay hop (agent: socket ↔
 * HTTP/2 stream; hub: stream ↔ stream).
 *
 * - Backpressure: a source is paused while its destination is full, so
 *   nothing is buffered beyond the destination's high-water mark
 *   (`DATA_HIGH_WATER_MARK_BYTES`, set here on HTTP/2 streams too, whose
 *   constructor takes none) and the HTTP/2 flow-control windows. Past 8
 *   directions with full or deeply queued destinations in one process, each
 *   takes a share of `SPLICE_BUFFER_BUDGET_BYTES` instead
 *   (`dataHighWaterMark`); an HTTP/2 session with many streams spliced or
 *   backed up asks its peer for narrower stream windows (`askWindow`).
 * - Write batching (`batchWrites`): a chunk of bulk size corks the destination
 *   and a `setImmediate` uncorks it, so the chunks that arrive in the rest of
 *   that event-loop turn leave in one writev instead of one write(2) each
 *   (HTTP/2 DATA frames of a transfer arrive 16 KiB at a time). A small chunk
 *   (a request, an answer, a keystroke) is written at once: small chunks come
 *   one to a turn (under load the sender's reads grow and so do the chunks),
 *   and the cork, its buffered entry and the immediate were a fifth of what
 *   an agent allocated per message. Used by the agents; the hub measured
 *   slower with it (shared/ARCHITECTURE.md §5).
 * - Half-close: the clean end of one direction ends the other side's writable
 *   side only; the opposite direction keeps flowing (TCP sockets need
 *   `allowHalfOpen: true`).
 * - Resets: an error or an early close on one side resets the other (RST_STREAM
 *   CANCEL on a stream, RST on a TCP socket), never a fake clean end; a TCP
 *   reset that libuv reports as an end is caught with a zero-byte write.
 */
import type { Http2Session } from 'node:http2';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  DATA_HIGH_WATER_MARK_BYTES,
  HTTP2_SESSION_OPEN_STREAM_WINDOW_BUDGET_BYTES,
  HTTP2_SESSION_STREAM_WINDOW_BUDGET_BYTES,
  HTTP2_STREAM_WINDOW_BYTES,
  MIN_DATA_HIGH_WATER_MARK_BYTES,
  MIN_HTTP2_STREAM_WINDOW_BYTES,
  SPLICE_BUFFER_BUDGET_BYTES,
} from './limits.js';

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

export interface SpliceOptions {
  meter?: ByteMeter;
  /** Cork each destination for the rest of an event-loop turn on its first
   * write (see above). */
  batchWrites?: boolean;
}

interface StreamState {
  highWaterMark: number;
}

/** Directions of relayed connections in this process whose destination is
 * full. Each holds up to about four high-water marks: what its source read
 * ahead, what its destination has queued, and the write in flight before
 * that (with `batchWrites`, a turn's chunks in one). Directions that flow
 * hold little. */
let backlogged = 0;
/** Directions whose destination holds more than one read
 * (`MIN_DATA_HIGH_WATER_MARK_BYTES`) but still takes writes: they count
 * towards the budget too. Hundreds of connections that start to back up at
 * once each queued a full mark (1 MiB) before any was paused and counted:
 * 256 connections into a reader that stopped left 256 MiB queued in the hub
 * for the exit's streams, whose windows were closed. */
let queued = 0;
/** How often a direction counted in `queued` looks whether its destination
 * has drained (its source may have gone quiet). */
const DEEP_LOOK_MS = 100;

/** The high-water mark a relayed connection's buffers get now: the data
 * path's (≈ 1 MiB moves bigger writes per syscall), or, with more directions
 * backlogged or queued than that fits in `SPLICE_BUFFER_BUDGET_BYTES`, their
 * share of it. Only those count: idle connections beside one transfer do not
 * shrink its buffers. */
export function dataHighWaterMark(): number {
  const share = Math.floor(SPLICE_BUFFER_BUDGET_BYTES / (4 * Math.max(1, backlogged + queued)));
  return Math.max(MIN_DATA_HIGH_WATER_MARK_BYTES, Math.min(DATA_HIGH_WATER_MARK_BYTES, share));
}

/** Directions backlogged now (see above; for tests and status). */
export function backloggedDirections(): number {
  return backlogged;
}

/** An HTTP/2 session's backed-up directions (those reading from its
 * streams), its open data streams, and the stream window it has asked its
 * peer for (what it should ask for now is `wantedWindow`). */
interface SessionWindow {
  backlogged: number;
  open: number;
  /** What the last SETTINGS sent asked for. */
  asked: number;
}

const sessionWindows = new WeakMap<Http2Session, SessionWindow>();
/** Sessions whose streams' window is narrowed now (for status). */
let narrowed = 0;

/** The receive window each stream of a session gets with `backlogged` of
 * its streams paused for a full destination: each holds up to a window of
 * data its peer sent before it paused (node:http2 hands a stream's DATA to
 * it whether or not it reads; only the window bounds it), so many stuck
 * streams of one session share `HTTP2_SESSION_STREAM_WINDOW_BUDGET_BYTES`,
 * in halvings, down to `MIN_HTTP2_STREAM_WINDOW_BYTES`. */
export function streamWindowFor(backlogged: number): number {
  let w = HTTP2_STREAM_WINDOW_BYTES;
  while (w > MIN_HTTP2_STREAM_WINDOW_BYTES && w * backlogged > HTTP2_SESSION_STREAM_WINDOW_BUDGET_BYTES) w /= 2;
  return w;
}

/** The receive window each stream of a session gets with `open` data
 * streams open in it: any of them may stop reading at any moment (its target
 * stalls), and streams that stop together have each been sent a window before
 * the backlog count above can narrow it, so the open ones share
 * `HTTP2_SESSION_OPEN_STREAM_WINDOW_BUDGET_BYTES`, in halvings, down to
 * `MIN_HTTP2_STREAM_WINDOW_BYTES`. The session window (8 MiB) bounds what
 * all of them have in flight anyway, so this costs a session with many
 * streams busy at once nothing; one transfer beside many idle connections
 * gets a smaller window, which loopback does not notice and a long link does. */
export function openStreamWindowFor(open: number): number {
  let w = HTTP2_STREAM_WINDOW_BYTES;
  while (w > MIN_HTTP2_STREAM_WINDOW_BYTES && w * open > HTTP2_SESSION_OPEN_STREAM_WINDOW_BUDGET_BYTES) w /= 2;
  return w;
}

const wantedWindow = (st: SessionWindow) => Math.min(streamWindowFor(st.backlogged), openStreamWindowFor(st.open));

/** Sessions of this process whose streams' window is narrowed now. */
export function narrowedSessions(): number {
  return narrowed;
}

/** The HTTP/2 session of a stream; undefined for anything else. */
function sessionOf(s: Duplex): Http2Session | undefined {
  const session = (s as Duplex & { session?: Http2Session }).session;
  return session !== undefined && typeof session.settings === 'function' ? session : undefined;
}

/** Count a direction reading from a stream of `session` in or out of the
 * session's backlog, and ask the peer for the window that count gets (a
 * SETTINGS frame, only when it changes; one in flight at a time, the latest
 * wish sent on its ACK). The window applies to all the session's streams: a
 * transfer beside hundreds of stuck streams gets a smaller one too, which
 * loopback does not notice and a long link does. */
function sessionBacklog(session: Http2Session, delta: number): void {
  const st = sessionWindows.get(session) ?? (delta > 0 ? windowOf(session) : undefined);
  if (st === undefined) return;
  st.backlogged = Math.max(0, st.backlogged + delta);
  askWindow(session, st);
}

function windowOf(session: Http2Session): SessionWindow {
  let st = sessionWindows.get(session);
  if (st === undefined) {
    st = { backlogged: 0, open: 0, asked: HTTP2_STREAM_WINDOW_BYTES };
    sessionWindows.set(session, st);
    const state = st;
    session.on('localSettings', () => askWindow(session, state));
    session.once('close', () => {
      if (state.asked < HTTP2_STREAM_WINDOW_BYTES) narrowed--;
      state.asked = HTTP2_STREAM_WINDOW_BYTES;
    });
  }
  return st;
}

/** Count a spliced HTTP/2 stream among its session's open data streams
 * (`openStreamWindowFor`) until its splice finishes; returns the undo, or
 * nothing for anything else. Counted when spliced: an exit's stream once its
 * target has accepted (the hub sends it at most `EARLY_REPLAY_BYTES` before
 * that), the hub's once its exit has answered. It is a count and a compare
 * per stream, no listener: a per-stream 'close' listener and a set of the
 * streams counted cost the agents 2.5–5 % of their CPU per connection. */
function countOpen(s: Duplex): (() => void) | undefined {
  const session = sessionOf(s);
  if (session === undefined || s.destroyed) return undefined;
  const st = windowOf(session);
  st.open++;
  askWindow(session, st);
  return () => {
    st.open--;
    askWindow(session, st);
  };
}

function askWindow(session: Http2Session, st: SessionWindow): void {
  const wanted = wantedWindow(st);
  if (wanted === st.asked || session.destroyed || session.closed || session.pendingSettingsAck) return;
  try {
    session.settings({ initialWindowSize: wanted });
  } catch {
    return; // the session is going: nothing to bound
  }
  if (st.asked === HTTP2_STREAM_WINDOW_BYTES) narrowed++;
  else if (wanted === HTTP2_STREAM_WINDOW_BYTES) narrowed--;
  st.asked = wanted;
}

/** Set a stream's buffer high-water marks to the data path's: node:http2
 * creates its streams with the 16 KiB default, which pauses the source after
 * every DATA frame; sockets are made with the largest. Set again each time a
 * splice pauses its source, so a connection opened when few were takes its
 * share once many are. */
export function tuneDataStream(s: Duplex, hwm = dataHighWaterMark()): void {
  const st = s as Duplex & { _readableState?: StreamState; _writableState?: StreamState };
  if (st._readableState) st._readableState.highWaterMark = hwm;
  if (st._writableState) st._writableState.highWaterMark = hwm;
}

/** Whether an 'end' is not the peer's end of data. node:http2 pushes EOF on a
 * stream in more cases than END_STREAM: when it destroys the session (the
 * stream is destroyed by then), when nghttp2 closes the stream under us, a
 * RST_STREAM or the connection going (the stream is 'aborted' if our side was
 * still writing, or closed with a non-zero code), and when the connection
 * under the session ends — seen (under load, with the agents' socket layer)
 * before any of those flags was set: so an HTTP/2 stream whose session is
 * destroyed or whose connection has ended or gone did not end by END_STREAM.
 * A session closing gracefully (GOAWAY, renewal) keeps its connection until
 * its streams are done, so their ends stay clean. */
function endedAbnormally(s: Duplex): boolean {
  const h = s as Duplex & { aborted?: boolean; closed?: boolean; rstCode?: number; session?: unknown };
  if (s.destroyed || h.aborted === true || (h.closed === true && h.rstCode !== undefined && h.rstCode !== 0)) return true;
  if (!('session' in h)) return false; // not an HTTP/2 stream
  try {
    const session = h.session as { destroyed?: boolean; socket?: { destroyed?: boolean; readableEnded?: boolean } } | undefined;
    if (!session || session.destroyed) return true;
    const socket = session.socket;
    return socket === undefined || socket.destroyed === true || socket.readableEnded === true;
  } catch {
    return true;
  }
}

/** Whether `s` is a plain TCP socket still open for writing: one whose 'end'
 * can be checked with a zero-byte write (below). */
function probeableTcp(s: Duplex): boolean {
  const sock = s as Duplex & { encrypted?: boolean };
  return s instanceof Socket && sock.encrypted !== true && !s.writableEnded && !s.destroyed;
}

const EMPTY = Buffer.alloc(0);

/** A chunk this large may have more behind it in the same turn: it corks.
 * HTTP/2 DATA frames of a transfer are up to 16 KiB, socket reads up to 64,
 * but 8 transfers sharing a session get less each per turn: corking only from
 * 8 KiB gave 8 connections 3–10 % less than the tree before in two runs (the
 * tree against itself: 1.5–3 %). */
export const BULK_CHUNK_BYTES = 1024;

/** Copy `src` into `dst` with backpressure; `src`'s end ends `dst` (half-close).
 * An 'end' from a stream already destroyed is not an end: node:http2 ends the
 * readable side of every stream of a session it destroys (no error, rstCode
 * 0), and passing that on as a FIN would tell the client its data was
 * complete. `abort` is called instead.
 *
 * Nor is every 'end' of a TCP socket a FIN: libuv reports a reset that arrives
 * together with data as a clean end of stream (a short read and POLLHUP in one
 * wakeup; it does not read the error), which is what a peer that writes and
 * then aborts (SO_LINGER 0, a crash) looks like. So before passing a TCP
 * socket's end on, a zero-byte write asks the kernel: it succeeds on a
 * connection the peer half-closed, and fails (EPIPE) on one it reset. The
 * write queues behind what is still being written to the socket, so the end
 * goes on once that has left. */
function pump(src: Duplex, dst: Duplex, batch: boolean, count: (n: number) => void, abort: (why: string) => void): () => void {
  let corked = false;
  const uncork = () => {
    corked = false;
    dst.uncork();
  };
  // Paused for a full destination, and so counted in `backlogged` (and in
  // its session's backlog, for a stream: taken now, a destroyed stream no
  // longer names its session).
  let waiting = false;
  // Counted in `queued`: its destination held more than one read after a
  // write it took. Looked at again on each chunk, and every
  // `DEEP_LOOK_MS` while counted: a source that went quiet (a connection
  // kept open after a transfer) must not stay counted once its destination
  // has drained. A timer per counted direction, not a callback per write
  // (which cost a transfer CPU).
  let deep = false;
  let looking: NodeJS.Timeout | undefined;
  const session = sessionOf(src);
  const shallow = () => {
    if (!deep) return;
    deep = false;
    queued--;
  };
  // This connection's share, now: what it reads ahead and queues next (the
  // other direction tunes the same two streams).
  const retune = () => {
    const hwm = dataHighWaterMark();
    if (src.readableHighWaterMark === hwm && dst.writableHighWaterMark === hwm) return;
    tuneDataStream(src, hwm);
    tuneDataStream(dst, hwm);
  };
  const look = () => {
    looking = undefined;
    if (!deep) return;
    if (dst.writableLength <= MIN_DATA_HIGH_WATER_MARK_BYTES) shallow();
    else looking = setTimeout(look, DEEP_LOOK_MS).unref();
  };
  const settle = () => {
    shallow();
    clearTimeout(looking);
    looking = undefined;
    if (!waiting) return;
    waiting = false;
    backlogged--;
    if (session !== undefined) sessionBacklog(session, -1);
  };
  const onDrain = () => {
    settle();
    src.resume();
  };
  src.on('data', (c: Buffer) => {
    count(c.length);
    if (batch && !corked && c.length >= BULK_CHUNK_BYTES) {
      corked = true;
      dst.cork();
      setImmediate(uncork);
    }
    if (!dst.write(c)) {
      src.pause();
      shallow();
      if (!waiting) {
        waiting = true;
        backlogged++;
        if (session !== undefined) sessionBacklog(session, 1);
      }
      retune();
    } else if (dst.writableLength > MIN_DATA_HIGH_WATER_MARK_BYTES) {
      if (!deep) {
        deep = true;
        queued++;
        looking ??= setTimeout(look, DEEP_LOOK_MS).unref();
      }
      // Its share shrinks as others fill at the same time.
      retune();
    } else shallow();
  });
  dst.on('drain', onDrain);
  const onEnd = () => {
    settle();
    dst.off('drain', onDrain);
    if (endedAbnormally(src)) return abort('destroyed before its end');
    const passOn = () => {
      if (!dst.writableEnded && !dst.destroyed) dst.end();
    };
    if (probeableTcp(src)) src.write(EMPTY, (err) => (err ? abort(`reset (read as an end; ${(err as NodeJS.ErrnoException).code ?? err.message})`) : passOn()));
    else passOn();
  };
  // A source an early pump carried first (below) was left paused, and may
  // have ended already: its 'end' will not come again.
  if (src.readableEnded) process.nextTick(onEnd);
  else src.once('end', onEnd);
  if (src.isPaused()) src.resume();
  return settle;
}

/** An early pump: copies `src` to `dst` before the two are spliced, with
 * backpressure, and nothing else: no end passes, no reset. A tunnel's first
 * bytes travel with its stream's HEADERS this way instead of waiting a round
 * trip through the mesh for the answer; nothing comes back before the answer.
 * `stop()` detaches it and leaves `src` paused (what arrives stays buffered);
 * a splice of the same two carries on from there, whether or not `src` ended
 * meanwhile. With `keep`, the chunks copied are kept (`kept`, after any
 * `replay` chunks, which are written first) and `src` is paused once that
 * many bytes were read: what a hub replays to the next exit when one refuses. */
export interface EarlyPump {
  /** Detach; bytes read from `src` by this pump. */
  stop(): number;
  /** The replayed chunks and those read since, when keeping. */
  readonly kept: Buffer[];
  /** Their bytes. */
  readonly keptBytes: number;
}

export function earlyPump(src: Duplex, dst: Duplex, opts: { keep?: number; replay?: readonly Buffer[] } = {}): EarlyPump {
  const kept: Buffer[] = [];
  let keptBytes = 0;
  for (const c of opts.replay ?? []) {
    kept.push(c);
    keptBytes += c.length;
    dst.write(c);
  }
  let read = 0;
  let full = opts.keep !== undefined && keptBytes >= opts.keep;
  const onDrain = () => {
    if (!full) src.resume();
  };
  const onData = (c: Buffer) => {
    read += c.length;
    if (opts.keep !== undefined) {
      kept.push(c);
      keptBytes += c.length;
      if (keptBytes >= opts.keep) full = true;
    }
    if (!dst.write(c) || full) src.pause();
  };
  src.on('data', onData);
  dst.on('drain', onDrain);
  if (full || dst.writableNeedDrain) src.pause();
  else src.resume();
  return {
    kept,
    get keptBytes() {
      return keptBytes;
    },
    stop() {
      src.pause();
      src.off('data', onData);
      dst.off('drain', onDrain);
      return read;
    },
  };
}

export function splice(a: SpliceSide, b: SpliceSide, onDone: (r: SpliceResult) => void, opts: SpliceOptions = {}): void {
  const started = Date.now();
  let aToB = 0;
  let bToA = 0;
  let over = false;

  const settle: Array<() => void> = [];
  const finish = (end: SpliceEnd, reason: string) => {
    if (over) return;
    over = true;
    for (const f of settle) f();
    if (end === 'reset') {
      a.stream.pause();
      b.stream.pause();
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
  // A stream that closed cleanly (both ends, rstCode 0) is done even if its
  // 'finish' never comes: node:http2 can close a stream before delivering it,
  // and waiting for it leaked the splice (and the exit's open count).
  const closedClean = new Set<Duplex>();
  const doneWith = (s: Duplex) => closedClean.has(s) || (s.readableEnded && s.writableFinished);
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
        closedClean.add(s);
        setImmediate(check);
      } else finish('reset', `${name}: closed early${rst ? ` (rst ${rst})` : ''}`);
    });
  };
  const m = opts.meter ?? { bytesIn: 0, bytesOut: 0 };
  const batch = opts.batchWrites ?? false;
  tuneDataStream(a.stream);
  tuneDataStream(b.stream);
  for (const s of [a.stream, b.stream]) {
    const uncount = countOpen(s);
    if (uncount !== undefined) settle.push(uncount);
  }
  // The pumps' 'end' listeners go first: one that sees a destroyed stream must
  // decide (reset) before the done-check runs.
  settle.push(
    pump(
      a.stream,
      b.stream,
      batch,
      (n) => {
        aToB += n;
        m.bytesIn += n;
      },
      (why) => finish('reset', `a: ${why}`),
    ),
    pump(
      b.stream,
      a.stream,
      batch,
      (n) => {
        bToA += n;
        m.bytesOut += n;
      },
      (why) => finish('reset', `b: ${why}`),
    ),
  );
  watch(a, 'a');
  watch(b, 'b');
}
