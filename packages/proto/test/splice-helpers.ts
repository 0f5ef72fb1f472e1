/**
 * What the splice tests share: TCP pairs on loopback, a splice between two
 * of them, digests, and the stuck ends the budget and window tests back up
 * against.
 */
import { createHash } from 'node:crypto';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import { type SpliceResult, http2SessionOptions, splice } from '@ztm/proto';

/** A TCP pair on loopback: [client end, server end]. */
export async function socketPair(): Promise<[net.Socket, net.Socket]> {
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
export async function relay(batchWrites: boolean) {
  const [client, a] = await socketPair();
  const [b, far] = await socketPair();
  const done = new Promise<SpliceResult>((resolve) =>
    splice({ stream: a, reset: () => a.resetAndDestroy() }, { stream: b, reset: () => b.resetAndDestroy() }, resolve, { batchWrites }),
  );
  return { client, far, done };
}

export const sha = (chunks: Buffer[]) => createHash('sha256').update(Buffer.concat(chunks)).digest('hex');
export const collect = (s: net.Socket) =>
  new Promise<Buffer[]>((resolve) => {
    const got: Buffer[] = [];
    s.on('data', (c: Buffer) => got.push(c));
    s.once('end', () => resolve(got));
  });

/** A source that offers 64 KiB as fast as it is read and a destination whose
 * writes never complete (a reader that stopped), spliced; `src` is a: its
 * bytes go a → b. */
export function stuckSplice(done: Promise<unknown>[]) {
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

export const held = (pairs: { src: Duplex; dst: Duplex }[]) => pairs.reduce((n, p) => n + p.src.readableLength + p.dst.writableLength, 0);

/** An h2c server with the sessions' options whose every stream is spliced
 * into a TCP pair whose far end starts paused (a reader that stopped), and a
 * client session to it. `onStream` gets each stream, its near and far end. */
export async function stuckH2(onStream: (s: http2.ServerHttp2Stream, near: net.Socket, far: net.Socket) => void) {
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
