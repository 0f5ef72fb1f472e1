// One hop of the `node3` bench scenarios: for each service of the config file,
// listen on 127.0.0.1:accept and forward every connection to 127.0.0.1:connect,
// nothing else: `pipe()` both ways (backpressure and half-close by Node's
// streams), TLS on either side when asked (server-authenticated with the
// bench's self-signed certificate, verified by the client). Three of these in a
// row are the floor of any relay of three Node processes: the event-loop turns,
// wake-ups and (with TLS) record work that ztm's path has too, without HTTP/2,
// multiplexing, identity or accounting.
//
// With `h2In` / `h2Out` a hop speaks HTTP/2 over TLS instead (`node3h2`): one
// session per hop, opened once, every connection a stream of it, the next hop
// answering 200 once its own side is open (the exit: once its target has
// accepted); the client's first bytes go with the request, as ztm's do. The
// session settings are ztm's own (proto's windows, frame size, session
// memory) and the sockets get ztm's read-ahead; nothing of ztm's relay (no
// identity, no routing, no splice, no accounting). That is the floor of a
// three-process Node relay that multiplexes connections over HTTP/2 — what a
// new connection costs there is Node's, not ztm's.
//
//   node node-relay.mjs CONFIG.json
//   CONFIG: { "key": PATH, "cert": PATH, "services": [{ "accept": PORT,
//             "connect": PORT, "tlsIn": BOOL, "tlsOut": BOOL,
//             "h2In": BOOL, "h2Out": BOOL }] }
import { readFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { DATA_HIGH_WATER_MARK_BYTES, http2SessionOptions, tuneDataStream } from '../../packages/proto/dist/index.js';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const key = readFileSync(cfg.key);
const cert = readFileSync(cfg.cert);
const { NGHTTP2_CANCEL } = http2.constants;
/** ztm's read-ahead and write marks, on every stream and socket of an h2 hop. */
const tune = (s) => tuneDataStream(s, DATA_HIGH_WATER_MARK_BYTES);

/** Reset one side: RST_STREAM for an HTTP/2 stream, destroy for a socket. */
function reset(s) {
  if (s.destroyed) return;
  if (s instanceof net.Socket) s.destroy();
  else s.close(NGHTTP2_CANCEL);
}

/** An error or a reset on one side resets the other. */
function tie(a, b) {
  for (const [x, y] of [
    [a, b],
    [b, a],
  ]) {
    x.on('error', () => reset(y));
    // An HTTP/2 stream reset by its peer closes without an error.
    if (!(x instanceof net.Socket)) x.on('close', () => x.rstCode && reset(y));
  }
}

/** Pipe both ways, tied. */
function join(a, b) {
  a.pipe(b);
  b.pipe(a);
  tie(a, b);
}

/** The session of an `h2Out` hop to the next one, reopened when it goes. */
function nextHop(port) {
  let session;
  return () => {
    if (!session || session.closed || session.destroyed) {
      session = http2.connect(`https://127.0.0.1:${port}`, { ...http2SessionOptions, ca: cert });
      session.on('error', () => {});
    }
    return session;
  };
}

/** Open the far side of one connection; `ready(far)` once it can carry
 * bytes, or `fail()` if it cannot (one of the two, once). */
function openFar(service, session, onReady, onFail) {
  let settled = false;
  const ready = (far) => {
    if (settled) return;
    settled = true;
    onReady(far);
  };
  const fail = () => {
    if (settled) return;
    settled = true;
    onFail();
  };
  if (service.h2Out) {
    let req;
    try {
      req = session().request({ ':method': 'POST', ':path': '/' }, { endStream: false });
    } catch {
      return fail();
    }
    tune(req);
    req.once('response', (h) => (h[':status'] === 200 ? ready(req) : fail()));
    req.on('error', fail);
    return req;
  }
  const opts = {
    host: '127.0.0.1',
    port: service.connect,
    allowHalfOpen: true,
    noDelay: true,
    highWaterMark: service.h2In ? DATA_HIGH_WATER_MARK_BYTES : undefined,
  };
  const far = service.tlsOut ? tls.connect({ ...opts, ca: cert }) : net.connect(opts);
  far.setNoDelay(true);
  far.once(service.tlsOut ? 'secureConnect' : 'connect', () => ready(far));
  far.once('error', fail);
  return far;
}

/** An `h2Out` hop: `near`'s first bytes go with the request to the next hop
 * at once, and what comes back once that hop has answered 200 (`answered`
 * runs first: a server stream responds); a refusal resets `near`. */
function forwardEarly(service, session, near, answered) {
  const far = openFar(
    service,
    session,
    () => {
      answered();
      far.pipe(near);
    },
    () => reset(near),
  );
  if (!far) return;
  near.pipe(far);
  tie(near, far);
}

for (const s of cfg.services) {
  const session = s.h2Out ? nextHop(s.connect) : undefined;
  if (s.h2In) {
    const server = http2.createSecureServer({ ...http2SessionOptions, key, cert });
    server.on('stream', (stream) => {
      stream.on('error', () => {});
      tune(stream);
      if (s.h2Out) return forwardEarly(s, session, stream, () => stream.respond({ ':status': 200 }));
      openFar(
        s,
        session,
        (far) => {
          stream.respond({ ':status': 200 });
          join(stream, far);
        },
        () => !stream.destroyed && stream.respond({ ':status': 502 }, { endStream: true }),
      );
    });
    server.on('tlsClientError', () => {});
    server.on('sessionError', () => {});
    server.listen(s.accept, '127.0.0.1');
    continue;
  }
  const handler = (sock) => {
    sock.setNoDelay(true);
    if (s.h2Out) {
      tune(sock);
      return forwardEarly(s, session, sock, () => {});
    }
    const opts = { host: '127.0.0.1', port: s.connect, allowHalfOpen: true, noDelay: true };
    const outbound = s.tlsOut ? tls.connect({ ...opts, ca: cert }) : net.connect(opts);
    outbound.setNoDelay(true);
    join(sock, outbound);
  };
  const opts = { allowHalfOpen: true, ...(s.h2Out ? { highWaterMark: DATA_HIGH_WATER_MARK_BYTES } : {}) };
  const server = s.tlsIn ? tls.createServer({ ...opts, key, cert }, handler) : net.createServer(opts, handler);
  server.on('tlsClientError', () => {});
  server.listen(s.accept, '127.0.0.1');
}
process.on('SIGTERM', () => process.exit(0));
