/**
 * A busy, slow uplink keeps its session: data from an agent is a sign of life.
 *
 * An agent completes its writes at once (eager-write-socket.ts), so behind a
 * slow link up to a flow-control window's worth of data can be queued ahead of
 * its answer to the hub's keepalive PING. The hub counts bytes arriving from
 * the agent as proof of life, as well as PING answers; a silent agent still
 * times out (hub-restart.test.ts, faults-network.test.ts).
 *
 * The agents count bytes from the hub the same way (their own PING queues
 * behind their data too).
 *
 * The mesh runs on one namespace's loopback shaped to 16 Mbit/s (tc tbf; every
 * leg shares it), keepalive 1 s / timeout 4 s, and four connections upload at
 * once: the entry's queue to the hub holds several seconds of data. Without
 * these rules the entry went offline and every upload was reset.
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
});
