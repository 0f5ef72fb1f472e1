// One hop of the `node3` bench scenarios: for each service of the config file,
// listen on 127.0.0.1:accept and forward every connection to 127.0.0.1:connect,
// nothing else: `socket.pipe()` both ways (backpressure and half-close by
// Node's streams), TLS on either side when asked (server-authenticated with the
// bench's self-signed certificate, verified by the client). Three of these in a
// row are the floor of any relay of three Node processes: the event-loop turns,
// wake-ups and (with TLS) record work that ztm's path has too, without HTTP/2,
// multiplexing, identity or accounting.
//
//   node node-relay.mjs CONFIG.json
//   CONFIG: { "key": PATH, "cert": PATH, "services": [{ "accept": PORT,
//             "connect": PORT, "tlsIn": BOOL, "tlsOut": BOOL }] }
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const key = readFileSync(cfg.key);
const cert = readFileSync(cfg.cert);

function forward(service, inbound) {
  inbound.setNoDelay(true);
  const opts = { host: '127.0.0.1', port: service.connect, allowHalfOpen: true, noDelay: true };
  const outbound = service.tlsOut ? tls.connect({ ...opts, ca: cert }) : net.connect(opts);
  outbound.setNoDelay(true);
  inbound.pipe(outbound);
  outbound.pipe(inbound);
  // An error on one side resets the other: no clean end after lost data.
  inbound.on('error', () => outbound.destroy());
  outbound.on('error', () => inbound.destroy());
}

for (const s of cfg.services) {
  const handler = (sock) => forward(s, sock);
  const server = s.tlsIn ? tls.createServer({ key, cert, allowHalfOpen: true }, handler) : net.createServer({ allowHalfOpen: true }, handler);
  server.on('tlsClientError', () => {});
  server.listen(s.accept, '127.0.0.1');
}
process.on('SIGTERM', () => process.exit(0));
