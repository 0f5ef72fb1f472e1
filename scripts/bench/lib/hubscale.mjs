// Hub scale: RSS and CPU of one hub holding 1,000 / 5,000 / 10,000 idle
// agents (real enrolments and mTLS HTTP/2 sessions from loadgen-worker.mjs,
// spread over several processes), the extra cost of a reverse session, the
// relayed throughput while they are connected, and the time for all of them
// to come back after the hub is killed and restarted.
import { readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { censusDiff, censusEnv, takeCensus } from './census.mjs';
import { probeEcho, ztm } from './paths.mjs';
import { forkWorker, sampleTree, sleep, stop } from './procs.mjs';
import { iperf } from './workloads.mjs';

const WORKER = join(dirname(fileURLToPath(import.meta.url)), '../loadgen-worker.mjs');
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(s.length * p))] : null;
};
const round = (x, d = 1) => (x == null ? null : Math.round(x * 10 ** d) / 10 ** d);

const statSize = (f) => {
  try {
    return statSync(f).size;
  } catch {
    return 0;
  }
};

function countLines(file, from, needle) {
  try {
    return readFileSync(file, 'utf8').slice(from).split(needle).length - 1;
  } catch {
    return 0;
  }
}

/** Why the hub closed sessions while they came back (its JSON log from
 * `from`): "reason: count, …" — churn means work wasted on handshakes. */
function closeReasons(file, from) {
  const counts = new Map();
  let text = '';
  try {
    text = readFileSync(file, 'utf8').slice(from);
  } catch {}
  for (const line of text.split('\n')) {
    if (!line.includes('"session closed"')) continue;
    const r = /"reason":"([^"]*)"/.exec(line)?.[1] ?? '?';
    counts.set(r, (counts.get(r) ?? 0) + 1);
  }
  return [...counts].map(([r, n]) => `${r}: ${n}`).join(', ') || 'none';
}

/** Sample RSS (KiB) of `pid` a few times over `ms`, median; and CPU % of one
 * core over the same window. */
async function idleWindow(pid, ms) {
  const c0 = sampleTree(pid).cpu;
  const t0 = Date.now();
  const rss = [];
  while (Date.now() - t0 < ms) {
    rss.push(sampleTree(pid).rss);
    await sleep(Math.min(1000, ms / 5));
  }
  const c1 = sampleTree(pid).cpu;
  return { rssKiB: median(rss), cpuPct: ((c1 - c0) / ((Date.now() - t0) / 1000)) * 100 };
}

/** `mesh`: the ztm path of the run (its hub, agents and tunnels), or none to
 * start one from the tree at `root` (default: this one); `worker`: the load
 * generator to run (a baseline tree's own, which speaks its protocol);
 * `census`: a directory — the hub (started here) runs under the allocation
 * census (mcensus.c) and the report says where the bytes per agent added
 * between the last two levels went. */
export async function hubScale({
  mesh: given,
  root,
  worker = WORKER,
  targets,
  levels,
  idleSeconds,
  reverseCount,
  iperfSeconds,
  // The two throughputs through the hub (idle, and with every agent held):
  // longer than the paths' iperf runs, because the first seconds after the
  // ramp are V8 re-tuning the old generation's limit (docs/performance.md).
  hubIperfSeconds = iperfSeconds,
  cleanBase = true,
  idleIperf = true,
  reconnect = true,
  reconnectTimeoutSec = 90,
  census,
  log,
}) {
  const out = {};
  if (census && given) throw new Error('--census needs a hub of its own (--only-hub)');
  const hubEnv = census ? censusEnv(census) : {};
  const mesh = given ?? (await ztm(targets, { tag: root ? 'scale-base' : 'scale', root, hubEnv }));
  const censuses = [];
  const hubPid = () => mesh.hub.pid;
  const max = Math.max(...levels);
  const nWorkers = Math.max(2, Math.min(4, Math.ceil(max / 2500)));
  const workers = [];
  try {
    const ca = readFileSync(join(mesh.hubDir, 'ca.crt'), 'utf8');
    const [host, port] = mesh.hubAddr.split(':');
    for (let i = 0; i < nWorkers; i++) {
      const w = forkWorker(`loadgen-${i}`, worker);
      workers.push(w);
    }
    await Promise.all(workers.map((w) => w.ready));
    await Promise.all(workers.map((w) => w.call({ cmd: 'init', host, port: Number(port), ca })));

    // Enrol every agent the largest level needs: keys, permits (admin socket),
    // CSRs over POST /v1/enrol. Each worker its own slice.
    const names = Array.from({ length: max }, (_, i) => `lg-${String(i).padStart(5, '0')}`);
    const slices = workers.map((_, i) => names.filter((_, k) => k % nWorkers === i));
    log(`hub: enrolling ${max} agents in ${nWorkers} processes`);
    let t0 = Date.now();
    const enrolCpu0 = sampleTree(hubPid()).cpu;
    const enrolled = await Promise.all(
      workers.map((w, i) => w.call({ cmd: 'enrol', names: slices[i], adminSocket: join(mesh.hubDir, 'admin.sock'), concurrency: 6, perSession: 150 })),
    );
    const enrolSec = (Date.now() - t0) / 1000;
    const nEnrolled = enrolled.reduce((n, r) => n + r.enrolled, 0);
    out.enrolPerSec = round(nEnrolled / enrolSec, 0);
    // The hub's own cost of one (its permit over the admin socket, the CSR's
    // check, the certificate, the registry): the rate above also waits on the
    // load generator making each key and CSR on the same two cores.
    out.hubCpuMsPerEnrol = round(((sampleTree(hubPid()).cpu - enrolCpu0) * 1000) / Math.max(1, nEnrolled), 2);
    if (nEnrolled < max) throw new Error(`only ${nEnrolled} of ${max} enrolled: ${enrolled.map((r) => r.lastError).find(Boolean)}`);
    log(
      `hub: enrolled ${nEnrolled} in ${enrolSec.toFixed(1)} s, ${out.hubCpuMsPerEnrol} ms of hub CPU each (per worker ms: ${JSON.stringify(enrolled[0].split)})`,
    );

    // A fresh hub process for the baseline: enrolment and the path
    // measurements before it leave garbage and buffers in the heap.
    // (--quick skips this and takes the hub as the path measurements left it.)
    if (cleanBase) {
      await mesh.restartHub();
      await probeEcho(mesh.ports.echo, 60_000);
    }
    await sleep(cleanBase ? 2000 : 1000);
    const base = await idleWindow(hubPid(), Math.min(5000, idleSeconds * 1000));
    if (idleIperf) out.gbps1Idle = round((await iperf(mesh.ports.iperf, {}, { seconds: hubIperfSeconds })).gbps, 2);
    out.rssMiB_0 = round(base.rssKiB / 1024);
    out.cpuPct_0 = round(base.cpuPct);
    let prev = 0;
    let prevRss = null;
    let prevOnline = 0;
    for (const level of levels) {
      t0 = Date.now();
      const hubCpu0 = sampleTree(hubPid()).cpu;
      const held = await Promise.all(workers.map((w) => w.call({ cmd: 'hold', count: Math.ceil(level / nWorkers), concurrency: 16, timeoutMs: 180_000 })));
      const online = held.reduce((n, r) => n + r.online, 0);
      const sec = (Date.now() - t0) / 1000;
      out[`connectPerSec_${level}`] = round((online - prev) / sec, 0);
      out[`online_${level}`] = online;
      out[`hubCpuMsPerConnect_${level}`] = round(((sampleTree(hubPid()).cpu - hubCpu0) * 1000) / Math.max(1, online - prev), 2);
      log(`hub: ${online} agents online (+${online - prev} in ${sec.toFixed(1)} s)`);
      prev = online;
      await sleep(cleanBase ? 3000 : 1000);
      const w = await idleWindow(hubPid(), idleSeconds * 1000);
      out[`rssMiB_${level}`] = round(w.rssKiB / 1024);
      out[`rssKiBPerAgent_${level}`] = round((w.rssKiB - base.rssKiB) / online);
      // Between two levels: the per-agent cost without the fixed growth of the
      // first thousand (heap, caches).
      if (prevRss !== null) out[`rssKiBPerAgentFrom_${prevOnline}_${level}`] = round((w.rssKiB - prevRss) / Math.max(1, online - prevOnline));
      prevRss = w.rssKiB;
      prevOnline = online;
      out[`cpuPct_${level}`] = round(w.cpuPct);
      if (census) censuses.push({ online, sites: await takeCensus(census, hubPid()) });
      log(
        `hub: ${level}: RSS ${(w.rssKiB / 1024).toFixed(0)} MiB, ${((w.rssKiB - base.rssKiB) / online).toFixed(1)} KiB/agent, idle CPU ${w.cpuPct.toFixed(1)} %`,
      );
    }

    if (censuses.length >= 2) {
      const [a, b] = censuses.slice(-2);
      const d = censusDiff(a.sites, b.sites, b.online - a.online);
      out.censusResidentKiBPerAgent = round(d.residentKiB);
      out.censusAllocatedKiBPerAgent = round(d.allocatedKiB);
      out.census = d.lines;
      log(`hub: malloc census, per agent from ${a.online} to ${b.online}: ${d.residentKiB.toFixed(1)} KiB resident of ${d.allocatedKiB.toFixed(1)} allocated`);
    }

    // Relayed throughput through the same hub while they are all connected.
    out[`gbps1Loaded_${max}`] = round((await iperf(mesh.ports.iperf, {}, { seconds: hubIperfSeconds })).gbps, 2);

    // The reverse session's extra cost: open it on `reverseCount` of them.
    if (reverseCount > 0) {
      const r0 = (await idleWindow(hubPid(), 2000)).rssKiB;
      const rv = await Promise.all(workers.map((w) => w.call({ cmd: 'reverse', count: Math.ceil(reverseCount / nWorkers), concurrency: 8 })));
      const nrev = rv.reduce((n, r) => n + r.reverse, 0);
      await sleep(2000);
      const r1 = (await idleWindow(hubPid(), 3000)).rssKiB;
      out.reverseSessions = nrev;
      out.rssKiBPerReverse = round((r1 - r0) / Math.max(1, nrev));
      out.rssKiBPerAgentWithReverse = round(out[`rssKiBPerAgent_${max}`] + out.rssKiBPerReverse);
      log(`hub: ${nrev} reverse sessions: +${((r1 - r0) / Math.max(1, nrev)).toFixed(1)} KiB each`);
      await Promise.all(workers.map((w) => w.call({ cmd: 'closeReverse' })));
    }

    // Kill the hub, start it again, time until every agent is back.
    if (!reconnect) return out;
    await Promise.all(workers.map((w) => w.call({ cmd: 'resetFailures' })));
    const { killedAt, listeningAt } = await mesh.restartHub();
    out.restartListenSec = round((listeningAt - killedAt) / 1000, 2);
    const logFrom = statSize(mesh.hub.log);
    // Timeline while they come back: sessions the hub welcomed (its log),
    // CPU of the hub and of the load generators (they share the 2 cores).
    const timeline = [];
    let watching = true;
    const cpu0 = { hub: sampleTree(hubPid()).cpu, lg: workers.reduce((n, w) => n + sampleTree(w.pid).cpu, 0), t: Date.now() };
    const watcher = (async () => {
      let last = { ...cpu0 };
      while (watching) {
        for (let i = 0; i < 20 && watching; i++) await sleep(250);
        if (!watching) break;
        const now = { hub: sampleTree(hubPid()).cpu, lg: workers.reduce((n, w) => n + sampleTree(w.pid).cpu, 0), t: Date.now() };
        const dt = (now.t - last.t) / 1000;
        timeline.push(
          `${Math.round((now.t - killedAt) / 1000)}s: ${countLines(mesh.hub.log, logFrom, '"endpoint online"')} welcomed, hub ${Math.round(((now.hub - last.hub) / dt) * 100)} %, loadgen ${Math.round(((now.lg - last.lg) / dt) * 100)} %`,
        );
        last = now;
      }
    })();
    const back = await Promise.all(workers.map((w) => w.call({ cmd: 'waitAll', since: killedAt, timeoutMs: reconnectTimeoutSec * 1000 })));
    watching = false;
    await watcher;
    const cpu1 = { hub: sampleTree(hubPid()).cpu, lg: workers.reduce((n, w) => n + sampleTree(w.pid).cpu, 0) };
    out.reconnectHubCpuSec = round(cpu1.hub - cpu0.hub);
    out.reconnectLoadgenCpuSec = round(cpu1.lg - cpu0.lg);
    out.reconnectWelcomed = countLines(mesh.hub.log, logFrom, '"endpoint online"');
    out.reconnectTimeline = timeline.join('; ');
    const times = back.flatMap((b) => b.back);
    const nBack = back.reduce((n, b) => n + b.online, 0);
    out[`reconnected_${max}`] = nBack;
    out[`reconnectAllSec_${max}`] = nBack >= prev ? round(Math.max(...times) / 1000, 1) : null;
    out.reconnectP50Sec = round(median(times) / 1000, 1);
    out.reconnectP90Sec = round(pct(times, 0.9) / 1000, 1);
    out.reconnectFailedDials = back.reduce((n, b) => n + b.failures, 0);
    out.reconnectSessionsClosed = closeReasons(mesh.hub.log, logFrom);
    const errs = new Map();
    for (const b of back) for (const [m, n] of Object.entries(b.errors ?? {})) errs.set(m, (errs.get(m) ?? 0) + n);
    out.reconnectDialErrors =
      [...errs]
        .sort((a, b) => b[1] - a[1])
        .map(([m, n]) => `${m}: ${n}`)
        .join(', ') || 'none';
    log(`hub: after restart ${nBack}/${prev} back, all in ${out[`reconnectAllSec_${max}`]} s (p50 ${out.reconnectP50Sec} s)`);
  } finally {
    await Promise.all(workers.map((w) => w.call({ cmd: 'stop' }).catch(() => {})));
    await Promise.all(workers.map((w) => stop(w, 'SIGTERM', 2000)));
    if (!given) await mesh.stop();
  }
  return out;
}
