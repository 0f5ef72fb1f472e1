// Where the time goes on the ztm path: the hub and both agents run under
// `node --cpu-prof` while one workload goes through the tunnel, and, where
// `perf` works, each is also sampled by `perf record` (native view: kernel,
// OpenSSL, memcpy, V8, nghttp2, libuv). Started by `scripts/bench/run --profile`.
// With `--alloc` the three run V8's sampling heap profiler instead
// (lib/alloc-sampler.cjs) and the report is the bytes each allocates per
// round trip, connection or MB moved, by allocating function.
//
//   scripts/bench/run --profile [--alloc] [--workload iperf|iperf8|conns|latency] [--seconds N] [--out FILE]
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatAlloc, summariseAlloc } from './lib/allocprofile.mjs';
import { format, summarise } from './lib/cpuprofile.mjs';
import { MALLOC, startTargets, ztm } from './lib/paths.mjs';
import { cleanupAll, runDir, sleep, stop } from './lib/procs.mjs';
import { connRate, iperf, latency } from './lib/workloads.mjs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const workload = opt('--workload', 'iperf');
const seconds = Number(opt('--seconds', 8));
const outFile = opt('--out');
const alloc = argv.includes('--alloc');
const rr = process.env.ZTM_BENCH_RR;
const log = (m) => process.stderr.write(`${m}\n`);

let done = false;
const bail = async (code, why) => {
  if (done) return;
  done = true;
  if (why) log(why);
  await cleanupAll();
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
  if (/^(memmove|memcpy|memset|__memmove|__memcpy|__memset)/i.test(s)) return 'memcpy/memset';
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
  const perfs = [];
  if (usePerf) {
    for (const [role, pid] of Object.entries(roles)) {
      const file = join(runDir(), `perf-${role}.data`);
      const p = spawn('perf', ['record', '-q', '-F', '997', '-p', String(pid), '-o', file, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
      perfs.push({ role, file, done: new Promise((r) => p.on('close', r)) });
    }
    await sleep(300);
  }
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
    const r = await iperf(mesh.ports.iperf, roles, { seconds, streams: workload === 'iperf8' ? 8 : 1 });
    bytesMoved = r.bytes;
    units = { n: r.bytes / 1e6, unit: 'MB moved' };
    result = `${r.gbps.toFixed(2)} Gbit/s; CPU s/GB: ${Object.entries(r.cpu)
      .map(([k, v]) => `${k} ${(v / (r.bytes / 1e9)).toFixed(2)}`)
      .join(', ')}`;
  } else if (workload === 'conns') {
    const r = await connRate(rr, mesh.ports.echo, { parallel: 16, seconds, max: 1_000_000 });
    result = `${r.connsPerSec} conns/s (16 parallel), ${r.errors} errors`;
    units = { n: Math.max(1, r.connsPerSec * seconds), unit: 'connection' };
  } else {
    const r = await latency(rr, mesh.ports.echo, { count: Math.round(seconds * 3000) });
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
  await Promise.all(perfs.map((p) => p.done));
  const out = [`workload ${workload} through the ztm path: ${result}`, `syscalls (/proc/PID/io) — ${sys.join('; ')}`, ''];
  if (alloc) out.push(...(await allocReport(dir, roles, units)));
  else out.push(...(await cpuReport(dir, roles, mesh, window, usePerf, perfs)));
  const text = out.join('\n');
  console.log(text);
  if (outFile) writeFileSync(outFile, `${text}\n`);
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
  if (usePerf) {
    for (const p of perfs) {
      try {
        const r = perfReport(p.file);
        out.push(`perf ${p.role}: share of its samples`);
        for (const [c, pct] of r.cats) out.push(`  ${pct.toFixed(1).padStart(5)} %  ${c}`);
        out.push('  top symbols:', ...r.top.map((l) => `  ${l}`));
        if (r.unknown.length) out.push('  top unclassified:', ...r.unknown.map((l) => `  ${l}`));
        out.push('');
      } catch (err) {
        out.push(`perf ${p.role}: report failed: ${err.message}`, '');
      }
    }
  } else out.push('perf: not available here (perf record failed); JS view only');
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
