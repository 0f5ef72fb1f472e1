/**
 * EagerWriteSocket: the TCP layer under the agent's TLS whose writes complete
 * at once. Its bytes arrive intact and in order both ways, a write completes
 * while the peer reads nothing, pause() holds reads back, and the backstop
 * drops a connection that queues more than HTTP/2 flow control would allow,
 * with an error that says so.
 */
import { once } from 'node:events';
import * as net from 'node:net';
import t, { type Test } from 'tap';
import { EagerWriteSocket } from '../src/session/eager-write-socket.js';

async function server(t: Test, onConn: (s: net.Socket) => void): Promise<number> {
  const srv = net.createServer(onConn);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => srv.close());
  return (srv.address() as net.AddressInfo).port;
}

t.test('bytes both ways, in order; end and close are passed on', async (t) => {
  const port = await server(t, (s) => s.pipe(s));
  const e = new EagerWriteSocket({ host: '127.0.0.1', port });
  const chunks: Buffer[] = [];
  e.on('data', (c: Buffer) => chunks.push(Buffer.from(c))); // valid only during the call
  const sent = Buffer.alloc(3 * 1024 * 1024);
  for (let i = 0; i < sent.length; i++) sent[i] = (i * 7) & 0xff;
  let completed = 0;
  e.cork();
  for (let off = 0; off < sent.length; off += 100_000) e.write(sent.subarray(off, off + 100_000), () => completed++);
  e.uncork();
  t.equal(completed, Math.ceil(sent.length / 100_000), 'every write completed before returning');
  e.end();
  await once(e, 'end');
  t.ok(Buffer.concat(chunks).equals(sent), '3 MiB echoed back intact');
  await once(e, 'close');
});

t.test('writes complete while the peer reads nothing; the backstop drops the connection', async (t) => {
  let held: net.Socket | undefined;
  const port = await server(t, (s) => {
    held = s;
    s.pause();
  });
  t.teardown(() => held?.destroy());
  const e = new EagerWriteSocket({ host: '127.0.0.1', port }, 4 * 1024 * 1024);
  await once(e.socket, 'connect');
  const chunk = Buffer.alloc(256 * 1024);
  let completed = 0;
  const errors: Error[] = [];
  e.on('error', (err: Error) => errors.push(err));
  for (let i = 0; i < 64 && !e.socket.destroyed; i++) e.write(chunk, () => completed++);
  t.ok(completed > 16, `${completed} writes of 256 KiB completed with nobody reading`);
  // Not once(): it rejects on the 'error' that comes first. Bounded: no backstop, no close.
  await Promise.race([new Promise((r) => e.once('close', r)), new Promise((r) => setTimeout(r, 5_000))]);
  t.ok(e.socket.destroyed, 'the connection is dropped');
  t.equal(errors.length, 1, 'one error');
  t.match(errors[0]?.message, /queued for the hub, more than HTTP\/2 flow control allows \(4194304\)/, errors[0]?.message ?? 'no error');
});

t.test('pause() stops reads; resume() brings the held bytes', async (t) => {
  let peer: net.Socket | undefined;
  const port = await server(t, (s) => {
    peer = s;
  });
  const e = new EagerWriteSocket({ host: '127.0.0.1', port });
  t.teardown(() => e.destroy());
  await once(e.socket, 'connect');
  let got = 0;
  e.on('data', (c: Buffer) => {
    got += c.length;
  });
  e.pause();
  peer?.write(Buffer.alloc(1000));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got, 0, 'nothing delivered while paused');
  e.resume();
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got, 1000, 'delivered after resume');
});
