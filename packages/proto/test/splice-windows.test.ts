/**
 * splice() and HTTP/2 stream windows: many stuck streams of one session
 * narrow its window (and every byte still arrives once they resume), and
 * many open streams narrow it before any backs up; both widen again.
 */
import { createHash, randomBytes } from 'node:crypto';
import * as http2 from 'node:http2';
import type * as net from 'node:net';
import t from 'tap';
import {
  HTTP2_STREAM_WINDOW_BYTES,
  type SpliceResult,
  backloggedDirections,
  dataHighWaterMark,
  http2SessionOptions,
  narrowedSessions,
  openStreamWindowFor,
  splice,
  streamWindowFor,
} from '@ztm/proto';
import { waitFor } from '../../../test/helpers/index.js';
import { sha, socketPair, stuckH2 } from './splice-helpers.js';

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
