// Kubernetes (issue 8): time from a ServiceExport created in one cluster to
// the ServiceImport present in another, and from the ServiceExport deleted to
// the ServiceImport gone. The sequence of test/mcs-export-import.test.ts
// (test/helpers/k8s.ts), reduced to what a timing needs and without network
// namespaces:
//
//   - two control planes, east and west, from scripts/k8s/up (etcd,
//     kube-apiserver, controller-manager, scheduler on 127.0.0.1; the MCS and
//     ClusterProperty CRDs; no KWOK nodes), binaries from the cache that
//     scripts/k8s/build fills (never built here: skipped with the command);
//   - a hub and one cluster agent per cluster through the real CLIs: the
//     shipped namespace + RBAC (docker/k8s) applied, the agent running with a
//     token of its ServiceAccount (never admin), enrolled with
//     `join --kubeconfig --cluster-id`, `run --kubeconfig --advertise-address`;
//   - per service: a selector-less Service and an EndpointSlice in east made
//     beforehand, then the ServiceExport created; the times are taken from
//     two `kubectl get --watch` streams, one per cluster, so that both ends
//     are seen the same way: ServiceExport ADDED in east → ServiceImport ADDED
//     in west (and → with spec.ips, the derived Service's ClusterIP), then
//     ServiceExport DELETED in east → ServiceImport DELETED in west.
//
// The advertise address: an API server refuses 127.0.0.0/8 in an
// EndpointSlice, and the importing agent names its own address in the slices
// it writes, so it needs a non-loopback address. It is the agent's own
// default outside a pod (the first non-loopback IPv4 of this host), or
// ZTM_BENCH_K8S_ADVERTISE; only the importing agent's MCS listeners bind it,
// and nothing sends them traffic. Every connection the benchmark makes is
// on 127.0.0.1.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { AGENT_BIN, ROOT, binNodeArgs, initHub } from './paths.mjs';
import { onCleanup, recordPid, runCmd, runDir, sleep, start, stop, waitLog } from './procs.mjs';

const node = process.execPath;
const K8S_SCRIPTS = join(ROOT, 'scripts/k8s');
const MANIFESTS = join(ROOT, 'docker/k8s');
const SE = 'serviceexports.multicluster.x-k8s.io';
const SI = 'serviceimports.multicluster.x-k8s.io';
const COMPONENTS = ['kwok', 'kube-scheduler', 'kube-controller-manager', 'kube-apiserver', 'etcd'];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const r3 = (x) => (x == null ? null : Math.round(x * 1000) / 1000);

/** The cached Kubernetes binaries' directory (scripts/k8s/lib.sh decides
 * where, and whether they are all there), or null. */
export function kubernetesBin() {
  try {
    return (
      execFileSync('bash', ['-c', `. "${K8S_SCRIPTS}/lib.sh" && k8s_binaries_present && echo "$K8S_BIN"`], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim() || null
    );
  } catch {
    return null;
  }
}

function advertiseAddress() {
  if (process.env.ZTM_BENCH_K8S_ADVERTISE) return process.env.ZTM_BENCH_K8S_ADVERTISE;
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  return null;
}

/** `kubectl get KIND -n NS --watch`: one line per event, time-stamped on arrival. */
function watch(kubectl, kubeconfig, kind, ns) {
  const child = spawn(
    kubectl,
    [
      '--kubeconfig',
      kubeconfig,
      'get',
      kind,
      '-n',
      ns,
      '--watch',
      '--output-watch-events',
      '-o',
      'jsonpath={.type} {.object.metadata.name} {.object.spec.ips[0]}{"\\n"}',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  recordPid(child.pid);
  const events = [];
  const waiters = new Set();
  let buf = '';
  let err = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (c) => {
    const t = performance.now();
    buf += c;
    let i = buf.indexOf('\n');
    while (i >= 0) {
      const [type, name, ip] = buf.slice(0, i).trim().split(' ');
      buf = buf.slice(i + 1);
      i = buf.indexOf('\n');
      if (!type) continue;
      events.push({ type, name, ip: ip || null, t });
      for (const w of [...waiters]) w();
    }
  });
  child.stderr.on('data', (c) => {
    err = (err + c).slice(-500);
  });
  child.on('error', () => {});
  const exited = new Promise((r) => child.once('exit', r));
  child.on('exit', () => {
    for (const w of [...waiters]) w();
  });
  return {
    /** The time of the first event since index `from` matching `pred`. */
    next(pred, from, timeoutMs, what) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const e = events.slice(from).find(pred);
          if (e) {
            done();
            resolve(e.t);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            done();
            reject(new Error(`kubectl watch of ${kind} exited: ${err.trim()}`));
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`));
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    get length() {
      return events.length;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(-child.pid, 'SIGTERM');
      } catch {}
      await exited;
    },
  };
}

/**
 * @param {{ n?: number, log: (m: string) => void }} o
 * @returns {Promise<object>} `{ exportToImportSecMedian, exportToImportSecMax, withdrawSecMedian, n, … }` or `{ skipped }`
 */
export async function k8sExportImport({ n = 5, log }) {
  const bin = kubernetesBin();
  if (!bin) return { skipped: 'Kubernetes binaries are not built: run scripts/k8s/build (once, ~5-10 min on 2 cores; cached in ~/.cache/ztm-k8s)' };
  const help = await runCmd(node, [AGENT_BIN, 'run', '--help']).catch(() => '');
  if (!/--kubeconfig/.test(help)) return { skipped: 'the agent has no Kubernetes mode (ztm-agent run --kubeconfig)' };
  const addr = advertiseAddress();
  if (!addr) return { skipped: 'no non-loopback IPv4 address here: API servers refuse 127.0.0.0/8 in EndpointSlices (set ZTM_BENCH_K8S_ADVERTISE)' };
  const kubectlBin = join(bin, 'kubectl');
  const dir = join(runDir(), 'k8s');
  mkdirSync(dir, { recursive: true });
  // scripts/k8s/down, also on a signal (cleanupAll runs this before it
  // kills what procs.mjs started; runCmd refuses by then, so execFile).
  const down = () => new Promise((r) => execFile(join(K8S_SCRIPTS, 'down'), [dir], { timeout: 60_000 }, () => r()));
  onCleanup(down);
  const procs = [];
  const watchers = [];
  try {
    const t0 = performance.now();
    const up = await runCmd(join(K8S_SCRIPTS, 'up'), [dir, 'east', 'west'], { env: { ZTM_K8S_KWOK: '0' }, timeoutMs: 300_000 });
    // Their components run in sessions of their own (setsid): recorded for
    // scripts/bench/run's last-resort cleanup.
    for (const c of ['east', 'west']) {
      for (const comp of COMPONENTS) {
        try {
          recordPid(Number(readFileSync(join(dir, c, `${comp}.pid`), 'utf8').trim()));
        } catch {}
      }
    }
    const clustersUpSec = (performance.now() - t0) / 1000;
    log(`kubernetes: east and west up in ${clustersUpSec.toFixed(1)} s (${up.trim().split('\n').length} clusters)`);
    const clusters = {};
    for (const name of ['east', 'west']) {
      const env = Object.fromEntries(
        readFileSync(join(dir, name, 'cluster.env'), 'utf8')
          .split('\n')
          .filter((l) => l.includes('='))
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
      const kubeconfig = join(dir, `${name}.kubeconfig`);
      clusters[name] = {
        name,
        kubeconfig,
        server: env.ZTM_K8S_SERVER,
        ca: env.ZTM_K8S_CA,
        kubectl: (args, input) => runCmd(kubectlBin, ['--kubeconfig', kubeconfig, '--request-timeout=15s', ...args], { input, timeoutMs: 30_000 }),
      };
    }

    // ---- hub and the two cluster agents ----
    const base = join(dir, 'mesh');
    mkdirSync(base, { recursive: true });
    const { serve, permits } = await initHub({ tag: 'k8s', base, names: ['east', 'west'], mesh: 'benchmcs' });
    const hub = serve();
    procs.push(hub);
    await waitLog(hub, /"hub listening"/);
    const agents = {};
    await Promise.all(
      Object.values(clusters).map(async (c) => {
        // The shipped namespace and RBAC; the agent runs with its ServiceAccount's token.
        await c.kubectl(['apply', '-f', join(MANIFESTS, 'namespace.yaml'), '-f', join(MANIFESTS, 'rbac.yaml')]);
        const token = (await c.kubectl(['create', 'token', 'ztm-agent', '-n', 'ztm-system', '--duration', '2h'])).trim();
        const kubeconfig = join(base, `${c.name}-agent.kubeconfig`);
        writeFileSync(
          kubeconfig,
          `apiVersion: v1
kind: Config
clusters:
- name: ${c.name}
  cluster:
    server: ${c.server}
    certificate-authority-data: ${readFileSync(c.ca).toString('base64')}
users:
- name: ztm-agent
  user:
    token: ${token}
contexts:
- name: ${c.name}
  context: {cluster: ${c.name}, user: ztm-agent}
current-context: ${c.name}
`,
          { mode: 0o600 },
        );
        const data = join(base, c.name);
        await runCmd(node, [AGENT_BIN, 'join', '--permit', permits[c.name], '--data', data, '--kubeconfig', kubeconfig, '--cluster-id', c.name, '--json']);
        const h = start(`k8s-agent-${c.name}`, node, [
          ...binNodeArgs(AGENT_BIN),
          AGENT_BIN,
          'run',
          '--data',
          data,
          '--kubeconfig',
          kubeconfig,
          '--advertise-address',
          addr,
        ]);
        procs.push(h);
        agents[c.name] = h;
        await waitLog(h, /"msg":"online"/, 30_000);
        await waitLog(h, /"msg":"kubernetes mode on"/, 60_000);
        await c.kubectl(['create', 'namespace', 'demo']);
      }),
    );
    const { east, west } = clusters;

    // ---- the Services to export, made beforehand ----
    const names = Array.from({ length: n }, (_, i) => `bench-${i + 1}`);
    await east.kubectl(
      ['apply', '-f', '-'],
      names
        .map(
          (s) => `apiVersion: v1
kind: Service
metadata: {name: ${s}, namespace: demo}
spec:
  ports: [{name: tcp, port: 7, protocol: TCP, targetPort: 9}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${s}-manual
  namespace: demo
  labels: {kubernetes.io/service-name: ${s}, endpointslice.kubernetes.io/managed-by: ztm-bench}
addressType: IPv4
endpoints: [{addresses: [${addr}], conditions: {ready: true}}]
ports: [{name: tcp, port: 9, protocol: TCP}]
`,
        )
        .join('---\n'),
    );
    const seWatch = watch(kubectlBin, east.kubeconfig, SE, 'demo');
    const siWatch = watch(kubectlBin, west.kubeconfig, SI, 'demo');
    watchers.push(seWatch, siWatch);
    // The watches list first, then stream; give them time to be established.
    await sleep(2000);

    const samples = { exportToImport: [], exportToIps: [], withdraw: [] };
    for (const s of names) {
      let from = { se: seWatch.length, si: siWatch.length };
      await east.kubectl(['apply', '-f', '-'], `apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata: {name: ${s}, namespace: demo}\n`);
      const created = await seWatch.next((e) => e.type === 'ADDED' && e.name === s, from.se, 15_000, `ServiceExport demo/${s} in east`);
      const present = await siWatch.next((e) => e.type === 'ADDED' && e.name === s, from.si, 60_000, `ServiceImport demo/${s} in west`);
      const withIps = await siWatch.next((e) => e.type !== 'DELETED' && e.name === s && e.ip, from.si, 60_000, `ServiceImport demo/${s} with spec.ips in west`);
      samples.exportToImport.push((present - created) / 1000);
      samples.exportToIps.push((withIps - created) / 1000);
      // Let the import settle (status, EndpointSlices) before taking it away.
      await sleep(1000);
      from = { se: seWatch.length, si: siWatch.length };
      await east.kubectl(['delete', SE, s, '-n', 'demo', '--wait=false']);
      const deleted = await seWatch.next((e) => e.type === 'DELETED' && e.name === s, from.se, 15_000, `ServiceExport demo/${s} deleted in east`);
      const gone = await siWatch.next((e) => e.type === 'DELETED' && e.name === s, from.si, 90_000, `ServiceImport demo/${s} gone in west`);
      samples.withdraw.push((gone - deleted) / 1000);
      log(
        `kubernetes ${s}: export → import ${((present - created) / 1000).toFixed(3)} s (with IP ${((withIps - created) / 1000).toFixed(3)} s); unexport → gone ${((gone - deleted) / 1000).toFixed(3)} s`,
      );
      await sleep(500);
    }
    const problems = readFileSync(agents.west.log, 'utf8')
      .split('\n')
      .filter((l) => /"level":(40|50)/.test(l) && /reconcile|mcs/.test(l)).length;
    return {
      n,
      exportToImportSecMedian: r3(median(samples.exportToImport)),
      exportToImportSecMax: r3(Math.max(...samples.exportToImport)),
      exportToIpsSecMedian: r3(median(samples.exportToIps)),
      exportToIpsSecMax: r3(Math.max(...samples.exportToIps)),
      withdrawSecMedian: r3(median(samples.withdraw)),
      withdrawSecMax: r3(Math.max(...samples.withdraw)),
      clustersUpSec: Math.round(clustersUpSec),
      advertiseAddress: addr,
      importerWarnings: problems,
      samples: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, v.map(r3)])),
    };
  } finally {
    for (const w of watchers) await w.stop();
    // The agents at once (an agent takes 2 s to stop), then the hub.
    await Promise.all(procs.slice(1).map((h) => stop(h)));
    if (procs[0]) await stop(procs[0]);
    await down();
  }
}
