// ztm benchmark suite: every path measured side by side in one run, repeated,
// medians reported. Started by scripts/bench/run, which installs the tools and
// builds the helpers first; see docs/performance.md.
//
//   node scripts/bench/bench.mjs [--quick] [--json FILE] [--scenarios a,b,…]
//        [--repeats N] [--levels 1000,5000] [--no-hub] [--no-files] [--no-k8s]
//        [--only-hub] [--only-files] [--only-k8s] [--keep] [--baseline REF]
//        [--files-mib N] [--files-repeats N] [--k8s-n N] [--census]
//
// After the paths and the hub scale: file sync (256 MiB published to 3
// agents beside scp, lib/filesync.mjs; 32 MiB with --quick) and Kubernetes
// (ServiceExport in one cluster → ServiceImport in another, and back, on two
// API servers from scripts/k8s/up, lib/k8s.mjs; not in --quick). --only-X
// runs only the parts named (several may be given).
//
// --baseline REF builds the product at git REF (once, cached) and runs it as
// scenario `base` beside `ztm`: the before/after table of a change, one run;
// with --only-hub, the hub scale of both (REF's with REF's load generator);
// with --only-files, the file sync of both.
//
// --only-hub --census runs the hub under an allocation census (mcensus.c,
// preloaded): where the malloc bytes per agent go, by call stack, and how
// much of them is resident. Diagnosis only: it slows every allocation.
//
// Needs ZTM_BENCH_RR (the compiled rr.c) and, for frp, ZTM_BENCH_FRP_BIN (a dir
// with frps and frpc) or ZTM_BENCH_FRP_SKIP (why not).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { baselineRoot } from './lib/baseline.mjs';
import { flag, opt } from './lib/cli.mjs';
import { fileSync } from './lib/filesync.mjs';
import { hubScale } from './lib/hubscale.mjs';
import { k8sExportImport } from './lib/k8s.mjs';
import { MALLOC, ROOT, direct, frp, jemallocEnv, node3, ssh, startTargets, stunnel, ztm } from './lib/paths.mjs';
import { cleanupAll, loadAverage, runDir, stop } from './lib/procs.mjs';
import { connRate, iperf, latency, pushMemory } from './lib/workloads.mjs';

// ---- arguments ----
if (flag('--help') || flag('-h')) {
  console.log(
    readFileSync(new URL(import.meta.url), 'utf8')
      .split('\n')
      .slice(0, 18)
      .join('\n')
      .replace(/^\/\/ ?/gm, ''),
  );
  process.exit(0);
}
const quick = flag('--quick');
const jsonFile = opt('--json');
// node3tcp and node3h2 (the node3 processes without TLS, and with HTTP/2
// streams) only when asked for: they would take the full run past 15 minutes.
const allPaths = ['direct', 'ztm', 'ssh', 'stunnel', 'stunnel1', 'frp', 'node3'];
const baselineRef = opt('--baseline');
const wanted = opt('--scenarios', quick ? 'direct,ztm' : allPaths.join(',')).split(',');
if (baselineRef && !wanted.includes('base')) wanted.splice(wanted.indexOf('ztm') + 1, 0, 'base');
const repeats = Number(opt('--repeats', quick ? 1 : 3));
const levels = opt('--levels', quick ? '1000' : '1000,5000,10000')
  .split(',')
  .map(Number);
// --only-hub, --only-files, --only-k8s: those parts and nothing else.
const onlyParts = ['hub', 'files', 'k8s'].filter((p) => flag(`--only-${p}`));
const onlyHub = onlyParts.includes('hub');
const doPaths = onlyParts.length === 0;
const doHub = !flag('--no-hub') && (doPaths || onlyHub);
const doFiles = !flag('--no-files') && (doPaths || onlyParts.includes('files'));
const doK8s = !flag('--no-k8s') && (doPaths || onlyParts.includes('k8s'));
const cfg = quick
  ? // Under a minute (issue 8): shorter push and hub idle windows than the
    // full run, a smaller file; each still shows its figure.
    { iperfSeconds: 2, connSeconds: 1.5, latCount: 2000, pushSeconds: 2, idleSeconds: 2, reverseCount: 0, cleanBase: false, idleIperf: false, reconnect: false }
  : {
      iperfSeconds: 3,
      hubIperfSeconds: 10,
      connSeconds: 1.5,
      latCount: 2000,
      pushSeconds: 5,
      pushConnections: 64,
      pushStalledSeconds: 2,
      idleSeconds: 20,
      reverseCount: 1000,
      cleanBase: true,
      reconnectTimeoutSec: 90,
    };
const census = flag('--census');
if (census && !onlyHub) {
  console.error('--census goes with --only-hub: it slows every allocation of the hub it watches');
  process.exit(2);
}
const rr = process.env.ZTM_BENCH_RR;
if (!rr || !existsSync(rr)) {
  console.error('ZTM_BENCH_RR is not set: run scripts/bench/run, which builds the helpers');
  process.exit(2);
}

const started = Date.now();
const log = (msg) => process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)}s] ${msg}\n`);

// ---- cleanup on every way out ----
let exiting = false;
async function bail(code, why) {
  if (exiting) return;
  exiting = true;
  if (why) log(why);
  await cleanupAll({ keep: flag('--keep') });
  process.exit(code);
}
process.on('SIGINT', () => void bail(130, 'interrupted; cleaning up'));
process.on('SIGTERM', () => void bail(143, 'terminated; cleaning up'));
process.on('uncaughtException', (err) => void bail(1, `error: ${err.stack ?? err}`));
process.on('unhandledRejection', (err) => void bail(1, `error: ${err?.stack ?? err}`));

// ---- results ----
/** samples[scenario][metric] = number[] */
const samples = {};
const add = (s, m, v) => {
  samples[s] ??= {};
  samples[s][m] ??= [];
  if (v != null && Number.isFinite(v)) samples[s][m].push(v);
};
/** cpu[scenario][kind] = { bytes, role: seconds } */
const cpuAcc = {};
const results = {};
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const round = (x, d) => (x == null ? null : Math.round(x * 10 ** d) / 10 ** d);

/** The order of the paths in repeat `k`: rotated by ⌊k/2⌋, and reversed on
 * odd repeats. Rotation alone keeps every path after the same neighbour, and
 * a path run right after another relay measured faster than before it (the
 * same tree as `ztm` and as `base`, 11-27 02:00–02:20: the one second was
 * 8–17 % faster on one stream whichever tree it was); reversing puts each
 * pair in both orders, equally often over an even number of repeats. (Rotated
 * by k, a reversal undid the rotation of two paths: `--scenarios ztm
 * --baseline` ran `ztm` first every time, 11-27 05:00.) */
function rotate(list, k) {
  const n = list.length;
  const rotated = list.map((_, i) => list[(i + Math.floor(k / 2)) % n]);
  return k % 2 ? rotated.reverse() : rotated;
}

async function main() {
  runDir();
  log(
    `ztm bench${quick ? ' (quick)' : ''}: ${doPaths ? `${wanted.join(', ')}; ${repeats} repeat(s)` : 'no paths'}; hub levels ${doHub ? levels.join('/') : 'none'}; files ${doFiles ? 'yes' : 'no'}; k8s ${doK8s ? 'yes' : 'no'}`,
  );
  const machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    memGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    loadAvgStart: loadAverage(),
    date: new Date().toISOString(),
    allocator: MALLOC.name,
    commit: (() => {
      try {
        return execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']).toString().trim();
      } catch {
        return null;
      }
    })(),
    quick,
    repeats,
  };
  const targets = await startTargets(rr);

  // ---- bring up every path ----
  const paths = [];
  if (doPaths) {
    // The variants come with the scenario that starts them: stunnel1 with
    // stunnel; node3tcp and node3h2 with node3's processes, started for the
    // first of the three asked for.
    const node3s = wanted.filter((n) => n.startsWith('node3'));
    for (const name of wanted) {
      if (name === 'stunnel1' || (name.startsWith('node3') && name !== node3s[0])) continue;
      // A peer that does not come up is tried once more on new ports: a free
      // port picked at the start can be taken (by an outgoing connection's
      // ephemeral port) before the peer binds it, and stunnel then exits.
      for (let attempt = 1; attempt <= 2; attempt++) {
        try {
          log(`starting ${name}${attempt > 1 ? ` (attempt ${attempt})` : ''}`);
          paths.push(...(await startPath(name, targets, machine)));
          delete results[name];
          break;
        } catch (err) {
          const retry = attempt === 1 && /no echo through port/.test(err.message);
          log(`${name}: ${retry ? 'did not come up, trying again' : 'skipped'}: ${err.message}`);
          results[name] = { skipped: err.message.slice(0, 300) };
          if (!retry) break;
        }
      }
    }
  }

  // ---- warm up (JIT, connection pools), then the interleaved measurements ----
  // Each workload once through every path, as long as a measurement: V8
  // compiles a daemon's code for a round trip and for opening a tunnelled
  // connection as it runs, and on a slow machine the first 2,000 round trips
  // and 1.5 s of connections measured that (ztm: 0.6–0.7× the connection
  // rate of the rounds after, p99 5–8×; docs/performance.md, Method).
  for (const p of paths) {
    await iperf(p.ports.iperf, {}, { seconds: 1 }).catch((e) => log(`${p.name}: warm-up iperf3 failed: ${e.message}`));
    await latency(rr, p.ports.echo, { count: cfg.latCount, warmup: 50 }).catch(() => {});
    await connRate(rr, p.ports.echo, { parallel: 16, seconds: quick ? 1 : cfg.connSeconds }).catch(() => {});
  }
  const runs = [
    ['gbps1', { streams: 1 }],
    ['gbps8', { streams: 8 }],
    ['gbps1Reverse', { streams: 1, reverse: true }],
    ['gbps8Reverse', { streams: 8, reverse: true }],
  ].slice(0, quick ? 2 : 4); // --quick: one and eight streams, one way
  for (let r = 0; r < repeats; r++) {
    for (const [metric, o] of runs) {
      for (const p of rotate(paths, r)) {
        try {
          const x = await iperf(p.ports.iperf, p.roles, { ...o, seconds: cfg.iperfSeconds });
          add(p.name, metric, x.gbps);
          cpuAcc[p.name] ??= {};
          cpuAcc[p.name][metric] ??= { bytes: 0, cpu: {} };
          const acc = cpuAcc[p.name][metric];
          acc.bytes += x.bytes;
          for (const [role, s] of Object.entries(x.cpu)) acc.cpu[role] = (acc.cpu[role] ?? 0) + s;
          log(`${p.name.padEnd(9)} ${metric.padEnd(13)} ${x.gbps.toFixed(2)} Gbit/s`);
        } catch (err) {
          log(`${p.name} ${metric}: ${err.message}`);
        }
      }
    }
    for (const p of rotate(paths, r)) {
      try {
        const l = await latency(rr, p.ports.echo, { count: cfg.latCount });
        add(p.name, 'p50us', l.p50us);
        add(p.name, 'p99us', l.p99us);
        const c16 = await connRate(rr, p.ports.echo, { parallel: 16, seconds: cfg.connSeconds });
        add(p.name, 'connsPerSec', c16.connsPerSec);
        add(p.name, 'connErrors', c16.errors);
        const c1 = await connRate(rr, p.ports.echo, { parallel: 1, seconds: cfg.connSeconds });
        add(p.name, 'connsPerSecSeq', c1.connsPerSec);
        log(
          `${p.name.padEnd(9)} p50 ${l.p50us} µs p99 ${l.p99us} µs; ${c16.connsPerSec} conns/s (16), ${c1.connsPerSec} (seq), ${c16.errors + c1.errors} errors`,
        );
      } catch (err) {
        log(`${p.name} latency/conns: ${err.message}`);
      }
    }
  }

  // ---- bounded memory: push into a slow reader ----
  // Then 64 connections at once into a reader that has stopped: what each
  // process of a path holds per connection when everything behind a stalled
  // target backs up (the client resets them at the end). Run after the
  // one-connection push, so it counts growth beyond that one's peak.
  const pushes = [{ key: 'pushRssGrowthMiB', target: 'sink', seconds: cfg.pushSeconds, connections: 1, what: 'push into a slow reader' }];
  if (cfg.pushConnections > 1)
    pushes.push({
      key: 'pushStalledRssGrowthMiB',
      target: 'stall',
      seconds: cfg.pushStalledSeconds,
      connections: cfg.pushConnections,
      what: `push on ${cfg.pushConnections} connections into a reader that stopped`,
    });
  for (const push of pushes) {
    for (const p of paths) {
      if (Object.keys(p.roles).length === 0) continue;
      try {
        const m = await pushMemory(rr, p.ports[push.target], p.roles, push);
        if (push.connections === 1) add(p.name, 'pushAcceptedMiB', m.acceptedMiB);
        const worst = Math.max(...Object.values(m.growthMiB));
        add(p.name, push.key, worst);
        for (const [role, g] of Object.entries(m.growthMiB)) add(p.name, `${push.key}_${role}`, g);
        log(`${p.name.padEnd(9)} ${push.what}: accepted ${m.acceptedMiB.toFixed(0)} MiB (ended: ${m.end}), worst RSS growth ${worst.toFixed(1)} MiB`);
      } catch (err) {
        log(`${p.name} ${push.what}: ${err.message}`);
      }
    }
  }
  // The ztm path's mesh stays up for the hub-scale phase; the rest go.
  const ztmPath = paths.find((p) => p.name === 'ztm');
  for (const p of paths) if (p !== ztmPath) await p.stop();

  // ---- summarise the path scenarios ----
  for (const [s, ms] of Object.entries(samples)) {
    results[s] ??= {};
    const o = results[s];
    for (const [m, xs] of Object.entries(ms)) {
      if (!xs.length) continue;
      const d = m.startsWith('gbps') ? 2 : m.endsWith('us') ? 0 : m.startsWith('conns') ? 0 : 1;
      o[m] = round(median(xs), d);
    }
    for (const [metric, suffix] of [
      ['gbps1', ''],
      ['gbps8', '8'],
    ]) {
      const acc = cpuAcc[s]?.[metric];
      if (!acc || !acc.bytes) continue;
      const gb = acc.bytes / 1e9;
      let total = 0;
      for (const [role, sec] of Object.entries(acc.cpu)) {
        total += sec;
        if (!suffix) o[`cpuSecPerGB_${role}`] = round(sec / gb, 2);
      }
      if (Object.keys(acc.cpu).length) o[`cpuSecPerGB${suffix}`] = round(total / gb, 2);
    }
  }

  // ---- hub scale ----
  if (exiting) return;
  if (doHub && (onlyHub || wanted.includes('ztm'))) {
    try {
      // --only-hub --baseline REF: the hub at REF first, with its own load
      // generator (it speaks REF's protocol), then this tree's, in one run.
      if (baselineRef && onlyHub) {
        const b = baselineTree(machine);
        const lg = join(b.dir, 'scripts/bench/loadgen-worker.mjs');
        log(`hub scale, base ${machine.baseline}: ${levels.join(' / ')} idle agents`);
        results.hubBase = await hubScale({ root: b.dir, worker: existsSync(lg) ? lg : undefined, targets, levels, log, ...cfg });
      }
      log(`hub scale: ${levels.join(' / ')} idle agents`);
      results.hub = await hubScale({ mesh: ztmPath, targets, levels, log, ...cfg, census: census ? join(runDir(), 'census') : undefined });
    } catch (err) {
      log(`hub scale failed: ${err.stack ?? err.message}`);
      results.hub = { ...(results.hub ?? {}), error: err.message.slice(0, 300) };
    }
  }

  if (ztmPath) await ztmPath.stop();

  // ---- file sync and Kubernetes ----
  // --only-files --baseline REF: file sync of the product at REF first, then
  // of this tree, in one run (scp beside each).
  if (!exiting && baselineRef && onlyParts.includes('files') && doFiles) {
    const b = baselineTree(machine);
    results.fileSyncBase = await fileSyncHook({ root: b.dir, tag: 'files-base', what: `base ${machine.baseline}` });
  }
  if (!exiting) results.fileSync = await fileSyncHook();
  if (!exiting) results.k8s = await k8sHook();

  if (exiting) return;
  await Promise.all(targets.procs.map((h) => stop(h)));
  machine.loadAvgEnd = loadAverage();
  machine.seconds = Math.round((Date.now() - started) / 1000);
  results.meta = machine;
  printTable(results);
  if (jsonFile) {
    writeFileSync(jsonFile, `${JSON.stringify(results, null, 2)}\n`);
    log(`wrote ${jsonFile}`);
  }
}

/** The product built at --baseline REF (once, cached), named in the run's
 * `machine` record. */
function baselineTree(machine) {
  const b = baselineRoot(ROOT, baselineRef, log);
  machine.baseline = `${baselineRef} (${b.sha.slice(0, 12)})`;
  return b;
}

/** Bring up one scenario; the paths it yields (stunnel and node3 also yield
 * their variants when asked for). Throws when it cannot. */
async function startPath(name, targets, machine) {
  if (name === 'direct') return [await direct(targets)];
  if (name === 'ztm') return [await ztm(targets)];
  if (name === 'ztm-jehub') {
    // The hub on jemalloc (the units' opt-in), its MALLOC_CONF from ZTM_BENCH_JE_CONF.
    const hubEnv = { ...jemallocEnv('scenario ztm-jehub'), MALLOC_CONF: process.env.ZTM_BENCH_JE_CONF ?? '' };
    const p = await ztm(targets, { tag: 'ztm-jehub', hubEnv });
    p.notes = `the ztm path, the hub on jemalloc (MALLOC_CONF '${hubEnv.MALLOC_CONF}')`;
    return [p];
  }
  if (name === 'base') {
    if (!baselineRef) throw new Error('scenario base needs --baseline REF');
    const b = baselineTree(machine);
    const p = await ztm(targets, { tag: 'base', root: b.dir });
    p.notes = `the ztm path built at ${machine.baseline}`;
    return [p];
  }
  if (name === 'ssh') return [await ssh(targets)];
  if (name === 'stunnel') {
    const [two, one] = await stunnel(targets);
    return wanted.includes('stunnel1') ? [two, one] : [two];
  }
  if (name.startsWith('node3')) return (await node3(targets)).filter((p) => wanted.includes(p.name));
  if (name === 'frp') {
    if (process.env.ZTM_BENCH_FRP_SKIP || !process.env.ZTM_BENCH_FRP_BIN) throw new Error(process.env.ZTM_BENCH_FRP_SKIP || 'frp not built');
    return [await frp(targets, process.env.ZTM_BENCH_FRP_BIN)];
  }
  throw new Error(`unknown scenario ${name}`);
}

/** File sync (issue 8): a 256 MiB file (32 MiB with --quick) published to 3
 * agents, until all three have it verified, beside `scp` of the same file to
 * one host (lib/filesync.mjs). Repeated with a new file each time (3 × in the
 * full run), medians. */
async function fileSyncHook({ root = ROOT, tag = 'files', what = 'this tree' } = {}) {
  if (!doFiles) return { skipped: flag('--no-files') ? '--no-files' : 'not asked for (--only-…)' };
  const mib = Number(opt('--files-mib', quick ? 32 : 256));
  const n = Number(opt('--files-repeats', quick ? 1 : 3));
  log(`file sync (${what}): ${mib} MiB to 3 agents, ${n} time(s), beside scp`);
  try {
    return await fileSync({ mib, repeats: n, timeoutSec: quick ? 60 : 180, log, root, tag });
  } catch (err) {
    if (exiting) return { error: 'interrupted' };
    log(`file sync failed: ${err.stack ?? err.message}`);
    return { error: err.message.slice(0, 300) };
  }
}

/** Kubernetes (issue 8): ServiceExport created in cluster east → ServiceImport
 * present in west, and ServiceExport deleted → ServiceImport gone, on two API
 * servers from scripts/k8s/up (lib/k8s.mjs). Not in --quick (about 35 s:
 * control planes, agents, the exports) unless --only-k8s asks for it. */
async function k8sHook() {
  if (!doK8s) return { skipped: flag('--no-k8s') ? '--no-k8s' : 'not asked for (--only-…)' };
  if (quick && !onlyParts.includes('k8s'))
    return { skipped: 'not in --quick (it adds about 35 s: two control planes, two agents, the exports; run --only-k8s)' };
  const n = Number(opt('--k8s-n', 5));
  log(`kubernetes: ${n} exports east → west`);
  try {
    return await k8sExportImport({ n, log });
  } catch (err) {
    if (exiting) return { error: 'interrupted' };
    log(`kubernetes failed: ${err.stack ?? err.message}`);
    return { error: err.message.slice(0, 300) };
  }
}

function printTable(res) {
  const cols = [
    ['gbps1', 'Gb/s 1'],
    ['gbps8', 'Gb/s 8'],
    ['gbps1Reverse', 'Gb/s 1R'],
    ['gbps8Reverse', 'Gb/s 8R'],
    ['p50us', 'p50 µs'],
    ['p99us', 'p99 µs'],
    ['connsPerSec', 'conn/s 16'],
    ['connsPerSecSeq', 'conn/s 1'],
    ['cpuSecPerGB', 'CPU s/GB'],
    ['cpuSecPerGB_entry', 'entry'],
    ['cpuSecPerGB_relay', 'relay'],
    ['cpuSecPerGB_exit', 'exit'],
    ['pushRssGrowthMiB', 'push ΔRSS MiB'],
    ['pushStalledRssGrowthMiB', 'stalled×64 ΔRSS MiB'],
  ];
  const rows = [['scenario', ...cols.map((c) => c[1])]];
  const notes = [];
  for (const [s, o] of Object.entries(res)) {
    if (['hub', 'hubBase', 'meta', 'fileSync', 'fileSyncBase', 'k8s'].includes(s)) continue;
    if (o.skipped) {
      notes.push(`${s}: skipped (${o.skipped})`);
      continue;
    }
    rows.push([s, ...cols.map(([k]) => (o[k] == null ? '-' : String(o[k])))]);
  }
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  if (rows.length > 1) {
    console.log('');
    console.log(line(rows[0]));
    for (const r of rows.slice(1)) console.log(line(r));
  }
  for (const n of notes) console.log(n);
  if (res.hub && res.hubBase) {
    console.log(`\nhub scale (this tree | base ${res.meta.baseline}):`);
    const keys = [...new Set([...Object.keys(res.hub), ...Object.keys(res.hubBase)])];
    for (const k of keys) console.log(`  ${k.padEnd(30)} ${String(res.hub[k] ?? '-').padEnd(12)} | ${res.hubBase[k] ?? '-'}`);
  } else if (res.hub) {
    console.log('\nhub scale:');
    for (const [k, v] of Object.entries(res.hub)) console.log(`  ${k.padEnd(28)} ${Array.isArray(v) ? v.map((x) => `\n    ${x}`).join('') : v}`);
  }
  if (res.fileSyncBase) printFileSync(res.fileSyncBase, `base ${res.meta.baseline}`);
  printFileSync(res.fileSync, res.fileSyncBase ? 'this tree' : undefined);
  printK8s(res.k8s);
  const m = res.meta;
  console.log(
    `\n${m.cpus} × ${m.cpuModel}, ${m.memGiB} GiB, Node ${m.node}, kernel ${m.kernel}, ztm allocator ${m.allocator}; load average ${m.loadAvgStart.join(' ')} at start, ${m.loadAvgEnd.join(' ')} at end; ${m.seconds} s`,
  );
}

function printFileSync(f, which) {
  if (!f) return;
  const tree = which ? `, ${which}` : '';
  if (f.skipped || f.error) return console.log(`\nfile sync${tree}: ${f.skipped ? `skipped (${f.skipped})` : `failed (${f.error})`}`);
  const s = (x) => (x == null ? '-' : `${x} s`);
  console.log(`\nfile sync (${f.mib} MiB, hub → 3 agents, SHA-256 verified on disk; median of ${f.repeats}${tree}):`);
  console.log(`  publish (CLI returns)        ${s(f.publishSec)}   (hub lists it after ${s(f.hubListedSec)})`);
  console.log(
    `  on all 3 agents              ${s(f.allThreeSec)}   (per agent ${f.perAgentSec.map((x) => x ?? '-').join(' / ')}; ${f.deliveredMiBps ?? '-'} MiB/s delivered in all)`,
  );
  console.log(
    `  scp to one host              ${f.scpSkipped ? `skipped (${f.scpSkipped})` : `${s(f.scpSec)}   (${f.scpMiBps ?? '-'} MiB/s); all 3 agents / scp = ${f.ratioToScp ?? '-'}`}`,
  );
}

function printK8s(k) {
  if (!k) return;
  if (k.skipped || k.error) return console.log(`\nkubernetes: ${k.skipped ? `skipped (${k.skipped})` : `failed (${k.error})`}`);
  console.log(`\nkubernetes (ServiceExport in east → ServiceImport in west; ${k.n} services):`);
  console.log(`  export → import present      median ${k.exportToImportSecMedian} s, max ${k.exportToImportSecMax} s`);
  if (k.exportToIpsSecMedian != null) console.log(`  export → import with an IP   median ${k.exportToIpsSecMedian} s, max ${k.exportToIpsSecMax} s`);
  console.log(`  unexport → import gone       median ${k.withdrawSecMedian} s, max ${k.withdrawSecMax} s`);
  if (k.clustersUpSec != null) console.log(`  (control planes up in ${k.clustersUpSec} s)`);
}

main().then(
  () => bail(0),
  (err) => bail(1, `error: ${err.stack ?? err}`),
);
