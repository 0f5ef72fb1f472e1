/**
 * Bulk transfers through a tunnel between two real programs, each possibly
 * inside a network namespace: a client on the entry's side, a server on the
 * exit's. Every byte both ways is hashed (SHA-256) against the sender's
 * pseudo-random stream, and each side reports how its connection ended, so a
 * test can tell "whole", "failed visibly" and "silently truncated" apart.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Test } from 'tap';
import { Daemon, testDir, waitFor } from './index.js';
import { sha256Of } from './servers.js';

type T = Parameters<typeof testDir>[0];

/**
 * One program, two roles, run inside a namespace:
 *  serve                                  listen on 127.0.0.1:0; for each connection read a JSON
 *                                         header line {id, down}, send `down` bytes of stream
 *                                         "<id>-down" while hashing everything after the header;
 *                                         report {msg: received} when the connection closes.
 *  send PORT ID UP DOWN TIMEOUT_MS        connect, send the header and UP bytes of "<id>-up",
 *                                         hash what comes back; report {msg: result} on close.
 * `end` is "end" only for a clean end of the peer's data with no error on the socket.
 * The byte streams are those of pseudoRandom() in helpers/servers.ts (AES-256-CTR).
 */
export const PEER_JS = String.raw`'use strict';
const net = require('node:net');
const { createCipheriv, createHash } = require('node:crypto');
const log = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const CHUNK = 256 * 1024;
function* stream(seed, total) {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const zeros = Buffer.alloc(CHUNK);
  for (let n = 0; n < total; n += CHUNK) yield cipher.update(zeros.subarray(0, Math.min(CHUNK, total - n)));
}
async function send(s, seed, total) {
  for (const b of stream(seed, total)) {
    if (s.destroyed) return false;
    if (!s.write(b)) {
      await new Promise((resolve) => {
        const done = () => { s.off('drain', done); s.off('close', done); resolve(); };
        s.on('drain', done);
        s.on('close', done);
      });
    }
  }
  if (s.destroyed) return false;
  s.end();
  return true;
}
const [mode, ...args] = process.argv.slice(2);
if (mode === 'serve') {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    let head = Buffer.alloc(0);
    let spec;
    let bytes = 0;
    let ended = false;
    let error;
    const h = createHash('sha256');
    s.on('data', (c) => {
      if (!spec) {
        head = Buffer.concat([head, c]);
        const nl = head.indexOf(10);
        if (nl < 0) {
          if (head.length > 4096) s.destroy();
          return;
        }
        spec = JSON.parse(head.subarray(0, nl).toString());
        c = head.subarray(nl + 1);
        void send(s, spec.id + '-down', spec.down);
      }
      bytes += c.length;
      h.update(c);
    });
    s.on('end', () => { ended = true; });
    s.on('error', (e) => { error = error || e.code || e.message; });
    s.on('close', () => log({ msg: 'received', id: spec ? spec.id : null, bytes, sha256: h.digest('hex'), end: ended && !error ? 'end' : 'error', error }));
  });
  server.listen(0, '127.0.0.1', () => log({ msg: 'listening', port: server.address().port }));
} else if (mode === 'send') {
  const [port, id, up, down, timeoutMs] = args;
  const s = net.connect({ host: '127.0.0.1', port: Number(port), allowHalfOpen: true });
  const h = createHash('sha256');
  let bytes = 0;
  let mark = 1 << 20;
  let ended = false;
  let sentAll = false;
  let error;
  const timer = setTimeout(() => { error = 'timeout'; s.destroy(); }, Number(timeoutMs));
  s.on('connect', () => {
    s.write(JSON.stringify({ id, down: Number(down) }) + '\n');
    send(s, id + '-up', Number(up)).then((ok) => { sentAll = ok; });
  });
  s.on('data', (c) => {
    bytes += c.length;
    h.update(c);
    if (bytes >= mark) {
      log({ msg: 'progress', bytes });
      mark += 1 << 20;
    }
  });
  s.on('end', () => { ended = true; });
  s.on('error', (e) => { error = error || e.code || e.message; });
  s.on('close', () => {
    clearTimeout(timer);
    log({ msg: 'result', id, bytes, sha256: h.digest('hex'), end: ended && !error ? 'end' : 'error', error, sentAll });
  });
} else {
  console.error('usage: serve | send PORT ID UP DOWN TIMEOUT_MS');
  process.exit(2);
}
`;

export interface PeerReport {
  msg: string;
  id: string | null;
  bytes: number;
  sha256: string;
  end: 'end' | 'error';
  error?: string;
  sentAll?: boolean;
}

export interface TransferOutcome {
  /** The client's report. */
  result: PeerReport;
  /** The server's report, when it made one. */
  received?: PeerReport;
}

export interface BulkPeers {
  /** Where the tunnel's outbound end must point (the server's loopback port in its namespace). */
  targetPort: number;
  server: Daemon;
  /** Start a client that sends `up` bytes and asks for `down`; `done` resolves with both reports. */
  startTransfer(id: string, up: number, down: number, timeoutMs: number): { client: Daemon; done: Promise<TransferOutcome> };
  transfer(id: string, up: number, down: number, timeoutMs?: number): Promise<TransferOutcome>;
  /** Every byte both ways, the right ones, clean ends on both sides. */
  whole(id: string, up: number, down: number, r: TransferOutcome): boolean;
  /** Assert whole(), one assertion per property; `onBroken` adds diagnostics when it is not. */
  assertWhole(t: Test, id: string, up: number, down: number, r: TransferOutcome, onBroken?: () => Promise<string>): Promise<void>;
}

/**
 * The server runs under `serverPrefix` (e.g. `ip netns exec NS`); clients run
 * under `clientPrefix` and connect to 127.0.0.1:`listenPort` (the tunnel's
 * inbound end in their namespace).
 */
export async function startBulkPeers(t: T, o: { serverPrefix: readonly string[]; clientPrefix: readonly string[]; listenPort: number }): Promise<BulkPeers> {
  const peer = join(testDir(t), 'peer.cjs');
  writeFileSync(peer, PEER_JS);
  const server = new Daemon(peer, ['serve'], undefined, o.serverPrefix);
  t.teardown(() => server.stop('SIGKILL'));
  const targetPort = Number((await server.waitLog((l) => l.msg === 'listening')).port);

  const startTransfer = (id: string, up: number, down: number, timeoutMs: number) => {
    const client = new Daemon(peer, ['send', String(o.listenPort), id, String(up), String(down), String(timeoutMs)], undefined, o.clientPrefix);
    t.teardown(() => client.stop('SIGKILL'));
    const done = (async (): Promise<TransferOutcome> => {
      await client.exited;
      const result = client.logs().find((l) => l.msg === 'result') as PeerReport | undefined;
      if (!result) throw new Error(`transfer ${id}: the client reported nothing (${client.stderr.trim()})`);
      // The server reports when its side closes: just after the client's, or,
      // over a slow link, once the bytes queued on the way have arrived.
      const received = await waitFor(() => server.logs().find((l) => l.msg === 'received' && l.id === id), {
        timeoutMs: result.end === 'end' ? Math.max(10_000, timeoutMs) : 3_000,
        what: `the server's report of ${id}`,
      }).catch(() => undefined);
      return { result, received: received as PeerReport | undefined };
    })();
    return { client, done };
  };
  const whole = (id: string, up: number, down: number, r: TransferOutcome) =>
    r.result.end === 'end' &&
    r.result.bytes === down &&
    r.result.sha256 === sha256Of(`${id}-down`, down) &&
    r.received?.end === 'end' &&
    r.received.bytes === up &&
    r.received.sha256 === sha256Of(`${id}-up`, up);
  return {
    targetPort,
    server,
    startTransfer,
    transfer: (id, up, down, timeoutMs = 60_000) => startTransfer(id, up, down, timeoutMs).done,
    whole,
    async assertWhole(t, id, up, down, r, onBroken) {
      if (!whole(id, up, down, r)) {
        t.comment(`${id}: client ${JSON.stringify(r.result)}; server ${JSON.stringify(r.received ?? null)}`);
        if (onBroken) t.comment(await onBroken());
      }
      t.equal(r.result.end, 'end', `${id}: the client read a clean end${r.result.error ? ` (error ${r.result.error})` : ''}`);
      t.equal(r.result.bytes, down, `${id}: the client received every byte`);
      t.equal(r.result.sha256, sha256Of(`${id}-down`, down), `${id}: exit → entry bytes intact (SHA-256)`);
      t.equal(r.received?.end, 'end', `${id}: the server read a clean end${r.received?.error ? ` (error ${r.received.error})` : ''}`);
      t.equal(r.received?.bytes, up, `${id}: the server received every byte`);
      t.equal(r.received?.sha256, sha256Of(`${id}-up`, up), `${id}: entry → exit bytes intact (SHA-256)`);
    },
  };
}
