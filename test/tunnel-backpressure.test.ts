/**
 * Slow reader: 1 GiB pushed at a reader that reads slowly. Every process's
 * memory stays bounded; then the reader speeds up and every byte arrives.
 * Many connections into a reader that stopped: the agents' and the hub's
 * backed-up directions share one buffer budget, the session they arrive on
 * asks for narrower stream windows, and both are given back. Hundreds at once
 * into a reader that stopped: the hub holds a share of a budget per
 * connection, not a stream window each.
 */
import type * as net from 'node:net';
import t from 'tap';
import { freePort, waitFor } from './helpers/index.js';
import { openTunnel, startMesh } from './helpers/tunnels.js';
import { connect, pseudoRandom, rssBytes, tcpServer, writeAll } from './helpers/servers.js';

t.test('1 GiB into a slow reader keeps memory bounded', async (t) => {
  const m = await startMesh(t, ['entry', 'exit']);
  const total = 1024 * 1024 * 1024;
  let received = 0;
  let slow = true;
  const reader = await tcpServer(t, (s) => {
    // Slow phase: 64 KiB every 20 ms (≈ 3 MiB/s); then as fast as it can.
    s.pause();
    const tick = setInterval(() => {
      if (!slow) {
        clearInterval(tick);
        s.on('data', (c: Buffer) => {
          received += c.length;
        });
        s.resume();
        return;
      }
      let n = 0;
      while (n < 64 * 1024) {
        const chunk = s.read() as Buffer | null;
        if (!chunk) break;
        received += chunk.length;
        n += chunk.length;
      }
    }, 20);
    s.on('end', () => s.end());
  });
  const port = await freePort();
  await openTunnel(m, 'entry', 'exit', 'tcp/slow', reader.port, port);
  const pids = { hub: m.hub.daemon.child.pid!, entry: m.agents.entry!.daemon.child.pid!, exit: m.agents.exit!.daemon.child.pid! };
  const base = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, rssBytes(pid)]));
  const peak: Record<string, number> = { ...base };
  const sampler = setInterval(() => {
    for (const [k, pid] of Object.entries(pids)) peak[k] = Math.max(peak[k] ?? 0, rssBytes(pid));
  }, 100);
  t.teardown(() => clearInterval(sampler));

  const c = await connect(port);
  const done = writeAll(c, pseudoRandom('slow', total, 1024 * 1024));
  await new Promise((r) => setTimeout(r, 5000));
  t.ok(received < 256 * 1024 * 1024, `slow phase: the writer was held back (${(received / 2 ** 20).toFixed(0)} MiB read in 5 s)`);
  for (const k of Object.keys(pids)) {
    const growth = (peak[k] as number) - (base[k] as number);
    t.ok(growth < 100 * 1024 * 1024, `${k} grew ${(growth / 2 ** 20).toFixed(1)} MiB during the slow phase (< 100 MiB)`);
  }
  slow = false;
  await done;
  await new Promise<void>((resolve) => c.once('close', () => resolve()).resume());
  t.equal(received, total, 'every byte arrived once the reader sped up');
  for (const k of Object.keys(pids)) {
    const growth = (peak[k] as number) - (base[k] as number);
    t.ok(growth < 100 * 1024 * 1024, `${k} peak growth ${(growth / 2 ** 20).toFixed(1)} MiB over the whole transfer (< 100 MiB)`);
  }
});

/** A mesh whose hub serves metrics, a reader that accepts and never reads
 * (its sockets in `stopped`), and a tunnel into it listening on `port`. */
async function stoppedReaderMesh(t: Parameters<typeof startMesh>[0], name: string) {
  const hubMetrics = await freePort();
  const m = await startMesh(t, ['entry', 'exit'], { serveArgs: ['--metrics', `127.0.0.1:${hubMetrics}`] });
  const stopped: net.Socket[] = [];
  const reader = await tcpServer(t, (s) => {
    s.pause();
    stopped.push(s);
  });
  const port = await freePort();
  await openTunnel(m, 'entry', 'exit', name, reader.port, port);
  return { m, hubMetrics, stopped, port };
}

/** `n` clients, one after another, each writing as soon as it is connected
 * until the tunnel stops taking (at most 64 MiB each). */
async function pushingClients(port: number, n: number): Promise<net.Socket[]> {
  const chunk = Buffer.alloc(1024 * 1024, 0x61);
  const clients: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const c = await connect(port);
    c.on('error', () => {});
    clients.push(c);
    let sent = 0;
    const more = () => {
      while (sent < 64 * chunk.length && !c.destroyed) {
        sent += chunk.length;
        if (!c.write(chunk)) return void c.once('drain', more);
      }
    };
    more();
  }
  return clients;
}

/** A gauge's value from a daemon's /metrics (its first series). */
async function gauge(at: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${at}/metrics`)).text();
  const v = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return v ? Number(v[1]) : Number.NaN;
}

t.test('many connections into a stopped reader share the buffer budget, and give it back', async (t) => {
  const { m, hubMetrics, stopped, port } = await stoppedReaderMesh(t, 'tcp/stuck');
  const exitMetrics = await freePort();
  await m.agents.exit!.restart(['--metrics', `127.0.0.1:${exitMetrics}`]);
  t.equal(await gauge(exitMetrics, 'ztm_agent_relay_backlogged_directions'), 0, 'nothing backed up to begin with');
  t.equal(await gauge(exitMetrics, 'ztm_agent_relay_buffer_mark_bytes'), 1024 * 1024, 'the full mark');

  // 20 clients write until the tunnel stops taking (at most 64 MiB each).
  const CLIENTS = 20;
  const clients = await pushingClients(port, CLIENTS);
  // The exit's side to the reader backs up first, one direction per connection.
  const backlogged = await waitFor(
    async () => {
      const n = await gauge(exitMetrics, 'ztm_agent_relay_backlogged_directions');
      return n >= CLIENTS ? n : 0;
    },
    { timeoutMs: 60_000, what: 'every connection backed up at the exit' },
  );
  t.equal(backlogged, CLIENTS, 'the exit counts each backed-up connection once');
  const mark = await gauge(exitMetrics, 'ztm_agent_relay_buffer_mark_bytes');
  t.equal(mark, Math.floor((32 * 1024 * 1024) / (4 * CLIENTS)), `they share the 32 MiB budget: ${(mark / 1024).toFixed(0)} KiB each`);
  t.ok((await gauge(hubMetrics, 'ztm_hub_relay_backlogged_directions')) >= 0, 'the hub exports its count');
  // More than 16 stuck streams on the exit's session with the hub: it asks
  // the hub for a narrower stream window.
  t.equal(await gauge(exitMetrics, 'ztm_agent_relay_narrowed_sessions'), 1, "the exit narrowed its session's stream window");

  for (const c of clients) c.destroy();
  for (const s of stopped) s.destroy();
  await waitFor(async () => (await gauge(exitMetrics, 'ztm_agent_relay_backlogged_directions')) === 0, {
    timeoutMs: 30_000,
    what: 'the exit gave the budget back',
  });
  t.equal(await gauge(exitMetrics, 'ztm_agent_relay_buffer_mark_bytes'), 1024 * 1024, 'the full mark again');
  await waitFor(async () => (await gauge(exitMetrics, 'ztm_agent_relay_narrowed_sessions')) === 0, {
    timeoutMs: 10_000,
    what: 'the exit asked for the full window again',
  });
  await waitFor(async () => (await gauge(hubMetrics, 'ztm_hub_relay_backlogged_directions')) === 0, { timeoutMs: 30_000, what: 'the hub gave its back' });
});

t.test('hundreds of connections at once into a stopped reader: the hub holds a budget, not a window each', async (t) => {
  const { hubMetrics, stopped, port } = await stoppedReaderMesh(t, 'tcp/stuck-many');
  const MiB = 1024 * 1024;
  const before = await gauge(hubMetrics, 'ztm_hub_process_nodejs_external_memory_bytes');
  t.ok(before > 0, 'the hub exports its external memory');

  // Each client writes as soon as it is connected, until the tunnel stops
  // taking (at most 64 MiB each): the first are backing up while the last
  // arrive.
  const CLIENTS = 256;
  const clients = await pushingClients(port, CLIENTS);
  // Until nothing more is taken in.
  let last = -1;
  for (let i = 0; i < 60; i++) {
    await new Promise((r) => setTimeout(r, 500));
    const taken = clients.reduce((n, c) => n + c.bytesWritten - c.writableLength, 0);
    if (taken === last) break;
    last = taken;
  }
  const held = (await gauge(hubMetrics, 'ztm_hub_process_nodejs_external_memory_bytes')) - before;
  t.ok((await gauge(hubMetrics, 'ztm_hub_relay_narrowed_sessions')) >= 1, 'the hub narrowed the stream window of a session with that many open');
  // A stream window (1 MiB) each would be ≈ 300 MiB; a share of the 64 MiB
  // budget of open streams per session, and of the 32 MiB buffer budget.
  t.ok(held < 128 * MiB, `the hub holds ${(held / MiB).toFixed(1)} MiB for ${CLIENTS} stuck connections (${(last / MiB).toFixed(0)} MiB taken in)`);

  for (const c of clients) c.destroy();
  for (const s of stopped) s.destroy();
  await waitFor(async () => (await gauge(hubMetrics, 'ztm_hub_relay_narrowed_sessions')) === 0, {
    timeoutMs: 30_000,
    what: 'the hub asked for the full window again',
  });
});
