// Load generator worker for the hub-scale benchmark: one process of several,
// each enrolling and then holding a slice of N idle agents.
//
// Every agent here is real as far as the hub can tell: its own P-256 key made
// here, a one-time permit from the hub's admin socket, enrolment over
// POST /v1/enrol with a CSR, then an mTLS HTTP/2 session (ALPN h2) with the
// control stream open, `hello` sent and `welcome` received, keepalive PINGs
// as the agent sends them (one sweep timer), and re-dial with full-jitter
// capped backoff when the session drops — the sequence of
// packages/agent/src/session/hub-client.ts. Optionally the reverse session
// (ALPN ztm-rev/1, this side the HTTP/2 server).
//
// Driven by the parent over IPC (child_process.fork): messages { id, cmd, ... }
// answered with { id, ok, ... }. Every loop is bounded; the process exits when
// its parent goes away.
import * as http2 from 'node:http2';
import { dirname, join, resolve } from 'node:path';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const proto = await import(join(root, 'packages/proto/dist/index.js'));
const keys = await import(join(root, 'packages/agent/dist/identity/keys.js'));

const {
  ALPN_REVERSE,
  ALPN_SESSION,
  AdminPaths,
  FrameDecoder,
  HTTP2_SESSION_WINDOW_BYTES,
  Headers,
  KEEPALIVE_INTERVAL_MS,
  PROTOCOL_VERSION,
  Paths,
  RECONNECT_BASE_MS,
  RECONNECT_MAX_MS,
  adminRequest,
  encodeFrame,
  http2SessionOptions,
} = proto;

const DIAL_TIMEOUT_MS = 10_000;
/** Dials in flight per load-generator process. Real agents each have their
 * own CPU; thousands of them sharing one process would time out on this
 * process's CPU, not the hub's. A dial waits for a slot before its timeouts
 * start; backoff and jitter stay per agent. */
const MAX_DIALS_IN_FLIGHT = 32;
let dialsInFlight = 0;
const dialQueue = [];
async function dialSlot() {
  if (dialsInFlight < MAX_DIALS_IN_FLIGHT) {
    dialsInFlight++;
    return;
  }
  await new Promise((r) => dialQueue.push(r));
}
function releaseDialSlot() {
  const next = dialQueue.shift();
  if (next) next();
  else dialsInFlight--;
}
const WELCOME_TIMEOUT_MS = 15_000;

let hubHost = '127.0.0.1';
let hubPort = 0;
let caPem = '';
/** @type {Array<{name: string, keyPem: string, certPem?: string}>} */
const identities = [];
/** @type {Map<string, Agent>} */
const agents = new Map();
let stopping = false;
/** Why dials failed, by message (bounded: at most 20 distinct kept). */
const dialErrors = new Map();
function noteError(err) {
  const m = String(err?.code ?? err?.message ?? err).slice(0, 80);
  if (dialErrors.has(m) || dialErrors.size < 20) dialErrors.set(m, (dialErrors.get(m) ?? 0) + 1);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A dial as the agent of the tree under test makes it: with hub-trust.ts where
 * the tree has it (its certificate alone, the hub checked against the CA after
 * the handshake), else as trees before it did (certificate and CA as the chain,
 * the hub checked by OpenSSL); with the identity's TLS context kept across
 * reconnects where the tree's agents keep it, else a new one per dial. */
let caCert;
function dial(alpn, id) {
  // Trees with HubDialContext keep each identity's TLS context across its
  // reconnects, as their agents do.
  if (id && proto.HubDialContext) id.dialContext ??= new proto.HubDialContext();
  const o = proto.hubTlsOptions
    ? proto.hubTlsOptions({ alpn, cert: id?.certPem, key: id?.keyPem, host: hubHost, context: id?.dialContext?.for({ cert: id.certPem, key: id.keyPem }) })
    : { ca: [caPem], minVersion: 'TLSv1.3', ALPNProtocols: [alpn], ...(id && { cert: proto.certChainPem(id.certPem, caPem), key: id.keyPem }) };
  if (proto.hubTlsOptions && caCert?.pem !== caPem) caCert = { pem: caPem, certs: proto.parseCaBundle(caPem) };
  const ca = proto.hubTlsOptions && caCert.certs;
  return new Promise((resolvePromise, reject) => {
    const socket = tls.connect({ host: hubHost, port: hubPort, ...o });
    const timer = setTimeout(() => socket.destroy(new Error('TLS handshake timed out')), DIAL_TIMEOUT_MS);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.setNoDelay(true);
      const untrusted = ca && proto.hubCertificateError(socket, ca, hubHost);
      if (untrusted) {
        socket.destroy();
        reject(untrusted);
      } else if (socket.alpnProtocol !== alpn) {
        socket.destroy();
        reject(new Error(`ALPN ${socket.alpnProtocol}`));
      } else resolvePromise(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function h2request(session, headers, body) {
  return new Promise((resolvePromise, reject) => {
    const req = session.request({ ':method': 'POST', [Headers.version]: String(PROTOCOL_VERSION), 'content-type': 'application/json', ...headers });
    const chunks = [];
    let status = 0;
    const timer = setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), 30_000);
    req.on('response', (h) => {
      status = Number(h[':status']);
    });
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString();
      if (status !== 200) reject(new Error(`enrol answered ${status}: ${text.slice(0, 200)}`));
      else resolvePromise(JSON.parse(text));
    });
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(JSON.stringify(body));
  });
}

/** Keys, permits and enrolment for `names`, `concurrency` in flight on each
 * anonymous session; a fresh session every `perSession` enrolments (the hub
 * limits an enrolling session's life). */
async function enrolAll(names, adminSocket, concurrency = 6, perSession = 150) {
  const started = Date.now();
  let errors = 0;
  let lastError = '';
  const t = { keys: 0, permits: 0, enrol: 0 };
  for (let i = 0; i < names.length && !stopping; i += perSession) {
    const batch = names.slice(i, i + perSession);
    // Keys and CSRs first: one P-256 key per endpoint, never shared.
    let t0 = Date.now();
    const made = [];
    for (const name of batch) {
      const keyPem = await keys.generateKeyPem();
      made.push({ name, keyPem, csr: await keys.createCsrPem(keyPem, name) });
    }
    t.keys += Date.now() - t0;
    t0 = Date.now();
    const permits = [];
    for (let k = 0; k < made.length; k += concurrency) {
      const part = made.slice(k, k + concurrency);
      permits.push(
        ...(await Promise.all(
          part.map((m) => adminRequest({ socketPath: adminSocket, method: 'POST', path: AdminPaths.permits, body: { name: m.name, ttl: '2h' } })),
        )),
      );
    }
    t.permits += Date.now() - t0;
    t0 = Date.now();
    const socket = await dial(ALPN_SESSION);
    const session = http2.connect(`https://${hubHost}:${hubPort}`, { createConnection: () => socket, ...http2SessionOptions });
    session.on('error', () => {});
    try {
      for (let k = 0; k < made.length; k += concurrency) {
        const part = made.slice(k, k + concurrency);
        await Promise.all(
          part.map(async (m, j) => {
            try {
              const out = await h2request(session, { ':path': Paths.enrol }, { permit: permits[k + j], csr: m.csr });
              caPem = out.ca;
              identities.push({ name: m.name, keyPem: m.keyPem, certPem: out.certificate });
            } catch (err) {
              errors++;
              lastError = err.message;
            }
          }),
        );
      }
    } finally {
      session.destroy();
    }
    t.enrol += Date.now() - t0;
  }
  return { enrolled: identities.length, errors, lastError, ms: Date.now() - started, split: t };
}

class Agent {
  constructor(id) {
    this.id = id;
    this.session = undefined;
    this.control = undefined;
    this.reverse = undefined;
    this.online = false;
    this.attempt = 0;
    this.timer = undefined;
    this.onlineAt = 0;
    this.lastAckAt = 0;
    this.lastPingAt = 0;
    this.pingOutstanding = false;
    this.reversePing = undefined;
    this.closed = false;
    this.connecting = false;
    this.failures = 0;
  }

  async connect() {
    if (this.connecting || this.closed || this.online) return;
    this.connecting = true;
    await dialSlot();
    try {
      const socket = await dial(ALPN_SESSION, this.id);
      await new Promise((resolvePromise, reject) => {
        const session = http2.connect(`https://${hubHost}:${hubPort}`, { createConnection: () => socket, ...http2SessionOptions });
        session.on('connect', () => session.setLocalWindowSize(HTTP2_SESSION_WINDOW_BYTES));
        session.on('ping', () => {
          this.lastAckAt = Date.now();
        });
        const control = session.request({ ':method': 'POST', ':path': Paths.control, [Headers.version]: String(PROTOCOL_VERSION) }, { endStream: false });
        let settled = false;
        const settle = (err) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (err) {
            session.destroy();
            reject(err);
          } else resolvePromise();
        };
        const timer = setTimeout(() => settle(new Error('no welcome in time')), WELCOME_TIMEOUT_MS);
        session.on('error', (err) => settle(err));
        session.on('close', () => {
          settle(new Error('hub closed the session'));
          if (this.session === session) this.dropped();
        });
        control.on('error', () => {});
        control.on('response', (h) => {
          if (Number(h[':status']) !== 200) settle(new Error(`control answered ${h[':status']}`));
        });
        const decoder = new FrameDecoder();
        control.on('data', (chunk) => {
          for (const f of decoder.push(chunk)) {
            if (f.type === 'welcome') {
              this.session = session;
              this.control = control;
              settle(null);
            } else if (f.type === 'error' || f.type === 'revoked') settle(new Error(`hub says ${f.type}: ${f.message ?? f.reason}`));
          }
        });
        control.write(encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, agentVersion: 'ztm-bench-loadgen', labels: {} }));
      });
      this.online = true;
      this.attempt = 0;
      this.onlineAt = Date.now();
      this.lastAckAt = this.onlineAt;
    } catch (err) {
      this.failures++;
      noteError(err);
      this.schedule(err?.code === 'ECONNREFUSED' || err?.cause?.code === 'ECONNREFUSED');
    } finally {
      releaseDialSlot();
      this.connecting = false;
    }
  }

  dropped() {
    this.online = false;
    this.session = undefined;
    this.control = undefined;
    this.reverse?.destroy();
    this.reverse = undefined;
    this.schedule();
  }

  /** Full jitter, capped: as the agent does (no thundering herd). */
  schedule(refused = false) {
    if (this.closed || stopping) return;
    // As the agent: refused dials (hub not listening) capped at RECONNECT_REFUSED_MAX_MS.
    const max = refused ? Math.min(RECONNECT_MAX_MS, proto.RECONNECT_REFUSED_MAX_MS ?? RECONNECT_MAX_MS) : RECONNECT_MAX_MS;
    const ceiling = Math.min(max, RECONNECT_BASE_MS * 2 ** Math.min(this.attempt, 20));
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), Math.round(Math.random() * ceiling));
  }

  async openReverse() {
    if (!this.online || this.reverse) return;
    const socket = await dial(ALPN_REVERSE, this.id);
    const rev = http2.performServerHandshake(socket, http2SessionOptions);
    rev.setLocalWindowSize(HTTP2_SESSION_WINDOW_BYTES);
    rev.on('error', () => {});
    rev.on('stream', (stream) => {
      stream.on('error', () => {});
      stream.respond({ ':status': 200 });
      stream.end();
    });
    rev.on('close', () => {
      if (this.reverse === rev) this.reverse = undefined;
    });
    this.reverse = rev;
    this.reversePing = new proto.Heartbeat(Date.now());
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.session?.destroy();
    this.reverse?.destroy();
  }
}

/** One sweep timer for keepalive PINGs, as the agent sends them: every
 * interval (proto limits.ts). */
const sweep = setInterval(
  () => {
    const now = Date.now();
    for (const a of agents.values()) {
      // The reverse session too, answers not waited for (at most 3 out).
      if (a.reverse && !a.reverse.destroyed) a.reversePing.beat(a.reverse, now, KEEPALIVE_INTERVAL_MS);
      if (!a.online || a.pingOutstanding || now - a.lastPingAt < KEEPALIVE_INTERVAL_MS) continue;
      a.pingOutstanding = true;
      a.lastPingAt = now;
      try {
        a.session.ping((err) => {
          a.pingOutstanding = false;
          if (!err) a.lastAckAt = Date.now();
        });
      } catch {
        a.pingOutstanding = false;
      }
    }
  },
  Math.min(1000, KEEPALIVE_INTERVAL_MS / 2),
);

function counts() {
  let online = 0;
  let reverse = 0;
  for (const a of agents.values()) {
    if (a.online) online++;
    if (a.reverse) reverse++;
  }
  return { online, reverse, held: agents.size };
}

/** Bring `count` agents online with at most `concurrency` dials in flight. */
async function hold(count, concurrency, timeoutMs) {
  const started = Date.now();
  const want = identities.slice(0, count);
  let next = 0;
  const workers = Array.from({ length: Math.max(1, concurrency) }, async () => {
    while (next < want.length && !stopping && Date.now() - started < timeoutMs) {
      const id = want[next++];
      if (agents.has(id.name)) continue;
      const a = new Agent(id);
      agents.set(id.name, a);
      await a.connect();
    }
  });
  await Promise.all(workers);
  // Failed dials retry on their own backoff; wait for them, bounded.
  while (counts().online < want.length && Date.now() - started < timeoutMs) await sleep(100);
  return { ...counts(), ms: Date.now() - started };
}

/** After a hub restart: wait until every held agent is online again; the time
 * each came back, relative to `since`. */
async function waitAll(since, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (counts().online < agents.size && Date.now() < deadline) await sleep(100);
  const back = [...agents.values()].filter((a) => a.online && a.onlineAt >= since).map((a) => a.onlineAt - since);
  let failures = 0;
  for (const a of agents.values()) failures += a.failures;
  return { ...counts(), back, failures, errors: Object.fromEntries(dialErrors) };
}

async function reverse(count, concurrency) {
  const list = [...agents.values()].filter((a) => a.online).slice(0, count);
  let next = 0;
  let errors = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < list.length && !stopping) {
        const a = list[next++];
        await a.openReverse().catch(() => errors++);
      }
    }),
  );
  return { ...counts(), errors };
}

const handlers = {
  async init(m) {
    hubHost = m.host;
    hubPort = m.port;
    caPem = m.ca;
    return {};
  },
  enrol: (m) => enrolAll(m.names, m.adminSocket, m.concurrency, m.perSession),
  hold: (m) => hold(m.count, m.concurrency ?? 16, m.timeoutMs ?? 120_000),
  reverse: (m) => reverse(m.count, m.concurrency ?? 8),
  closeReverse: async () => {
    for (const a of agents.values()) a.reverse?.destroy();
    return counts();
  },
  counts: async () => counts(),
  resetFailures: async () => {
    for (const a of agents.values()) a.failures = 0;
    dialErrors.clear();
    return counts();
  },
  waitAll: (m) => waitAll(m.since, m.timeoutMs ?? 120_000),
  async stop() {
    stopping = true;
    clearInterval(sweep);
    for (const a of agents.values()) a.close();
    setTimeout(() => process.exit(0), 200);
    return {};
  },
};

process.on('message', async (m) => {
  try {
    const out = await handlers[m.cmd](m);
    process.send?.({ id: m.id, ok: true, ...out });
  } catch (err) {
    process.send?.({ id: m.id, ok: false, error: err?.stack ?? String(err) });
  }
});
// The parent is gone (crash, Ctrl-C): leave with it.
process.on('disconnect', () => process.exit(0));
process.send?.({ ready: true });
