// Summarise a V8 .cpuprofile (node --cpu-prof): self time by function and by
// where the code lives (ztm packages, node internals, dependencies, native /
// GC / idle), so a profile can be read in a terminal and quoted in
// docs/performance.md.
import { readFileSync } from 'node:fs';

function where(url, name) {
  if (!url) {
    if (name === '(idle)') return 'idle';
    if (name === '(garbage collector)') return 'gc';
    if (name === '(program)') return 'native (program)';
    return 'native';
  }
  if (url.startsWith('node:'))
    return `node:${
      url
        .slice(5)
        .replace(/^internal\//, '')
        .split('/')[0]
    }`;
  const m = /packages\/(proto|hub|agent)\//.exec(url);
  if (m) return `ztm ${m[1]}`;
  const dep = /node_modules\/(?:\.pnpm\/)?((?:@[^/+]+[/+])?[^/@]+)/.exec(url);
  if (dep) return `dep ${dep[1].replace('+', '/')}`;
  return 'other js';
}

/** { totalMs, byWhere: [[where, ms, %]], top: [[fn, where, ms, %]] }.
 * `window` ({ fromUs, toUs }, CLOCK_MONOTONIC µs as process.hrtime gives, the
 * clock V8 stamps samples with) keeps only the samples inside it: the
 * workload, not start-up. */
export function summarise(file, topN = 25, window = null) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const dts = p.timeDeltas;
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += dts[i] ?? 0;
    const dt = dts[i + 1] ?? 0;
    if (window && (t < window.fromUs || t > window.toUs)) continue;
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
  }
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const label = (cf) => {
    const short = cf.url ? cf.url.replace(/^.*\/(packages|node_modules)\//, '$1/').replace(/^file:\/\//, '') : '';
    return `${cf.functionName || '(anonymous)'} ${short}${cf.url ? `:${cf.lineNumber + 1}` : ''}`.trim();
  };
  const fn = new Map();
  const wh = new Map();
  let total = 0;
  for (const [id, us] of self) {
    const n = byId.get(id);
    const cf = n.callFrame;
    const w = where(cf.url, cf.functionName);
    if (w === 'idle') continue;
    total += us;
    const key = label(cf);
    const f = fn.get(key) ?? { us: 0, w, callers: new Map() };
    f.us += us;
    const pid = parent.get(id);
    if (pid !== undefined) {
      const c = label(byId.get(pid).callFrame);
      f.callers.set(c, (f.callers.get(c) ?? 0) + us);
    }
    fn.set(key, f);
    wh.set(w, (wh.get(w) ?? 0) + us);
  }
  const pc = (us) => Math.round((1000 * us) / total) / 10;
  return {
    totalMs: Math.round(total / 1000),
    byWhere: [...wh].sort((a, b) => b[1] - a[1]).map(([w, us]) => [w, Math.round(us / 1000), pc(us)]),
    top: [...fn]
      .sort((a, b) => b[1].us - a[1].us)
      .slice(0, topN)
      .map(([k, f]) => [k, f.w, Math.round(f.us / 1000), pc(f.us), [...f.callers].sort((a, b) => b[1] - a[1])[0]?.[0] ?? '']),
  };
}

export function format(title, s) {
  const lines = [`${title}: ${s.totalMs} ms on CPU (idle excluded)`, '  by where:'];
  for (const [w, ms, p] of s.byWhere.slice(0, 12)) lines.push(`    ${String(p).padStart(5)} %  ${String(ms).padStart(6)} ms  ${w}`);
  lines.push('  top functions (self time):');
  for (const [k, , ms, p, caller] of s.top) lines.push(`    ${String(p).padStart(5)} %  ${String(ms).padStart(6)} ms  ${k}${caller ? `  ← ${caller}` : ''}`);
  return lines.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const f of process.argv.slice(2)) console.log(format(f, summarise(f)));
}
