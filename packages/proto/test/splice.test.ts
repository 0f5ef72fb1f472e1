/**
 * splice(): bytes arrive whole and in order with and without write batching,
 * half-close keeps the other direction, a reset passes on (also one TCP
 * reads as an end), a full destination pauses the source, HTTP/2 streams get
 * the data path's high-water marks, and write batching corks only bulk.
 * The buffer budget: splice-budget.test.ts; HTTP/2 windows:
 * splice-windows.test.ts.
 */
import { randomBytes } from 'node:crypto';
import * as http2 from 'node:http2';
import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import t from 'tap';
import { BULK_CHUNK_BYTES, DATA_HIGH_WATER_MARK_BYTES, type SpliceResult, splice, tuneDataStream } from '@ztm/proto';
import { finCheck } from '../../../test/helpers/servers.js';
import { collect, relay, sha, socketPair } from './splice-helpers.js';

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
