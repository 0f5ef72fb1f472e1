// What the data path's own code costs, without the rest of the machine: the
// entrance, the relay's splice and the exit of one tunnel in ONE process over
// loopback, h2c (no TLS: that cost is OpenSSL's and the same for any tree),
// with the splice of the tree at ROOT. Started by `scripts/bench/micro.mjs`,
// once per tree and workload, alternating trees: a change to splice.ts shows
// here within a percent or two, where the three-process bench moves by five
// to ten from one repeat to the next.
//
//   node splice-cost.mjs ROOT conns N     # N connections, one at a time: open, 64 B there and back, close
//   node splice-cost.mjs ROOT bulk MIB    # MIB pushed through one connection into a sink
//
// Prints JSON: conns → { cpuUsPerConn, wallUsPerConn }; bulk → { cpuSecPerGB, gbps }.
import * as http2 from 'node:http2';
import * as net from 'node:net';

const [root, workload, nArg] = process.argv.slice(2);
const { splice, http2SessionOptions } = await import(`${root}/packages/proto/dist/index.js`);
const H2_CANCEL = http2.constants.NGHTTP2_CANCEL;

const listen = (server) =>
  new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(server.address().port));
  });
const socketSide = (sock) => ({ stream: sock, reset: () => sock.resetAndDestroy(), release: () => sock.destroy() });
const streamSide = (st) => ({ stream: st, reset: () => st.close(H2_CANCEL) });

// The target: echoes (conns) or reads and drops (bulk).
const targetPort = await listen(
  net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    if (workload === 'conns') s.pipe(s);
    else s.on('data', () => {}).on('end', () => s.end());
  }),
);
// The exit: each stream of its session is a connection to the target.
const exit = http2.createServer(http2SessionOptions);
exit.on('stream', (st) => {
  st.on('error', () => {});
  const sock = net.connect({ port: targetPort, host: '127.0.0.1', allowHalfOpen: true, noDelay: true }, () => {
    st.respond({ ':status': 200 });
    splice(streamSide(st), socketSide(sock), () => {}, { batchWrites: true });
  });
  sock.on('error', () => {});
});
const session = http2.connect(`http://127.0.0.1:${await listen(exit)}`, http2SessionOptions);
// The entrance: each accepted connection is a stream of that session.
const entrancePort = await listen(
  net.createServer({ allowHalfOpen: true, noDelay: true }, (sock) => {
    sock.on('error', () => {});
    const st = session.request({ ':method': 'POST', ':path': '/' }, { endStream: false });
    st.on('error', () => {});
    st.once('response', () => splice(socketSide(sock), streamSide(st), () => {}, { batchWrites: true }));
  }),
);

function roundTrip() {
  return new Promise((resolve, reject) => {
    const c = net.connect(entrancePort, '127.0.0.1', () => c.write(Buffer.alloc(64, 1)));
    let got = 0;
    c.on('data', (d) => {
      got += d.length;
      if (got >= 64) c.end();
    });
    c.on('error', reject);
    c.on('close', resolve);
  });
}

function push(bytes) {
  return new Promise((resolve, reject) => {
    const chunk = Buffer.alloc(256 * 1024, 7);
    let left = bytes;
    const c = net.connect(entrancePort, '127.0.0.1', () => {
      const more = () => {
        while (left > 0) {
          left -= chunk.length;
          if (!c.write(chunk)) return c.once('drain', more);
        }
        c.end();
      };
      more();
    });
    c.on('data', () => {});
    c.on('error', reject);
    c.on('close', resolve);
  });
}

const measure = async (fn) => {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await fn();
  const cpu = process.cpuUsage(cpu0);
  return { cpuUs: cpu.user + cpu.system, wallMs: performance.now() - t0 };
};

let out;
if (workload === 'conns') {
  const n = Number(nArg ?? 3000);
  for (let i = 0; i < Math.min(500, n); i++) await roundTrip();
  const m = await measure(async () => {
    for (let i = 0; i < n; i++) await roundTrip();
  });
  out = { cpuUsPerConn: +(m.cpuUs / n).toFixed(1), wallUsPerConn: +((m.wallMs * 1000) / n).toFixed(1) };
} else if (workload === 'bulk') {
  const bytes = Number(nArg ?? 256) * 1024 * 1024;
  await push(Math.min(bytes, 64 * 1024 * 1024));
  const m = await measure(() => push(bytes));
  out = { cpuSecPerGB: +(m.cpuUs / 1e6 / (bytes / 1e9)).toFixed(3), gbps: +((bytes * 8) / (m.wallMs / 1000) / 1e9).toFixed(2) };
} else {
  throw new Error(`unknown workload ${workload} (conns or bulk)`);
}
process.stdout.write(`${JSON.stringify(out)}\n`);
process.exit(0);
