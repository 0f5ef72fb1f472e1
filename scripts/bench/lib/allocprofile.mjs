// Summary of a sampling heap profile written by lib/alloc-sampler.cjs: bytes
// allocated per unit of work (a round trip, a connection, a MB moved) by the
// function that allocated them, and by its three innermost frames.
import { readFileSync } from 'node:fs';

const frameName = (f) => {
  const file = f.url ? f.url.replace(/^.*\/(node_modules|packages)\//, '').replace(/^node:/, '') : '';
  return `${f.functionName || '(anonymous)'}${file ? ` ${file}:${f.lineNumber + 1}` : ''}`;
};

export function summariseAlloc(file, perUnit, top = 12) {
  const prof = JSON.parse(readFileSync(file, 'utf8'));
  if (prof.error) throw new Error(prof.error);
  const stacks = new Map();
  const walk = (node, path) => {
    const here = [...path, frameName(node.callFrame)];
    stacks.set(node.id, here);
    for (const c of node.children) walk(c, here);
  };
  walk(prof.head, []);
  let total = 0;
  const byFn = new Map();
  const byStack = new Map();
  for (const s of prof.samples) {
    total += s.size;
    const st = stacks.get(s.nodeId) ?? ['?'];
    const fn = st[st.length - 1];
    const key = st.slice(-3).reverse().join(' ← ');
    byFn.set(fn, (byFn.get(fn) ?? 0) + s.size);
    byStack.set(key, (byStack.get(key) ?? 0) + s.size);
  }
  const rows = (m) =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, v]) => ({ bytes: v / perUnit, share: v / total, what: k }));
  return { bytesPerUnit: total / perUnit, byFn: rows(byFn), byStack: rows(byStack) };
}

export function formatAlloc(title, unit, s) {
  const line = (r) => `  ${r.bytes.toFixed(0).padStart(7)} B  ${(100 * r.share).toFixed(1).padStart(5)} %  ${r.what}`;
  return [
    `${title}: ${s.bytesPerUnit.toFixed(0)} bytes allocated per ${unit} (sampled, collected objects included)`,
    '  by the function that allocated:',
    ...s.byFn.map(line),
    '  by its three innermost frames:',
    ...s.byStack.map(line),
  ].join('\n');
}
