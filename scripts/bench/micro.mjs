// The data path's own cost, this tree beside a baseline, alternated: each
// round runs `splice-cost.mjs` (the entrance, a splice and the exit in one
// process over h2c) for each tree, in turn order reversed every round, and
// reports the median of each figure per tree. Started by
// `scripts/bench/run --micro`.
//
//   scripts/bench/run --micro [--baseline REF] [--rounds N] [--conns N] [--mib N] [--json FILE]
//
// Where the three-process bench cannot tell a change of a few percent from
// the machine's noise, this can: a tree beside a build of itself measured
// 0.986× per connection and 1.006× per GB over 10 rounds (single samples
// spread ± 7 %, so not fewer rounds). What it does not see: TLS, the hub's routing, the agents'
// sessions and anything that depends on three processes sharing two cores.
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { baselineRoot } from './lib/baseline.mjs';
import { opt } from './lib/cli.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const ROOT = join(here, '../..');
const log = (m) => process.stderr.write(`${m}\n`);
const rounds = Number(opt('--rounds', 10));
const conns = Number(opt('--conns', 3000));
const mib = Number(opt('--mib', 256));
const ref = opt('--baseline');

const trees = [{ name: 'ztm', root: ROOT }];
if (ref) {
  const b = baselineRoot(ROOT, ref, log);
  trees.push({ name: 'base', root: b.dir, sha: b.sha });
}
const worker = join(here, 'splice-cost.mjs');
const run = (tree, workload, n) => JSON.parse(execFileSync(process.execPath, [worker, tree.root, workload, String(n)], { timeout: 300_000 }).toString());

const samples = Object.fromEntries(trees.map((t) => [t.name, []]));
for (let r = 0; r < rounds; r++) {
  const order = r % 2 ? [...trees].reverse() : trees;
  for (const t of order) {
    const s = { ...run(t, 'conns', conns), ...run(t, 'bulk', mib) };
    samples[t.name].push(s);
    log(`round ${r + 1}/${rounds} ${t.name.padEnd(4)} ${JSON.stringify(s)}`);
  }
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const metrics = ['cpuUsPerConn', 'wallUsPerConn', 'cpuSecPerGB', 'gbps'];
const results = {};
for (const t of trees) results[t.name] = Object.fromEntries(metrics.map((m) => [m, +median(samples[t.name].map((s) => s[m])).toFixed(3)]));
const lines = [`one process, h2c, median of ${rounds} rounds (${conns} connections one at a time; ${mib} MiB through one connection):`];
lines.push(`${'tree'.padEnd(6)}${metrics.map((m) => m.padStart(15)).join('')}`);
for (const t of trees) lines.push(`${t.name.padEnd(6)}${metrics.map((m) => String(results[t.name][m]).padStart(15)).join('')}`);
if (ref)
  lines.push(
    `${'ratio'.padEnd(6)}${metrics.map((m) => (results.ztm[m] / results.base[m]).toFixed(3).padStart(15)).join('')}   (ztm / base ${ref} ${trees[1].sha.slice(0, 12)})`,
  );
console.log(lines.join('\n'));
const jsonFile = opt('--json');
if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify({ micro: results, samples }, null, 2)}\n`);
