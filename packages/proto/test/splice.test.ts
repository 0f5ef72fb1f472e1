/**
 * splice(): bytes arrive whole and in order with and without write batching,
 * half-close keeps the other direction, a reset passes on, a full destination
 * pauses the source, many stuck connections share a buffer budget, many stuck
 * streams of one HTTP/2 session narrow its stream window (and every byte still
 * arrives once they resume), and HTTP/2 streams get the data path's
 * high-water marks.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import t from 'tap';
import {
  BULK_CHUNK_BYTES,
  DATA_HIGH_WATER_MARK_BYTES,
  HTTP2_STREAM_WINDOW_BYTES,
  MIN_DATA_HIGH_WATER_MARK_BYTES,
  SPLICE_BUFFER_BUDGET_BYTES,
  type SpliceResult,
  backloggedDirections,
  dataHighWaterMark,
  http2SessionOptions,
  narrowedSessions,
  openStreamWindowFor,
  splice,
  streamWindowFor,
  tuneDataStream,
} from '@ztm/proto';
import { waitFor } from '../../../test/helpers/index.js';
import { finCheck } from '../../../test/helpers/servers.js';

/** A TCP pair on loopback: [client end, server end]. */
async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const port = (server.address() as net.AddressInfo).port;
  const client = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await new Promise((r) => client.once('connect', r));
  const s = await accepted;
  server.close();
  return [client, s];
}

/** client ⇄ [a | splice | b] ⇄ far: returns the outer ends and the result. */
async function relay(batchWrites: boolean) {
  const [client, a] = await socketPair();
  const [b, far] = await socketPair();
  const done = new Promise<SpliceResult>((resolve) =>
    splice({ stream: a, reset: () => a.resetAndDestroy() }, { stream: b, reset: () => b.resetAndDestroy() }, resolve, { batchWrites }),
  );
  return { client, far, done };
}

const sha = (chunks: Buffer[]) => createHash('sha256').update(Buffer.concat(chunks)).digest('hex');
const collect = (s: net.Socket) =>
  new Promise<Buffer[]>((resolve) => {
    const got: Buffer[] = [];
    s.on('data', (c: Buffer) => got.push(c));
    s.once('end', () => resolve(got));
  });

for (const batchWrites of [false, true]) {
  t.test(`bytes whole both ways, half-close kept (batchWrites ${batchWrites})`, async (t) => {
    const { client, far, done } = await relay(batchWrites);
    const up = randomBytes(8 * 1024 * 1024 + 13);
    const down = randomBytes(3 * 1024 * 1024 + 7);
    const gotFar = collect(far);
    const gotClient = collect(client);
    // Many small writes in one turn: the batched path must keep their order.
    for (let i = 0; i < up.length; i += 1000) client.write(up.subarray(i, i + 1000));
    client.end();
    // The client has shut its write side; the reply still reaches it.
    const farChunks = await gotFar;
    t.equal(sha(farChunks), sha([up]), 'far end got every byte in order');
    far.end(down);
    t.equal(sha(await gotClient), sha([down]), 'the reply reached the half-closed client');
    const r = await done;
    t.equal(r.end, 'done');
    t.equal(r.bytesAtoB, up.length);
    t.equal(r.bytesBtoA, down.length);
  });
}

t.test('a reset on one side resets the other', async (t) => {
  const { client, far, done } = await relay(true);
  const closed = new Promise<string>((resolve) => {
    client.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    client.once('close', () => resolve('closed'));
  });
  client.write('hello');
  await new Promise((r) => far.once('data', r));
  far.resetAndDestroy();
  t.equal((await done).end, 'reset');
  t.match(await closed, /ECONNRESET|closed/, 'the client saw its connection go');
});

t.test('a destination that is not read pauses the source (bounded buffering)', async (t) => {
  const { client, far, done } = await relay(true);
  far.pause();
  let accepted = 0;
  const chunk = Buffer.alloc(64 * 1024);
  // Push until the client's own buffer stays full: the relay stopped reading.
  for (let i = 0; i < 2000; i++) {
    if (client.write(chunk)) accepted += chunk.length;
    else {
      const drained = await Promise.race([new Promise((r) => client.once('drain', () => r(true))), new Promise((r) => setTimeout(() => r(false), 500))]);
      if (!drained) break;
      accepted += chunk.length;
    }
  }
  // Kernel buffers on three sockets plus the relay's 1 MiB high-water marks;
  // without backpressure it would take all 125 MiB offered.
  t.ok(accepted < 64 * 1024 * 1024, `accepted ${(accepted / 2 ** 20).toFixed(1)} MiB before backpressure held`);
  client.destroy();
  far.destroy();
  await done;
});

/** A source that offers 64 KiB as fast as it is read and a destination whose
 * writes never complete (a reader that stopped), spliced; `src` is a: its
 * bytes go a → b. */
function stuckSplice(done: Promise<unknown>[]) {
  const chunk = Buffer.alloc(64 * 1024);
  const src = new Duplex({
    read() {
      this.push(chunk);
    },
    write(_c, _e, cb) {
      cb();
    },
  });
  const dst = new Duplex({ read() {}, write() {} });
  done.push(new Promise((resolve) => splice({ stream: src, reset: () => src.destroy() }, { stream: dst, reset: () => dst.destroy() }, resolve)));
  return { src, dst };
}

const held = (pairs: { src: Duplex; dst: Duplex }[]) => pairs.reduce((n, p) => n + p.src.readableLength + p.dst.writableLength, 0);

t.test('many connections whose readers stopped share one buffer budget; idle ones do not count', async (t) => {
  const MiB = 1024 * 1024;
  t.equal(backloggedDirections(), 0, 'nothing backlogged to begin with');
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES);
  // Idle connections beside a transfer do not shrink its buffers.
  const idle: Promise<SpliceResult>[] = [];
  const idlePairs: net.Socket[] = [];
  for (let i = 0; i < 40; i++) {
    const [x, y] = await socketPair();
    const [u, v] = await socketPair();
    idlePairs.push(x, y, u, v);
    idle.push(new Promise((r) => splice({ stream: y, reset: () => y.destroy() }, { stream: u, reset: () => u.destroy() }, r)));
  }
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, '40 idle connections: the full high-water mark');
  const one: Promise<unknown>[] = [];
  const first = [stuckSplice(one)];
  await new Promise((r) => setTimeout(r, 50));
  t.equal(backloggedDirections(), 1);
  t.ok(
    held(first) >= 2 * DATA_HIGH_WATER_MARK_BYTES - 64 * 1024,
    `one stuck connection keeps the full read-ahead and queue (${(held(first) / MiB).toFixed(2)} MiB)`,
  );

  // 128 more: with the full 1 MiB marks each would hold ≈ 2 MiB (256 MiB).
  const done: Promise<unknown>[] = [];
  const pairs = [];
  for (let i = 0; i < 128; i++) {
    pairs.push(stuckSplice(done));
    await new Promise((r) => setImmediate(r));
  }
  await new Promise((r) => setTimeout(r, 50));
  t.equal(backloggedDirections(), 129, 'every stuck direction is counted, idle ones are not');
  t.equal(dataHighWaterMark(), Math.max(MIN_DATA_HIGH_WATER_MARK_BYTES, Math.floor(SPLICE_BUFFER_BUDGET_BYTES / (4 * 129))));
  const total = held(pairs) + held(first);
  // Each direction keeps the share it had when it stopped: the budget while
  // few are stuck, then less and less (≈ budget × (1 + ln(n / 8)) / 2, plus a
  // chunk or two each).
  t.ok(total < 100 * MiB, `129 stuck connections hold ${(total / MiB).toFixed(1)} MiB (without the budget ≈ 258)`);
  // A share is what the source reads ahead and the destination queues, each
  // past its mark by a chunk or two (read-ahead while flowing).
  const lastMost = Math.max(...pairs.slice(-16).map((p) => p.src.readableLength + p.dst.writableLength));
  t.ok(lastMost <= 2 * (dataHighWaterMark() + 128 * 1024), `the last ones hold their small share (at most ${(lastMost / 1024).toFixed(0)} KiB)`);
  for (const p of [...pairs, ...first]) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all([...done, ...one]);
  t.equal(backloggedDirections(), 0, 'finished splices give their share back');
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES);
  for (const s of idlePairs) s.destroy();
  await Promise.all(idle);
});

t.test('connections that back up at the same time share the budget as they fill', async (t) => {
  const MiB = 1024 * 1024;
  t.equal(backloggedDirections(), 0, 'nothing backlogged to begin with');
  // 128 at once: each direction's destination fills at the same time as the
  // others'. Counted only once paused, each would queue its full 1 MiB mark
  // first and read 1 MiB ahead (≈ 256 MiB).
  const done: Promise<unknown>[] = [];
  const pairs = [];
  for (let i = 0; i < 128; i++) pairs.push(stuckSplice(done));
  await waitFor(() => backloggedDirections() === 128, { intervalMs: 10, what: 'every direction backed up' });
  const total = held(pairs);
  t.ok(total < 112 * MiB, `128 connections that backed up together hold ${(total / MiB).toFixed(1)} MiB (counted only once paused: ≈ 160)`);
  for (const p of pairs) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all(done);
  t.equal(backloggedDirections(), 0, 'finished splices give their share back');
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, 'the full mark again');
});

t.test('a destination that drains after its source went quiet stops counting towards the budget', async (t) => {
  const KiB = 1024;
  // 40 connections each send 256 KiB and then stay open and quiet (a
  // keep-alive connection after a response); their destinations take 50 ms
  // to write each chunk. While the chunks wait, each counts (the marks
  // shrink); once written, none does.
  const done: Promise<unknown>[] = [];
  const pairs: { src: Duplex; dst: Duplex }[] = [];
  for (let i = 0; i < 40; i++) {
    const src = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
    const dst = new Duplex({ read() {}, write: (_c, _e, cb) => setTimeout(cb, 50) });
    done.push(new Promise((r) => splice({ stream: src, reset: () => src.destroy() }, { stream: dst, reset: () => dst.destroy() }, r)));
    for (let k = 0; k < 4; k++) src.push(Buffer.alloc(64 * KiB));
    pairs.push({ src, dst });
  }
  await waitFor(() => pairs.every((p) => p.dst.writableLength > 64 * KiB), { intervalMs: 5, what: 'every destination queued' });
  t.ok(dataHighWaterMark() < DATA_HIGH_WATER_MARK_BYTES, `40 queued destinations share the budget: ${(dataHighWaterMark() / KiB).toFixed(0)} KiB marks`);
  await waitFor(() => pairs.every((p) => p.dst.writableLength === 0), { intervalMs: 10, what: 'every destination drained' });
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, 'drained and quiet: the full mark again, with the connections still open');
  for (const p of pairs) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all(done);
});

t.test('a destination that backed up, drained, queued again and drained after its source went quiet stops counting', async (t) => {
  const KiB = 1024;
  // As above, but each first sends more than its mark takes, so it waits for
  // a drain once before the chunks it sends and then goes quiet with.
  const done: Promise<unknown>[] = [];
  const pairs: { src: Duplex; dst: Duplex }[] = [];
  for (let i = 0; i < 40; i++) {
    const src = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
    const dst = new Duplex({ read() {}, write: (_c, _e, cb) => setTimeout(cb, 20) });
    done.push(new Promise((r) => splice({ stream: src, reset: () => src.destroy() }, { stream: dst, reset: () => dst.destroy() }, r)));
    for (let k = 0; k < 24; k++) src.push(Buffer.alloc(64 * KiB));
    pairs.push({ src, dst });
  }
  await waitFor(() => backloggedDirections() === 40, { intervalMs: 5, what: 'every direction waited on its destination' });
  await waitFor(() => pairs.every((p) => p.dst.writableLength === 0 && p.src.readableLength === 0), { timeoutMs: 20_000, what: 'every destination drained' });
  t.equal(backloggedDirections(), 0, 'none waits any more');
  for (const p of pairs) for (let k = 0; k < 4; k++) p.src.push(Buffer.alloc(64 * KiB));
  await waitFor(() => pairs.every((p) => p.dst.writableLength === 0), { intervalMs: 10, what: 'every destination drained again' });
  await waitFor(() => dataHighWaterMark() === DATA_HIGH_WATER_MARK_BYTES, { timeoutMs: 2000 }).catch(() => {});
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, 'drained and quiet: the full mark again');
  for (const p of pairs) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all(done);
});

/** An h2c server with the sessions' options whose every stream is spliced
 * into a TCP pair whose far end starts paused (a reader that stopped), and a
 * client session to it. `onStream` gets each stream, its near and far end. */
async function stuckH2(onStream: (s: http2.ServerHttp2Stream, near: net.Socket, far: net.Socket) => void) {
  const spliced: Promise<SpliceResult>[] = [];
  const server = http2.createServer(http2SessionOptions);
  let serverSession: http2.ServerHttp2Session | undefined;
  server.on('session', (s) => {
    serverSession = s;
  });
  server.on('stream', (s) => {
    s.respond({ ':status': 200 });
    void socketPair().then(([x, y]) => {
      y.pause();
      onStream(s, x, y);
      spliced.push(new Promise((r) => splice({ stream: s, reset: () => s.close(http2.constants.NGHTTP2_CANCEL) }, { stream: x, reset: () => x.destroy() }, r)));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, http2SessionOptions);
  return {
    session,
    spliced,
    /** The server session's stream window as last acknowledged. */
    window: () => serverSession?.localSettings.initialWindowSize,
    onLocalSettings: (f: (s: http2.Settings) => void) => serverSession?.on('localSettings', f),
    close() {
      session.close();
      server.close();
    },
  };
}

t.test('many stuck streams of one HTTP/2 session narrow its stream window; it widens again when they go', async (t) => {
  const KiB = 1024;
  const served: http2.ServerHttp2Stream[] = [];
  const sinks: net.Socket[] = [];
  const h2 = await stuckH2((s, x, y) => {
    sinks.push(x, y);
    served.push(s);
  });
  const { session, spliced } = h2;
  const reqs: http2.ClientHttp2Stream[] = [];
  const chunk = Buffer.alloc(64 * KiB, 0x61);
  // One more stream that writes until it stops being taken, then settles.
  const stuckOneMore = async () => {
    const req = session.request({ ':path': '/', ':method': 'POST' });
    req.on('error', () => {});
    req.resume();
    reqs.push(req);
    let sent = 0;
    const more = () => {
      while (sent < 64 * 1024 * KiB && !req.destroyed) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once('drain', more);
      }
    };
    more();
    // Stuck: its direction counted as backed up, and nothing more arriving.
    await waitFor(() => backloggedDirections() >= reqs.length, { intervalMs: 10, what: 'the stream backed up' });
    await settled();
  };
  const settled = async () => {
    let before = -1;
    for (let i = 0; i < 100; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const now = served.reduce((n, s) => n + s.readableLength, 0);
      if (now === before) return;
      before = now;
    }
  };
  for (let i = 0; i < 16; i++) await stuckOneMore();
  t.equal(streamWindowFor(16), HTTP2_STREAM_WINDOW_BYTES, '16 stuck streams keep the full window');
  t.equal(h2.window(), HTTP2_STREAM_WINDOW_BYTES);
  t.equal(narrowedSessions(), 0);
  for (let i = 16; i < 64; i++) await stuckOneMore();
  await waitFor(() => h2.window() === 256 * KiB, { intervalMs: 10, what: 'the narrower window acknowledged' });
  t.equal(streamWindowFor(64), 256 * KiB);
  t.equal(h2.window(), 256 * KiB, '64 stuck streams: the session asked for a quarter of the window');
  t.equal(narrowedSessions(), 1);
  // Each stream holds what its peer sent before it stopped reading: its
  // read-ahead (the splice's share) and one window. The last ones were opened
  // with the narrow window.
  const last = served.slice(-8).map((s) => s.readableLength);
  t.ok(
    Math.max(...last) <= 256 * KiB + dataHighWaterMark() + 64 * KiB,
    `the last stuck streams hold ${last.map((n) => (n / KiB).toFixed(0)).join(', ')} KiB (without narrowing ≈ 1,150 each)`,
  );
  const total = served.reduce((n, s) => n + s.readableLength, 0);
  t.ok(total < 56 * 1024 * KiB, `64 stuck streams hold ${(total / 1024 / KiB).toFixed(1)} MiB (≈ 70 without narrowing)`);

  // They go; the session stays and asks for the full window again.
  const widened = new Promise((r) => h2.onLocalSettings((s) => s.initialWindowSize === HTTP2_STREAM_WINDOW_BYTES && r(s)));
  for (const r of reqs) r.close(http2.constants.NGHTTP2_CANCEL);
  for (const s of sinks) s.destroy();
  await Promise.all(spliced);
  await Promise.race([widened, new Promise((r) => setTimeout(r, 5000))]);
  t.equal(narrowedSessions(), 0, 'no session narrowed once they are gone');
  t.equal(h2.window(), HTTP2_STREAM_WINDOW_BYTES, 'the full window again');
  h2.close();
});

t.test('streams of a narrowed session deliver every byte once their readers resume', async (t) => {
  const KiB = 1024;
  const MiB = 1024 * KiB;
  const N = 24; // past 16: the session asks for half the window
  // More than loopback's socket buffers take (a few MiB each way), so every
  // stream backs up in the splice.
  const EACH = 16 * MiB;
  const readers: net.Socket[] = [];
  const got: Promise<{ bytes: number; sha: string }>[] = [];
  const h2 = await stuckH2((_s, _x, y) => {
    readers.push(y);
    got.push(
      new Promise((resolve) => {
        const h = createHash('sha256');
        let bytes = 0;
        y.on('data', (c: Buffer) => {
          h.update(c);
          bytes += c.length;
        });
        y.once('end', () => {
          y.end();
          resolve({ bytes, sha: h.digest('hex') });
        });
      }),
    );
  });
  const { session, spliced } = h2;
  const sent: string[] = [];
  for (let i = 0; i < N; i++) {
    // Each stream its own bytes: a 1 MiB block of its own, 16 times.
    const block = randomBytes(MiB);
    const h = createHash('sha256');
    for (let k = 0; k < EACH / MiB; k++) h.update(block);
    sent.push(h.digest('hex'));
    const req = session.request({ ':path': '/', ':method': 'POST' });
    req.on('error', () => {});
    req.resume();
    let k = 0;
    const more = () => {
      while (k < EACH / MiB) {
        k++;
        const last = k === EACH / MiB;
        if (last) req.end(block);
        else if (!req.write(block)) return void req.once('drain', more);
      }
    };
    more();
  }
  // Every reader stopped: each stream backs up, and the session narrows.
  await waitFor(() => h2.window() === 512 * KiB, { intervalMs: 10 }).catch(() => {});
  t.equal(h2.window(), 512 * KiB, `${N} stuck streams: the session asked for half the window`);
  await waitFor(() => readers.length === N, { intervalMs: 10 }).catch(() => {});
  t.equal(readers.length, N, 'every stream reached its reader');
  // The readers resume: every byte arrives, in order, and the session widens.
  for (const y of readers) y.resume();
  const results = await Promise.all(got);
  t.ok(
    results.every((r) => r.bytes === EACH),
    `every stream delivered its ${EACH} bytes`,
  );
  t.same(results.map((r) => r.sha).sort(), [...sent].sort(), 'whole and in order');
  await Promise.all(spliced);
  await waitFor(() => h2.window() === HTTP2_STREAM_WINDOW_BYTES, { intervalMs: 10 }).catch(() => {});
  t.equal(h2.window(), HTTP2_STREAM_WINDOW_BYTES, 'and asks for the full window again');
  t.equal(narrowedSessions(), 0);
  h2.close();
});

t.test('many open streams of one HTTP/2 session narrow its stream window before any backs up', async (t) => {
  const KiB = 1024;
  const MiB = 1024 * KiB;
  const N = 128;
  t.equal(openStreamWindowFor(32), HTTP2_STREAM_WINDOW_BYTES, '32 open streams keep the full window');
  t.equal(openStreamWindowFor(33), 512 * KiB);
  t.equal(openStreamWindowFor(N), 256 * KiB);
  t.equal(openStreamWindowFor(1024), 64 * KiB);
  // Streams that stop together (one target stalling under many connections)
  // have each been sent a window before the backlog count narrows it, so the
  // open ones share a budget from the start. Each stream here is spliced
  // into a TCP pair whose far end echoes, and counted while it is.
  const server = http2.createServer(http2SessionOptions);
  let serverSession: http2.ServerHttp2Session | undefined;
  server.on('session', (s) => {
    serverSession = s;
  });
  const spliced: Promise<SpliceResult>[] = [];
  const pairs: net.Socket[] = [];
  server.on('stream', (s) => {
    s.respond({ ':status': 200 });
    void socketPair().then(([x, y]) => {
      pairs.push(x, y);
      y.pipe(y);
      spliced.push(new Promise((r) => splice({ stream: s, reset: () => s.close(http2.constants.NGHTTP2_CANCEL) }, { stream: x, reset: () => x.destroy() }, r)));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, http2SessionOptions);
  const window = () => serverSession?.localSettings.initialWindowSize;
  const idle: http2.ClientHttp2Stream[] = [];
  for (let i = 0; i < N; i++) {
    const req = session.request({ ':path': '/', ':method': 'POST' });
    req.on('error', () => {});
    idle.push(req);
  }
  await waitFor(() => window() === 256 * KiB, { intervalMs: 10, what: 'the narrower window acknowledged' }).catch(() => {});
  t.equal(window(), 256 * KiB, `${N} open streams, none backed up: the session asked for a quarter of the window`);
  t.equal(backloggedDirections(), 0, 'no direction backed up');
  t.equal(narrowedSessions(), 1);
  // One more stream moves 8 MiB there and back through the narrowed session.
  const req = session.request({ ':path': '/', ':method': 'POST' });
  const data = randomBytes(8 * MiB);
  const back: Buffer[] = [];
  req.on('data', (c: Buffer) => back.push(c));
  const ended = new Promise((r) => req.once('end', r));
  req.end(data);
  await ended;
  t.equal(sha(back), sha([data]), 'a transfer beside them arrives whole through the narrowed window');
  // They go: the full window again.
  const widened = new Promise((r) => serverSession?.on('localSettings', (st) => st.initialWindowSize === HTTP2_STREAM_WINDOW_BYTES && r(st)));
  for (const r of idle) r.close(http2.constants.NGHTTP2_CANCEL);
  await Promise.race([widened, new Promise((r) => setTimeout(r, 5000))]);
  t.equal(window(), HTTP2_STREAM_WINDOW_BYTES, 'the full window again once they go');
  t.equal(narrowedSessions(), 0);
  for (const p of pairs) p.destroy();
  await Promise.all(spliced);
  session.close();
  server.close();
});

t.test('HTTP/2 streams get the data high-water marks', async (t) => {
  const server = http2.createServer();
  server.on('stream', (s) => {
    tuneDataStream(s);
    t.equal(s.writableHighWaterMark, DATA_HIGH_WATER_MARK_BYTES);
    t.equal(s.readableHighWaterMark, DATA_HIGH_WATER_MARK_BYTES);
    s.respond({ ':status': 200 });
    s.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
  const req = session.request({ ':path': '/' });
  tuneDataStream(req);
  t.equal(req.writableHighWaterMark, DATA_HIGH_WATER_MARK_BYTES);
  req.end();
  req.resume();
  await new Promise((r) => req.once('close', r));
  session.close();
  server.close();
});

t.test('an HTTP/2 session destroyed mid-stream resets the TCP side, never a clean end', async (t) => {
  // A stream of a session destroyed without an error emits 'end' (node:http2
  // pushes EOF on destroy): that must not reach the client as a FIN.
  // The server sends a few chunks and then holds the stream open (no
  // END_STREAM), and the client has read them all before the session goes: a
  // reset that arrives with unread data is reported by libuv as a clean EOF
  // (a short read and POLLHUP in one wakeup), which this test could not tell
  // from a FIN (strace showed the splice's SO_LINGER 0 close in those runs).
  const chunks = 10;
  for (const halfClosed of [false, true]) {
    const server = http2.createServer();
    server.on('stream', (s) => {
      s.respond({ ':status': 200 });
      s.on('data', () => {});
      let sent = 0;
      const timer = setInterval(() => {
        s.write(Buffer.alloc(1000));
        if (++sent === chunks) clearInterval(timer);
      }, 2);
      s.on('close', () => clearInterval(timer));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const session = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    const req = session.request({ ':method': 'POST', ':path': '/' });
    const [client, a] = await socketPair();
    const done = new Promise<SpliceResult>((resolve) =>
      splice({ stream: a, reset: () => a.resetAndDestroy() }, { stream: req, reset: () => req.close(http2.constants.NGHTTP2_CANCEL) }, resolve, {
        batchWrites: true,
      }),
    );
    const seen = new Promise<string>((resolve) => {
      let ended = false;
      client.on('end', () => {
        ended = true;
      });
      client.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
      client.on('close', () => resolve(ended ? 'clean end' : 'closed'));
    });
    let received = 0;
    const allRead = new Promise<void>((resolve) =>
      client.on('data', (c: Buffer) => {
        received += c.length;
        if (received === chunks * 1000) resolve();
      }),
    );
    if (halfClosed) client.end();
    else client.write('x');
    await new Promise((r) => req.once('response', r));
    await allRead;
    session.destroy();
    t.equal((await done).end, 'reset', `${halfClosed ? 'half-closed' : 'open'}: the splice ended in a reset`);
    t.match(await seen, /error ECONNRESET|closed/, `${halfClosed ? 'half-closed' : 'open'}: the client saw a reset, not a clean end`);
    server.close();
  }
});

t.test('a TCP peer that writes and resets at once: the reset passes on, never an end', async (t) => {
  // Data and the RST arrive in one wakeup, which libuv reports as an end of
  // stream; the splice must find out it was a reset.
  const tries = 10;
  const seen: string[] = [];
  for (let i = 0; i < tries; i++) {
    const { client, far, done } = await relay(true);
    const sawFin = finCheck(client);
    const clientSaw = new Promise<string>((resolve) => {
      client.on('data', () => {});
      client.once('end', () => resolve(sawFin() ? 'fin' : 'reset'));
      client.once('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
    });
    far.write(Buffer.alloc(1000, 1));
    far.write(Buffer.alloc(1000, 2));
    far.resetAndDestroy();
    // Without the check the splice passes an end on and waits for ever.
    const r = await Promise.race([done, new Promise<{ end: string }>((resolve) => setTimeout(() => resolve({ end: 'hung' }), 3000))]);
    seen.push(`${r.end}/${await clientSaw}`);
    client.destroy();
    far.destroy();
  }
  t.same(
    seen.filter((s) => !/^reset\/(reset|error)/.test(s)),
    [],
    `every try ended in a reset passed to the client (${seen.join(', ')})`,
  );
});

t.test('a TCP peer that half-closes still passes on a clean end (the probe does not break it)', async (t) => {
  const { client, far, done } = await relay(true);
  const got = collect(client);
  far.end(Buffer.alloc(5000, 7));
  t.equal(Buffer.concat(await got).length, 5000, 'all bytes, then a clean end');
  client.end();
  t.equal((await done).end, 'done');
});

t.test('write batching: small chunks go at once; a bulk chunk corks and the rest of its turn leaves with it', async (t) => {
  // The destination records how node's Writable hands it the data: one
  // _write per chunk written at once, one _writev per corked batch.
  const calls: string[] = [];
  let corks = 0;
  const src = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
  const dst = new Duplex({
    read() {},
    write(c: Buffer, _e, cb) {
      calls.push(`write ${c.length}`);
      cb();
    },
    writev(cs: { chunk: Buffer }[], cb) {
      calls.push(`writev ${cs.map((x) => x.chunk.length).join('+')}`);
      cb();
    },
  });
  const cork = dst.cork.bind(dst);
  dst.cork = () => {
    corks++;
    cork();
  };
  splice({ stream: src, reset: () => src.destroy() }, { stream: dst, reset: () => dst.destroy() }, () => {}, { batchWrites: true });
  const turn = () => new Promise((r) => setImmediate(r));
  const chunk = (n: number) => Buffer.alloc(n, 1);
  await turn(); // the source starts flowing on the next tick

  src.push(chunk(64));
  t.same(calls, ['write 64'], 'a small chunk is written before the turn ends');
  src.push(chunk(100));
  t.same(calls, ['write 64', 'write 100'], 'so is the next');
  await turn();
  t.equal(corks, 0, 'no cork for small chunks');

  calls.length = 0;
  src.push(chunk(BULK_CHUNK_BYTES));
  src.push(chunk(BULK_CHUNK_BYTES));
  src.push(chunk(10));
  t.same(calls, [], 'a bulk chunk corks');
  await turn();
  await turn();
  t.same(calls, [`writev ${BULK_CHUNK_BYTES}+${BULK_CHUNK_BYTES}+10`], 'the turn’s chunks leave in one writev');
  t.equal(corks, 1);

  calls.length = 0;
  src.push(chunk(20));
  t.same(calls, ['write 20'], 'the next turn starts uncorked');
  src.destroy();
  dst.destroy();
});
