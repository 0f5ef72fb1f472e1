// The allocation census of `--census` (scripts/bench/mcensus.c, preloaded into
// the hub): ask the process for a dump, read it, and tell where the bytes per
// agent added between two dumps went, by call stack, with how much of them is
// resident.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from './procs.mjs';

/** The environment that preloads the census into a process writing to `dir`. */
export function censusEnv(dir) {
  const so = process.env.ZTM_BENCH_MCENSUS;
  if (!so || !existsSync(so)) throw new Error('--census: ZTM_BENCH_MCENSUS is not built (scripts/bench/run builds it)');
  mkdirSync(dir, { recursive: true });
  return { LD_PRELOAD: so, ZTM_CENSUS_DIR: dir };
}

/** Dumps asked of each process so far: mcensus.c numbers its files per process. */
const dumps = new Map();
/** Ask `pid` for a dump and wait for it: sites by id. */
export async function takeCensus(dir, pid, timeoutMs = 120_000) {
  const n = dumps.get(pid) ?? 0;
  dumps.set(pid, n + 1);
  const file = join(dir, `census-${pid}-${n}.txt`);
  writeFileSync(join(dir, `dump-${pid}`), '');
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`--census: no dump from ${pid} in ${timeoutMs} ms`);
    await sleep(200);
  }
  const sites = new Map();
  let cur;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^site (\d+) (\d+) (\d+) (\d+)$/.exec(line);
    if (m) {
      cur = { count: Number(m[2]), bytes: Number(m[3]), resident: Number(m[4]), frames: [] };
      sites.set(m[1], cur);
    } else if (cur && line.startsWith('  ')) {
      cur.frames.push(line.trim());
    }
  }
  return sites;
}

// Names for addresses in the node binary that backtrace_symbols(3) leaves
// bare (static functions): `nm` on the binary, once. Empty where nm is missing
// or the binary is position-independent (addresses would need its base).
let nmTable;
function nodeSymbols() {
  if (nmTable) return nmTable;
  nmTable = { addrs: [], names: [] };
  try {
    const out = execFileSync('nm', ['-n', '-C', process.execPath], { maxBuffer: 256 * 1024 * 1024 }).toString();
    for (const line of out.split('\n')) {
      const m = /^([0-9a-f]+) [tTwW] (.+)$/.exec(line);
      if (!m) continue;
      nmTable.addrs.push(Number.parseInt(m[1], 16));
      nmTable.names.push(m[2]);
    }
  } catch {}
  return nmTable;
}

/** A frame as "name" where a name can be found: "name+0x…" from
 * backtrace_symbols, else the node binary's symbol table, else the raw text. */
function frameName(frame) {
  const named = /\(([^)+]+)\+0x[0-9a-f]+\)/.exec(frame);
  if (named) return named[1];
  const bare = /^0x([0-9a-f]+) \S*node\(\)/.exec(frame);
  if (bare) {
    const { addrs, names } = nodeSymbols();
    const a = Number.parseInt(bare[1], 16);
    let lo = 0;
    let hi = addrs.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (addrs[mid] <= a) lo = mid;
      else hi = mid - 1;
    }
    if (addrs.length && addrs[lo] <= a) return names[lo];
  }
  return frame.replace(/^0x[0-9a-f]+ /, '');
}

/** C++ names demangled, all in one `c++filt` (names left as they are where
 * it is missing). */
function demangleAll(names) {
  const mangled = [...new Set(names.filter((n) => n.startsWith('_Z')))];
  const out = new Map();
  if (mangled.length) {
    try {
      const lines = execFileSync('c++filt', mangled).toString().split('\n');
      for (const [i, m] of mangled.entries()) out.set(m, lines[i] || m);
    } catch {}
  }
  return names.map((n) => out.get(n) ?? n);
}

const ALLOCATOR_FRAMES = /^(operator new|CRYPTO_(m|z)alloc|CRYPTO_realloc|node::mem::NgLibMemoryManager|node::NodeArrayBufferAllocator)/;
const short = (name) =>
  name
    .replace(/\(.*$/, '')
    .replace(/^.*\b(node|v8)::/, '$1::')
    .slice(0, 70);

/** Per unit (agent) between two censuses: the sites that grew most in
 * resident bytes, as lines; and the totals. */
export function censusDiff(before, after, units, top = 15) {
  const rows = [];
  let resident = 0;
  let bytes = 0;
  for (const [id, s] of after) {
    const b = before.get(id) ?? { count: 0, bytes: 0, resident: 0 };
    const row = { resident: (s.resident - b.resident) / units, bytes: (s.bytes - b.bytes) / units, count: (s.count - b.count) / units, frames: s.frames };
    resident += row.resident;
    bytes += row.bytes;
    rows.push(row);
  }
  rows.sort((x, y) => y.resident - x.resident);
  const shown = rows.slice(0, top);
  const all = demangleAll(shown.flatMap((r) => r.frames.map(frameName)));
  const lines = shown.map((r) => {
    const names = all.splice(0, r.frames.length).filter((n) => !ALLOCATOR_FRAMES.test(n));
    const where = names.slice(0, 3).map(short).join(' < ');
    return `${(r.resident / 1024).toFixed(2)} KiB resident of ${(r.bytes / 1024).toFixed(2)} allocated, ${r.count.toFixed(2)}× — ${where}`;
  });
  return { residentKiB: resident / 1024, allocatedKiB: bytes / 1024, lines };
}
