/**
 * Multicluster-services test kit: real Kubernetes control planes from
 * scripts/k8s/up, network namespaces that give agents and backends real
 * non-loopback addresses (API servers refuse 127.0.0.0/8 in EndpointSlices),
 * a hub every namespace can reach, cluster agents enrolled with a cluster id
 * and running with a ServiceAccount token bound to the shipped RBAC
 * (docker/k8s/rbac.yaml), never as admin. Every helper registers its
 * teardown.
 *
 * Addresses: each "site" (network namespace) gets a veth pair in a /30 of
 * 10.231.X.0/24, X picked at random among octets no interface here uses:
 * the host side (.1) and the namespace side (.2). A namespace has no default
 * route, so it reaches only its host side: the hub, its API server (through a
 * forwarder the test runs there) and backends bound to that address.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENT_BIN, Daemon, HUB_BIN, type RunResult, agentCli, freePort, hubCli, testDir, waitFor } from './index.js';

type T = { teardown(fn: () => unknown): void };

const root = resolve(fileURLToPath(import.meta.url), '../../..');
const K8S_SCRIPTS = join(root, 'scripts/k8s');
export const K8S_MANIFESTS = join(root, 'docker/k8s');

function sh(
  cmd: string,
  args: string[],
  opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, ...opts.env } },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? ((err as unknown as { code: number }).code as number) : 1) : 0;
        resolvePromise({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

let kubeBin: string | null | undefined;
/** The directory of the cached Kubernetes binaries, or null if not built. */
export function kubernetesBin(): string | null {
  if (kubeBin !== undefined) return kubeBin;
  try {
    kubeBin = execFileSync('bash', ['-c', `. "${K8S_SCRIPTS}/lib.sh" && k8s_binaries_present && echo "$K8S_BIN"`], { encoding: 'utf8' }).trim() || null;
  } catch {
    kubeBin = null;
  }
  return kubeBin;
}

/** Why the Kubernetes tests cannot run here, or false. */
export function k8sSkipReason(): string | false {
  if (process.env.ZTM_K8S_SKIP) return process.env.ZTM_K8S_SKIP;
  if (!kubernetesBin()) return 'Kubernetes binaries are not built: run scripts/k8s/build (scripts/test does, ~8 min the first time)';
  return false;
}

let netnsProbe: string | false | undefined;
/** Why network namespaces cannot be used here, or false. */
export function netnsSkipReason(): string | false {
  if (netnsProbe !== undefined) return netnsProbe;
  if (process.getuid?.() !== 0) {
    netnsProbe = 'not root: network namespaces need CAP_SYS_ADMIN';
    return netnsProbe;
  }
  const name = `ztm-probe-${process.pid}`;
  try {
    execFileSync('ip', ['netns', 'add', name], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    netnsProbe = false;
  } catch (err) {
    netnsProbe = `ip netns does not work here (${(err as Error).message.split('\n')[0]})`;
  }
  return netnsProbe;
}

// ---- clusters ---------------------------------------------------------------------------

export interface Cluster {
  name: string;
  /** Admin kubeconfig (for the test's own checks and setup only). */
  kubeconfig: string;
  server: string;
  apiPort: number;
  caPem: string;
  dir: string;
  kubectl(args: string[], input?: string): Promise<string>;
  /** kubectl that may fail: the result. */
  kubectlTry(args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }>;
  apply(yaml: string): Promise<void>;
  /** `kubectl get -o json`, or null when NotFound. */
  get<V = KubeJson>(kind: string, name: string, namespace?: string): Promise<V | null>;
  list<V = KubeJson>(kind: string, namespace?: string, selector?: string): Promise<V[]>;
}

// biome-ignore lint/suspicious/noExplicitAny: kubectl JSON
export type KubeJson = Record<string, any>;

/** Start one API server (+ etcd, controller-manager, scheduler, KWOK) per name. */
export async function startClusters(t: T, names: string[]): Promise<Record<string, Cluster>> {
  const dir = mkdtempSync(join(tmpdir(), 'ztm-k8s-'));
  t.teardown(async () => {
    await sh(join(K8S_SCRIPTS, 'down'), [dir], { timeoutMs: 60_000 });
    rmSync(dir, { recursive: true, force: true });
  });
  const up = await sh(join(K8S_SCRIPTS, 'up'), [dir, ...names], { timeoutMs: 240_000 });
  if (up.code !== 0) throw new Error(`scripts/k8s/up failed: ${up.stderr.trim().split('\n').slice(-10).join('\n')}`);
  const kubectlBin = join(kubernetesBin() as string, 'kubectl');
  const out: Record<string, Cluster> = {};
  for (const name of names) {
    const kubeconfig = join(dir, `${name}.kubeconfig`);
    const env = Object.fromEntries(
      readFileSync(join(dir, name, 'cluster.env'), 'utf8')
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    const server = env.ZTM_K8S_SERVER as string;
    const kubectlTry = (args: string[], input?: string) => sh(kubectlBin, ['--kubeconfig', kubeconfig, '--request-timeout=15s', ...args], { input });
    const kubectl = async (args: string[], input?: string) => {
      const r = await kubectlTry(args, input);
      if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} (cluster ${name}): ${r.stderr.trim()}`);
      return r.stdout;
    };
    out[name] = {
      name,
      kubeconfig,
      server,
      apiPort: Number(new URL(server).port),
      caPem: readFileSync(env.ZTM_K8S_CA as string, 'utf8'),
      dir: join(dir, name),
      kubectl,
      kubectlTry,
      apply: async (yaml) => {
        await kubectl(['apply', '-f', '-'], yaml);
      },
      get: async (kind, n, ns) => {
        const r = await kubectlTry(['get', kind, n, ...(ns ? ['-n', ns] : []), '-o', 'json']);
        if (r.code !== 0) {
          if (/NotFound|not found/.test(r.stderr)) return null;
          throw new Error(`kubectl get ${kind} ${n}: ${r.stderr.trim()}`);
        }
        return JSON.parse(r.stdout);
      },
      list: async (kind, ns, selector) => {
        const r = await kubectl(['get', kind, ...(ns ? ['-n', ns] : ['-A']), ...(selector ? ['-l', selector] : []), '-o', 'json']);
        return JSON.parse(r).items;
      },
    };
  }
  return out;
}

/** Kill a cluster's kube-apiserver; returns a function that starts it again
 * with the same command line, data and certificates (same etcd). */
export async function stopApiServer(c: Cluster): Promise<() => Promise<void>> {
  const pidFile = join(c.dir, 'kube-apiserver.pid');
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  process.kill(pid, 'SIGKILL');
  await waitFor(() => !alive(pid), { timeoutMs: 10_000, what: 'kube-apiserver to exit' });
  return async () => {
    const { openSync } = await import('node:fs');
    const logFd = openSync(join(c.dir, 'kube-apiserver.log'), 'a');
    const child = spawn(argv[0] as string, argv.slice(1), { detached: true, stdio: ['ignore', logFd, logFd] });
    child.unref();
    writeFileSync(pidFile, `${child.pid}\n`);
    await waitFor(async () => (await c.kubectlTry(['get', '--raw', '/readyz'])).stdout.trim() === 'ok', {
      timeoutMs: 60_000,
      intervalMs: 300,
      what: `kube-apiserver of ${c.name} ready again`,
    });
  };
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

// ---- sites: network namespaces -----------------------------------------------------

export interface Site {
  name: string;
  /** The network namespace, or null when running without one (fallback). */
  netns: string | null;
  /** Address on the host side: the hub, forwarders and backends listen here. */
  hostAddr: string;
  /** Address inside the namespace: the agent advertises and listens here. */
  nsAddr: string;
  /** Command prefix that runs a program inside the site. */
  prefix: string[];
}

function usedOctets(): Set<number> {
  const used = new Set<number>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      const m = /^10\.231\.(\d+)\./.exec(a.address);
      if (m) used.add(Number(m[1]));
    }
  }
  return used;
}

/** A network namespace joined to the host by a veth pair in its own /30. */
export async function createSite(t: T, name: string): Promise<Site> {
  const skip = netnsSkipReason();
  if (skip) {
    // Fallback: no isolation; a non-loopback address of this machine.
    const addr = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    if (!addr) throw new Error(`no network namespaces (${skip}) and no non-loopback IPv4 address to fall back on`);
    return { name, netns: null, hostAddr: addr, nsAddr: addr, prefix: [] };
  }
  const used = usedOctets();
  let octet = 0;
  for (let i = 0; i < 50 && (octet === 0 || used.has(octet)); i++) octet = 1 + Math.floor(Math.random() * 250);
  const tag = `${process.pid.toString(36)}${octet.toString(36)}`.slice(-8);
  const netns = `ztm-${name}-${tag}`;
  const hostIf = `zh${tag}`.slice(0, 15);
  const nsIf = `zn${tag}`.slice(0, 15);
  const hostAddr = `10.231.${octet}.1`;
  const nsAddr = `10.231.${octet}.2`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  ip('netns', 'add', netns);
  t.teardown(() => {
    try {
      execFileSync('ip', ['link', 'del', hostIf], { stdio: 'ignore' });
    } catch {}
    try {
      execFileSync('ip', ['netns', 'del', netns], { stdio: 'ignore' });
    } catch {}
  });
  ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
  ip('link', 'set', nsIf, 'netns', netns);
  ip('addr', 'add', `${hostAddr}/30`, 'dev', hostIf);
  ip('link', 'set', hostIf, 'up');
  ip('netns', 'exec', netns, 'ip', 'link', 'set', 'lo', 'up');
  ip('netns', 'exec', netns, 'ip', 'addr', 'add', `${nsAddr}/30`, 'dev', nsIf);
  ip('netns', 'exec', netns, 'ip', 'link', 'set', nsIf, 'up');
  return { name, netns, hostAddr, nsAddr, prefix: ['ip', 'netns', 'exec', netns] };
}

/** Run a short Node script inside a site; resolves with its output. */
export async function nodeIn(site: Site, script: string, timeoutMs = 20_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const [cmd, ...args] = [...site.prefix, process.execPath, '-e', script];
  return sh(cmd as string, args, { timeoutMs });
}

/** A TCP forwarder in the test process: host → target, which can be cut
 * (every connection dropped, new ones refused) and restored. */
export class TcpForwarder {
  readonly host: string;
  port = 0;
  #server: net.Server | undefined;
  readonly #target: { host: string; port: number };
  readonly #sockets = new Set<net.Socket>();

  private constructor(host: string, target: { host: string; port: number }) {
    this.host = host;
    this.#target = target;
  }

  static async start(t: T, host: string, target: { host: string; port: number }): Promise<TcpForwarder> {
    const f = new TcpForwarder(host, target);
    await f.resume();
    t.teardown(() => f.pause());
    return f;
  }

  async resume(): Promise<void> {
    if (this.#server) return;
    const server = net.createServer((client) => {
      const upstream = net.connect(this.#target);
      this.#sockets.add(client).add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.#sockets.delete(client);
        this.#sockets.delete(upstream);
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream).pipe(client);
    });
    server.listen(this.port, this.host);
    await once(server, 'listening');
    this.port = (server.address() as net.AddressInfo).port;
    this.#server = server;
  }

  async pause(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    for (const sock of this.#sockets) sock.destroy();
    this.#sockets.clear();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}

// ---- processes ---------------------------------------------------------------------------

/** A daemon whose JSON logs are captured; may run inside a site. */
/** A daemon inside a site's network namespace (or on the host when site is null). */
export class SiteDaemon extends Daemon {
  constructor(site: Site | null, bin: string, args: string[], env?: NodeJS.ProcessEnv) {
    super(bin, args, env, site?.prefix ?? []);
  }

  override waitLog(match: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    return super.waitLog(match, timeoutMs);
  }
}

// ---- hub and cluster agents -------------------------------------------------------------

export interface MeshHub {
  dir: string;
  port: number;
  daemon: SiteDaemon;
  cli(args: string[]): Promise<RunResult>;
  permit(name: string): Promise<string>;
  /** Stop (SIGTERM) and start again on the same data and port. */
  restart(): Promise<void>;
}

/** A hub on 0.0.0.0 whose certificate names the host side of every site. */
export async function startMeshHub(t: T, sites: Site[], serveArgs: string[] = []): Promise<MeshHub> {
  const base = testDir(t as never);
  const dir = join(base, 'hub');
  const port = await freePort();
  const names = [...new Set(['127.0.0.1', ...sites.map((s) => s.hostAddr)])].map((h) => `${h}:${port}`);
  const init = await hubCli(['init', '--data', dir, '--names', names.join(','), '--mesh', 'mcs']);
  if (init.code !== 0) throw new Error(`hub init failed: ${init.stderr}`);
  const daemons: SiteDaemon[] = [];
  const serve = () => {
    const d = new SiteDaemon(null, HUB_BIN, ['serve', '--data', dir, '--listen', `0.0.0.0:${port}`, '--log-level', 'debug', ...serveArgs]);
    daemons.push(d);
    return d;
  };
  t.teardown(async () => {
    await Promise.all(daemons.map((d) => d.stop('SIGKILL')));
    const keep = process.env.ZTM_TEST_LOGS;
    if (keep) {
      mkdirSync(keep, { recursive: true });
      for (const [i, d] of daemons.entries()) writeFileSync(join(keep, `hub-${i}.log`), `${d.output}\n--- stderr ---\n${d.stderr}`);
    }
  });
  const hub: MeshHub = {
    dir,
    port,
    daemon: serve(),
    async restart() {
      await hub.daemon.stop('SIGTERM');
      hub.daemon = serve();
      await hub.daemon.waitLog((l) => l.msg === 'hub listening');
    },
    cli: (args) => hubCli([...args, '--data', dir]),
    async permit(name) {
      const file = join(base, `${name}-${Date.now()}.permit.json`);
      const r = await hubCli(['permit', 'create', name, '--data', dir, '--out', file]);
      if (r.code !== 0) throw new Error(`permit create failed: ${r.stderr}`);
      return file;
    },
  };
  await hub.daemon.waitLog((l) => l.msg === 'hub listening');
  return hub;
}

/** Apply the shipped namespace + RBAC and make a kubeconfig for the agent's
 * ServiceAccount token, reaching the API server through a forwarder on the
 * site's host side. */
export async function agentKubeconfig(t: T, c: Cluster, site: Site): Promise<{ file: string; forwarder: TcpForwarder }> {
  await c.kubectl(['apply', '-f', join(K8S_MANIFESTS, 'namespace.yaml'), '-f', join(K8S_MANIFESTS, 'rbac.yaml')]);
  const token = (await c.kubectl(['create', 'token', 'ztm-agent', '-n', 'ztm-system', '--duration', '2h'])).trim();
  const forwarder = await TcpForwarder.start(t, site.hostAddr, { host: '127.0.0.1', port: c.apiPort });
  const file = join(testDir(t as never), `${c.name}-agent.kubeconfig`);
  writeFileSync(
    file,
    `apiVersion: v1
kind: Config
clusters:
- name: ${c.name}
  cluster:
    server: https://${forwarder.host}:${forwarder.port}
    tls-server-name: localhost
    certificate-authority-data: ${Buffer.from(c.caPem).toString('base64')}
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
  return { file, forwarder };
}

export interface ClusterAgent {
  name: string;
  dir: string;
  site: Site;
  daemon: SiteDaemon;
  kubeconfig: string;
  forwarder: TcpForwarder;
  cli(args: string[]): Promise<RunResult>;
  /** `ztm-agent status --json`. */
  status(): Promise<KubeJson>;
  start(): Promise<void>;
}

/** Permit, join (cluster id bound at enrolment) and run a cluster agent inside its site. */
export async function startClusterAgent(
  t: T,
  hub: MeshHub,
  c: Cluster,
  site: Site,
  opts: { clusterId?: string; runArgs?: string[] } = {},
): Promise<ClusterAgent> {
  const { file, forwarder } = await agentKubeconfig(t, c, site);
  mkdirSync(join(testDir(t as never), 'agents'), { recursive: true });
  const dir = join(testDir(t as never), 'agents', c.name);
  const permit = await hub.permit(c.name);
  const join_ = await agentCli([
    'join',
    '--permit',
    permit,
    '--data',
    dir,
    '--hub',
    `127.0.0.1:${hub.port}`,
    '--kubeconfig',
    file,
    ...(opts.clusterId ? ['--cluster-id', opts.clusterId] : []),
    '--json',
  ]);
  if (join_.code !== 0) throw new Error(`join ${c.name} failed: ${join_.stderr}`);
  const daemons: SiteDaemon[] = [];
  t.teardown(async () => {
    await Promise.all(daemons.map((d) => d.stop('SIGKILL')));
    // ZTM_TEST_LOGS=DIR keeps every agent's logs for a post-mortem.
    const keep = process.env.ZTM_TEST_LOGS;
    if (keep) {
      mkdirSync(keep, { recursive: true });
      for (const [i, d] of daemons.entries()) writeFileSync(join(keep, `agent-${c.name}-${i}.log`), `${d.output}\n--- stderr ---\n${d.stderr}`);
    }
  });
  const agent: ClusterAgent = {
    name: c.name,
    dir,
    site,
    kubeconfig: file,
    forwarder,
    daemon: undefined as unknown as SiteDaemon,
    cli: (args) => agentCli([...args, '--data', dir]),
    async status() {
      const r = await agentCli(['status', '--json', '--data', dir]);
      if (r.code !== 0) throw new Error(`status: ${r.stderr}`);
      return JSON.parse(r.stdout);
    },
    async start() {
      const d = new SiteDaemon(site, AGENT_BIN, [
        'run',
        '--data',
        dir,
        '--log-level',
        'debug',
        '--hub',
        `${site.hostAddr}:${hub.port}`,
        '--kubeconfig',
        file,
        '--advertise-address',
        site.nsAddr,
        ...(opts.runArgs ?? []),
      ]);
      daemons.push(d);
      agent.daemon = d;
      await d.waitLog((l) => l.msg === 'online');
      await d.waitLog((l) => l.msg === 'kubernetes mode on');
    },
  };
  await agent.start();
  return agent;
}

/** A Service `ns/name` without selector and an EndpointSlice naming `addr:port`. */
export function backendManifest(ns: string, name: string, addr: string, targetPort: number, servicePort = 7, extra = ''): string {
  return `apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: ${ns}}
spec:
  ports: [{name: tcp, port: ${servicePort}, protocol: TCP, targetPort: ${targetPort}}]
${extra}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${name}-manual
  namespace: ${ns}
  labels: {kubernetes.io/service-name: ${name}, endpointslice.kubernetes.io/managed-by: ztm-test}
addressType: IPv4
endpoints: [{addresses: [${addr}], conditions: {ready: true}}]
ports: [{name: tcp, port: ${targetPort}, protocol: TCP}]
`;
}

export const serviceExport = (ns: string, name: string) => `apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: ${name}, namespace: ${ns}}
`;

/** The condition `type` of an object's status, or undefined. */
export function condition(obj: KubeJson | null, type: string): { status: string; reason: string; message: string } | undefined {
  return (obj?.status?.conditions ?? []).find((c: { type: string }) => c.type === type);
}

/** A TCP echo server on `host` (a site's host side): what a pod would be. */
export async function echoServerOn(t: T, host: string): Promise<{ port: number; connections: () => number }> {
  let n = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    n++;
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  server.listen(0, host);
  await once(server, 'listening');
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, connections: () => n };
}

/** A UDP echo server on `host`. */
export async function udpEchoServerOn(t: T, host: string): Promise<{ port: number }> {
  const { createSocket } = await import('node:dgram');
  const sock = createSocket('udp4');
  sock.on('message', (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
  sock.bind(0, host);
  await once(sock, 'listening');
  t.teardown(() => sock.close());
  return { port: sock.address().port };
}

/** Node script for nodeIn(): send one datagram, print the echo (or ERR). */
export const udpClientScript = (host: string, port: number, text: string) =>
  `const s=require('dgram').createSocket('udp4');const go=()=>s.send(${JSON.stringify(text)},${port},${JSON.stringify(host)});` +
  `const iv=setInterval(go,500);go();setTimeout(()=>{console.log('ERR timeout');process.exit(2)},8000);` +
  `s.on('message',m=>{clearInterval(iv);process.stdout.write('OK '+m);process.exit(0)})`;

/** Node script for nodeIn(): connect, send `text`, print the echo (or the error). */
export const echoClientScript = (host: string, port: number, text: string) =>
  `const s=require('net').connect(${port},${JSON.stringify(host)},()=>s.end(${JSON.stringify(text)}));let b='';` +
  `s.setTimeout(8000,()=>{console.log('ERR timeout');process.exit(2)});` +
  `s.on('data',d=>b+=d);s.on('end',()=>{process.stdout.write('OK '+b)});s.on('error',e=>{console.log('ERR '+e.code);process.exit(1)})`;

export { sh };
