/**
 * Slow reader: 1 GiB pushed at a reader that reads slowly. Every process's
 * memory stays bounded; then the reader speeds up and every byte arrives.
 */
import t from 'tap';
import { freePort } from './helpers/index.js';
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
