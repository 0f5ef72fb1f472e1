// The workloads, the same through every path: iperf3 throughput (with the CPU
// each process of the path spent per GB), 64-byte round trips, connection
// rate, and a push into a slow reader while the path's memory is watched.
import { runCmd, sampleTree, sleep } from './procs.mjs';

/** CPU seconds of each role's process tree, now. */
export function cpuOf(roles) {
  const out = {};
  for (const [role, pid] of Object.entries(roles)) out[role] = sampleTree(pid).cpu;
  return out;
}

/** One iperf3 run through `port`: Gbit/s received, bytes, and the CPU seconds
 * each role spent during it. */
export async function iperf(port, roles, { streams = 1, reverse = false, seconds = 4 } = {}) {
  const args = ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-P', String(streams), '-J', '--connect-timeout', '5000'];
  if (reverse) args.push('-R');
  const before = cpuOf(roles);
  const text = await runCmd('iperf3', args, { timeoutMs: (seconds + 20) * 1000 });
  const after = cpuOf(roles);
  const j = JSON.parse(text);
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  const r = j.end.sum_received;
  const cpu = {};
  for (const role of Object.keys(roles)) cpu[role] = after[role] - before[role];
  return { gbps: r.bits_per_second / 1e9, bytes: r.bytes, cpu };
}

export async function latency(rr, port, { count = 2000, size = 64, warmup = 200 } = {}) {
  const j = JSON.parse(await runCmd(rr, ['lat', String(port), String(count), String(size), String(warmup)], { timeoutMs: 90_000 }));
  if (j.error) throw new Error(j.error);
  return j;
}

export async function connRate(rr, port, { parallel = 16, max = 20_000, seconds = 2 } = {}) {
  const j = JSON.parse(await runCmd(rr, ['conn', String(port), String(parallel), String(max), String(seconds)], { timeoutMs: (seconds + 30) * 1000 }));
  return j;
}

/** Push as fast as the path accepts into the slow sink for `seconds` on
 * `connections` connections at once, sampling each role's RSS every 100 ms.
 * Growth = peak − before (MiB). */
export async function pushMemory(rr, port, roles, { seconds = 5, connections = 1 } = {}) {
  const before = {};
  const peak = {};
  for (const [role, pid] of Object.entries(roles)) {
    before[role] = sampleTree(pid).rss;
    peak[role] = before[role];
  }
  let done = false;
  const sampler = (async () => {
    while (!done) {
      for (const [role, pid] of Object.entries(roles)) peak[role] = Math.max(peak[role], sampleTree(pid).rss);
      await sleep(100);
    }
  })();
  let out;
  try {
    out = JSON.parse(
      await runCmd(rr, ['push', String(port), String(seconds), String(1024 * 1024 * 1024), String(connections)], { timeoutMs: (seconds + 30) * 1000 }),
    );
  } finally {
    // Keep sampling a little after the push: buffers drain or grow after it.
    await sleep(500);
    done = true;
    await sampler;
  }
  const growth = {};
  for (const role of Object.keys(roles)) growth[role] = (peak[role] - before[role]) / 1024;
  return { acceptedMiB: (out.bytes ?? 0) / 1048576, end: out.end ?? out.error, growthMiB: growth };
}
