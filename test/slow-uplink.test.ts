/**
 * A busy, slow uplink keeps its session: data from an agent is a sign of life.
 *
 * Behind a slow link, seconds of data wait in socket buffers ahead of a
 * keepalive PING and its answer. So the hub counts bytes arriving from the
 * agent as proof of life, as well as PING answers, and the agents count bytes
 * from the hub the same way; and since the hub's answers to an uploading
 * agent queue behind that agent's data, the hub PINGs a busy agent every
 * interval, and the agent PINGs its reverse session (the one the hub sends it
 * data on) every interval, so each side hears from the other through the
 * direction the data leaves free. A silent agent still times out
 * (hub-restart.test.ts, faults-network.test.ts).
 *
 * The mesh runs on one namespace's loopback shaped to 16 Mbit/s (tc tbf; every
 * leg shares it), keepalive 1 s / timeout 4 s, and four connections upload at
 * once: the entry's queue to the hub holds several seconds of data. Without
 * the byte counting the entry went offline and every upload was reset; without
 * the hub's PINGs to a busy agent and the agent's on its reverse session, one
 * run in about eight lost the entry's session or the exit's reverse session.
 */
import t from 'tap';
import { bulkTunnel, startIsland, tbfSkipReason } from './helpers/island.js';

const MiB = 1024 * 1024;
const KEEPALIVE = ['--keepalive-interval', '1s', '--keepalive-timeout', '4s'];

t.test('a busy uplink slower than its queue keeps its session', { skip: tbfSkipReason() }, async (t) => {
  const island = await startIsland(t, 'slow', { rate: '16mbit', hubArgs: KEEPALIVE });
  const [entry, exit] = await Promise.all([island.startAgent('entry', KEEPALIVE), island.startAgent('exit', KEEPALIVE)]);
  const peers = await bulkTunnel(t, island, entry, exit, 'up');

  const size = 3 * MiB;
  const ids = ['up-1', 'up-2', 'up-3', 'up-4'];
  const t0 = Date.now();
  const outcomes = await Promise.all(ids.map((id) => peers.transfer(id, size, 0, 90_000)));
  const ms = Date.now() - t0;
  t.comment(`${(ids.length * size) / MiB} MiB up in ${ms} ms (${((ids.length * size) / 1024 / (ms / 1000)).toFixed(0)} KiB/s end to end)`);
  t.ok(ms > 8_000, 'the link really is slow: the upload took more than twice the keepalive timeout');
  for (const [i, id] of ids.entries()) await peers.assertWhole(t, id, size, 0, outcomes[i] as (typeof outcomes)[number]);
  t.equal(entry.count('offline'), 0, 'the uploading agent stayed online');
  const closed = island.hub.logs().filter((l) => l.msg === 'session closed');
  t.same(
    closed.map((l) => `${l.endpoint}: ${l.reason}`),
    [],
    'the hub closed no session (no keepalive timeout)',
  );
  const dropped = island.hub.logs().filter((l) => /stopped answering|dropping/.test(String(l.msg)));
  t.same(
    dropped.map((l) => `${l.endpoint}: ${l.msg}`),
    [],
    'the hub dropped no reverse session',
  );
  // Whatever failed, say what each process saw: a reset here has been rare
  // (once in many CI runs) and its cause is in these lines.
  if (!t.passing()) {
    const warnings = (name: string, logs: Record<string, unknown>[]) =>
      logs.filter((l) => Number(l.level) >= 40 || /stream closed|relay|reverse session/.test(String(l.msg))).map((l) => `${name}: ${JSON.stringify(l)}`);
    const lines = [...warnings('hub', island.hub.logs()), ...warnings('entry', entry.daemon.logs()), ...warnings('exit', exit.daemon.logs())];
    t.comment(`warnings, errors and streams closed (${lines.length}):\n${lines.slice(-60).join('\n')}`);
  }
});
