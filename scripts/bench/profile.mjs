// Where the time goes on the ztm path: the hub and both agents run under
// `node --cpu-prof` while one workload goes through the tunnel, and, where
// `perf` works, each is also sampled by `perf record` (native view: kernel,
// OpenSSL, memcpy, V8, nghttp2, libuv). Started by `scripts/bench/run --profile`.
// With `--alloc` the three run V8's sampling heap profiler instead
// (lib/alloc-sampler.cjs) and the report is the bytes each allocates per
// round trip, connection or MB moved, by allocating function.
//
//   scripts/bench/run --profile [--alloc] [--workload iperf|iperf8|conns|latency] [--seconds N] [--peer frp] [--out FILE]
//
// --peer frp: then the same workload through frp's stcp path under perf, its
// CPU by category beside ours (Go's crypto, runtime and memmove named).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatAlloc, summariseAlloc } from './lib/allocprofile.mjs';
import { flag, opt } from './lib/cli.mjs';
import { format, summarise } from './lib/cpuprofile.mjs';
import { MALLOC, frp, startTargets, ztm } from './lib/paths.mjs';
import { cleanupAll, runDir, sleep, stop } from './lib/procs.mjs';
import { connRate, iperf, latency } from './lib/workloads.mjs';

const workload = opt('--workload', 'iperf');
const seconds = Number(opt('--seconds', 8));
const outFile = opt('--out');
const alloc = flag('--alloc');
const peer = opt('--peer');
const rr = process.env.ZTM_BENCH_RR;
const log = (m) => process.stderr.write(`${m}\n`);

let done = false;
const bail = async (code, why) => {
  if (done) return;
  done = true;
  if (why) log(why);
  await cleanupAll({ keep: flag('--keep') });
  process.exit(code);
};
process.on('SIGINT', () => void bail(130, 'interrupted'));
process.on('SIGTERM', () => void bail(143, 'terminated'));

function perfWorks() {
  try {
    execFileSync('perf', ['record', '-q', '-o', join(runDir(), 'perf-probe.data'), '--', 'true'], { stdio: 'ignore', timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

/** Classify a perf symbol line into where the CPU went. */
function category(dso, sym) {
  if (dso.includes('kernel') || sym.startsWith('[k]')) return 'kernel (syscalls, TCP, scheduling)';
  const s = sym.replace(/^\[[.k]\]\s*/, '').replace(/^_+/, '');
  if (/^(memmove|memcpy|memset|__memmove|__memcpy|__memset|runtime\.memmove|runtime\.memclr)/i.test(s)) return 'memcpy/memset';
  // Go (frp, under --peer frp): its own crypto, runtime and the rest.
  if (/^(crypto\/|vendor\/golang\.org\/x\/crypto|golang\.org\/x\/crypto)/.test(s)) return 'Go crypto (TLS, AES-GCM)';
  if (/^runtime\./.test(s)) return 'Go runtime (scheduler, GC, netpoll)';
  if (/^(frpc|frps)$/.test(dso)) return 'Go (frp, yamux, net, io)';
  if (
    /^(aes|gcm|ghash|ossl_|OSSL_|EVP_|evp_|do_ssl|WPACKET|CRYPTO_|ssl|SSL_|tls|BIO_|sha\d|SHA\d|ecp_|bn_|BN_|x25519|chacha|ChaCha|poly1305|Poly1305|ERR_|OPENSSL|asn1|ASN1|X509|PEM_|EC_|ECDSA|RAND_|OBJ_|lh_|sk_|ossl)/.test(
      s,
    )
  )
    return 'OpenSSL';
  if (/nghttp2/.test(s)) return 'nghttp2';
  if (/^uv_|^uv__/.test(s)) return 'libuv';
  if (/^v8::internal::.*(Mark|Sweep|Scaveng|Evacuat|Heap|GC|Compact|BodyDescriptor|SizeFromMap|Visitor|Worklist|Barrier|MemoryChunk|Page)/.test(s))
    return 'V8 GC';
  if (/^(Builtins_|v8::|Runtime_|Builtin|LazyCompile|JS:|~|\*)/.test(s)) return 'V8 (JS, builtins, runtime)';
  if (/^(non-virtual thunk to )?node::/.test(s)) return 'node C++ (streams, http2, tls glue)';
  if (/^std::.*v8::/.test(s)) return 'V8 (JS, builtins, runtime)';
  if (/^0x[0-9a-f]+$/.test(s) || dso.includes('perf-') || dso.includes('JIT')) return 'V8 (JS, builtins, runtime)';
  if (dso.includes('libc')) return 'libc (malloc, free, other)';
  if (dso.includes('libstdc++')) return 'libstdc++';
  return `other (${dso})`;
}

function perfReport(file) {
  const text = execFileSync('perf', ['report', '-i', file, '--stdio', '--no-children', '--sort', 'dso,sym', '--percent-limit', '0.05'], {
    maxBuffer: 64 * 1024 * 1024,
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'ignore'],
  }).toString();
  const cats = new Map();
  const top = [];
  const unknown = [];
  for (const line of text.split('\n')) {
    const m = /^\s+([\d.]+)%\s+(\S+)\s+(\[[.k]\]\s+.*)$/.exec(line);
    if (!m) continue;
    const pct = Number(m[1]);
    const c = category(m[2], m[3]);
    cats.set(c, (cats.get(c) ?? 0) + pct);
    const l = `${m[1].padStart(6)} %  ${m[2]}  ${m[3].replace(/\s+/g, ' ').slice(0, 140)}`;
    if (top.length < 15) top.push(l);
    if (c.startsWith('other') && unknown.length < 5) unknown.push(l);
  }
  return { cats: [...cats].sort((a, b) => b[1] - a[1]), top, unknown };
}

async function main() {
  if (!rr) throw new Error('ZTM_BENCH_RR is not set: run scripts/bench/run --profile');
  const dir = join(runDir(), 'cpuprof');
  mkdirSync(dir, { recursive: true });
  const targets = await startTargets(rr);
  log(`profile: ztm path under ${alloc ? 'the sampling heap profiler' : '--cpu-prof'}, workload ${workload}, ${seconds} s`);
  const mesh = alloc
    ? await ztm(targets, {
        nodeArgs: ['--require', fileURLToPath(new URL('./lib/alloc-sampler.cjs', import.meta.url))],
        env: { ...MALLOC.env, ZTM_ALLOC_DIR: dir },
      })
    : await ztm(targets, { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', dir] });
  const roles = { hub: mesh.roles.relay, entry: mesh.roles.entry, exit: mesh.roles.exit };
  await iperf(mesh.ports.iperf, {}, { seconds: 1 });
  if (workload === 'latency') await latency(rr, mesh.ports.echo, { count: 2000 });
  const usePerf = !alloc && perfWorks();
  if (alloc) {
    for (const pid of Object.values(roles)) process.kill(pid, 'SIGUSR2');
    await sleep(300);
  }
  const perfs = usePerf ? await startPerf(roles, 'ztm') : [];
  const { result, units, window, sys } = await measure(mesh.ports, roles);
  await Promise.all(perfs.map((p) => p.done));
  const out = [`workload ${workload} through the ztm path: ${result}`, `syscalls (/proc/PID/io) — ${sys.join('; ')}`, ''];
  if (alloc) out.push(...(await allocReport(dir, roles, units)));
  else out.push(...(await cpuReport(dir, roles, mesh, window, usePerf, perfs)));
  if (peer) out.push(...(await peerReport(targets, usePerf)));
  const text = out.join('\n');
  console.log(text);
  if (outFile) writeFileSync(outFile, `${text}\n`);
}

/** `perf record` on each process of a path for the workload's length. */
async function startPerf(roles, tag) {
  const perfs = [];
  for (const [role, pid] of Object.entries(roles)) {
    const file = join(runDir(), `perf-${tag}-${role}.data`);
    const p = spawn('perf', ['record', '-q', '-F', '997', '-p', String(pid), '-o', file, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
    perfs.push({ role, file, done: new Promise((r) => p.on('close', r)) });
  }
  await sleep(300);
  return perfs;
}

/** The workload once through a path: its result line, the units per which
 * allocations are reported, the time window, and each process's syscalls. */
async function measure(ports, roles) {
  const io = (pid) => {
    try {
      const t = readFileSync(`/proc/${pid}/io`, 'utf8');
      return { r: Number(/syscr: (\d+)/.exec(t)[1]), w: Number(/syscw: (\d+)/.exec(t)[1]) };
    } catch {
      return { r: 0, w: 0 };
    }
  };
  const io0 = Object.fromEntries(Object.entries(roles).map(([k, pid]) => [k, io(pid)]));
  let result;
  let bytesMoved = 0;
  let units = { n: 1, unit: 'run' };
  const nowUs = () => Number(process.hrtime.bigint() / 1000n);
  const window = { fromUs: nowUs(), toUs: 0 };
  if (workload === 'iperf' || workload === 'iperf8') {
    const r = await iperf(ports.iperf, roles, { seconds, streams: workload === 'iperf8' ? 8 : 1 });
    bytesMoved = r.bytes;
    units = { n: r.bytes / 1e6, unit: 'MB moved' };
    result = `${r.gbps.toFixed(2)} Gbit/s; CPU s/GB: ${Object.entries(r.cpu)
      .map(([k, v]) => `${k} ${(v / (r.bytes / 1e9)).toFixed(2)}`)
      .join(', ')}`;
  } else if (workload === 'conns') {
    const r = await connRate(rr, ports.echo, { parallel: 16, seconds, max: 1_000_000 });
    result = `${r.connsPerSec} conns/s (16 parallel), ${r.errors} errors`;
    units = { n: Math.max(1, r.connsPerSec * seconds), unit: 'connection' };
  } else {
    const r = await latency(rr, ports.echo, { count: Math.round(seconds * 3000) });
    result = `p50 ${r.p50us} µs, p99 ${r.p99us} µs over ${r.count} round trips`;
    units = { n: r.count, unit: 'round trip' };
  }
  window.toUs = nowUs();
  const sys = Object.entries(roles).map(([k, pid]) => {
    const d = io(pid);
    const r = d.r - io0[k].r;
    const w = d.w - io0[k].w;
    return `${k}: ${r} read / ${w} write syscalls${bytesMoved ? ` (${Math.round(bytesMoved / Math.max(1, w) / 1024)} KiB moved per write)` : ''}`;
  });
  return { result, units, window, sys };
}

/** --peer frp: the same workload through frp's stcp path right after, under
 * perf alone (the ztm path ran under --cpu-prof as well, which costs it a few
 * per cent: compare where the CPU goes, not the throughputs). */
async function peerReport(targets, usePerf) {
  if (peer !== 'frp') return [`--peer ${peer}: only frp is profiled beside ztm`];
  if (alloc) return ['--peer goes with the CPU profile, not --alloc'];
  const bin = process.env.ZTM_BENCH_FRP_BIN;
  if (!bin) return [`frp: not profiled (${process.env.ZTM_BENCH_FRP_SKIP || 'not built'})`];
  const path = await frp(targets, bin);
  await iperf(path.ports.iperf, {}, { seconds: 1 });
  if (workload === 'latency') await latency(rr, path.ports.echo, { count: 2000 });
  const perfs = usePerf ? await startPerf(path.roles, 'frp') : [];
  const { result, sys } = await measure(path.ports, path.roles);
  await Promise.all(perfs.map((p) => p.done));
  const out = [`workload ${workload} through frp's stcp path, under perf alone: ${result}`, `syscalls (/proc/PID/io) — ${sys.join('; ')}`, ''];
  if (!usePerf) return [...out, 'perf: not available here'];
  for (const p of perfs) out.push(...perfLines(`perf frp ${p.role}`, p.file));
  return out;
}

/** A perf recording as shares by category and its top symbols. */
function perfLines(title, file) {
  try {
    const r = perfReport(file);
    const out = [`${title}: share of its samples`];
    for (const [c, pct] of r.cats) out.push(`  ${pct.toFixed(1).padStart(5)} %  ${c}`);
    out.push('  top symbols:', ...r.top.map((l) => `  ${l}`));
    if (r.unknown.length) out.push('  top unclassified:', ...r.unknown.map((l) => `  ${l}`));
    return [...out, ''];
  } catch (err) {
    return [`${title}: report failed: ${err.message}`, ''];
  }
}

/** The --cpu-prof JS view of each process and, where perf worked, the native one. */
async function cpuReport(dir, roles, mesh, window, usePerf, perfs) {
  // SIGTERM: the daemons exit cleanly and V8 writes the profiles.
  await stop(mesh.agents.a.h, 'SIGTERM', 15_000);
  await stop(mesh.agents.b.h, 'SIGTERM', 15_000);
  await stop(mesh.hub, 'SIGTERM', 15_000);
  const out = [];
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  for (const f of files) {
    const pid = Number(f.split('.')[3]);
    const role = Object.entries(roles).find(([, p]) => p === pid)?.[0] ?? `pid ${pid}`;
    out.push(format(`--cpu-prof ${role} (during the workload)`, summarise(join(dir, f), 20, window)), '');
  }
  if (usePerf) for (const p of perfs) out.push(...perfLines(`perf ${p.role}`, p.file));
  else out.push('perf: not available here (perf record failed); JS view only');
  return out;
}

/** Stop the sampling heap profilers and summarise what each process allocated. */
async function allocReport(dir, roles, units) {
  for (const pid of Object.values(roles)) process.kill(pid, 'SIGUSR2');
  // The sampler renames each file into place once written (lib/alloc-sampler.cjs).
  const files = Object.fromEntries(Object.entries(roles).map(([role, pid]) => [role, join(dir, `alloc-${pid}.json`)]));
  for (let i = 0; i < 100 && !Object.values(files).every((f) => existsSync(f)); i++) await sleep(100);
  const out = [];
  for (const [role, f] of Object.entries(files)) {
    try {
      out.push(formatAlloc(`${role}`, units.unit, summariseAlloc(f, units.n)), '');
    } catch (err) {
      out.push(`${role}: no allocation profile (${err.message})`, '');
    }
  }
  return out;
}

main().then(
  () => bail(0),
  (err) => bail(1, `error: ${err.stack ?? err}`),
);
