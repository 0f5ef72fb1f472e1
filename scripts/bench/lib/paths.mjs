// The paths a byte takes from client to target, one per scenario, each brought
// up on loopback with its own processes and the same three targets behind it:
// an iperf3 server (its own), the shared echo server, the shared slow sink and
// the shared stalled sink.
//
// A path is { name, ports: { iperf, echo, sink, stall }, roles: { entry?, relay?, exit? }
// (pids whose process trees are sampled), notes, stop() }.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, runCmd, runDir, sleep, start, stop, waitLog, waitPort } from './procs.mjs';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const HUB_BIN = join(ROOT, 'packages/hub/bin/ztm-hub.js');
export const AGENT_BIN = join(ROOT, 'packages/agent/bin/ztm-agent.js');

const TARGETS = ['iperf', 'echo', 'sink', 'stall'];

/** The Node flags a bin's shebang gives it (`#!/usr/bin/env -S node FLAGS`):
 * installed binaries run with them (systemd, the image, npm's bin links), so
 * the daemons are measured with them too; a tree whose bins have none (an
 * older baseline) runs as it did. */
export function binNodeArgs(bin) {
  if (!existsSync(bin)) return [];
  const m = /^#!\S*env -S node((?: --\S+)*)\s*$/m.exec(readFileSync(bin, 'utf8').split('\n', 1)[0] ?? '');
  return m ? m[1].trim().split(/\s+/).filter(Boolean) : [];
}

/** One echo round trip through `port`, retried until it works (the path is
 * routed) or the deadline passes. */
export async function probeEcho(port, timeoutMs = 20_000) {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const ok = await new Promise((r) => {
      const s = connect(port, '127.0.0.1');
      const t = setTimeout(() => {
        s.destroy();
        r(false);
      }, 2000);
      s.once('connect', () => s.write('ping'));
      s.once('data', () => {
        clearTimeout(t);
        s.destroy();
        r(true);
      });
      s.once('error', (e) => {
        last = e.code ?? e.message;
        clearTimeout(t);
        r(false);
      });
      s.once('close', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`no echo through port ${port} (${last || 'closed'})`);
    await sleep(100);
  }
}

/** Targets shared by every path: echo server, slow sink and stalled sink
 * (rr), plus one iperf3 server per path (an iperf3 server runs one test at a
 * time). */
export async function startTargets(rr) {
  const echo = await freePort();
  const sink = await freePort();
  const stall = await freePort();
  const e = start('echo', rr, ['echo', String(echo)]);
  const s = start('sink', rr, ['sink', String(sink), String(SINK_BYTES_PER_SEC)]);
  const st = start('stall', rr, ['sink', String(stall), '1000000000000', String(STALL_MS)]);
  await waitPort(echo, 5000, 'echo server');
  await waitPort(sink, 5000, 'sink server');
  await waitPort(stall, 5000, 'stalled sink');
  return { echo, sink, stall, procs: [e, s, st] };
}

/** The port of each of TARGETS behind a path: its own iperf3 server and the
 * shared ones. */
function targetPortsOf(targets, iperf) {
  return Object.fromEntries(TARGETS.map((t) => [t, t === 'iperf' ? iperf : targets[t]]));
}

/** The slow far end of the bounded-memory check: 8 MB/s. */
export const SINK_BYTES_PER_SEC = 8_000_000;
/** The stalled far end: reads nothing for this long after accepting a
 * connection (longer than a push and its sampling), then all it gets. */
export const STALL_MS = 5000;

async function iperfServer(name) {
  const port = await freePort();
  const h = start(`iperf3-${name}`, 'iperf3', ['-s', '-p', String(port), '-B', '127.0.0.1']);
  await waitPort(port, 5000, `iperf3 server for ${name}`);
  return { port, h };
}

// ---- direct ----
export async function direct(targets) {
  const ip = await iperfServer('direct');
  return {
    name: 'direct',
    ports: targetPortsOf(targets, ip.port),
    roles: {},
    notes: 'client → target on loopback',
    stop: () => stop(ip.h),
  };
}

// ---- ztm ----
const node = process.execPath;

/** The allocator: glibc malloc, as the product ships; ZTM_BENCH_MALLOC=jemalloc
 * preloads libjemalloc.so.2 into the ztm processes (the opt-in the systemd
 * units and the image describe: less hub RSS per idle agent, more CPU per byte). */
export const MALLOC =
  process.env.ZTM_BENCH_MALLOC === 'jemalloc'
    ? { name: 'jemalloc (ZTM_BENCH_MALLOC=jemalloc)', env: jemallocEnv('ZTM_BENCH_MALLOC=jemalloc') }
    : { name: 'glibc malloc', env: {} };

/** The environment that preloads jemalloc; throws, naming `who`, where it is
 * not installed (ld.so would only warn and run on glibc malloc). */
export function jemallocEnv(who) {
  try {
    if (/libjemalloc\.so\.2 /.test(execFileSync('ldconfig', ['-p']).toString())) return { LD_PRELOAD: 'libjemalloc.so.2' };
  } catch {}
  throw new Error(`${who}: libjemalloc.so.2 not found (apt install libjemalloc2)`);
}

/** A hub through the real CLI, as an operator makes one: `init` on a free
 * loopback port, a permit per name in `names` (files `base/<name>.permit.json`,
 * made on the data directory before the hub serves), the per-address
 * enrolment rate limit lifted where this hub has one (the load generator
 * enrols thousands of endpoints from 127.0.0.1). `serve()` starts it (the
 * caller waits for "hub listening"); it may be called again to restart it. */
export async function initHub({ tag, base, names, mesh = 'bench', nodeArgs = [], serveArgs = [], root = ROOT, env = MALLOC.env }) {
  const HUB_BIN = join(root, 'packages/hub/bin/ztm-hub.js');
  const hubPort = await freePort();
  const hubAddr = `127.0.0.1:${hubPort}`;
  const hubDir = join(base, 'hub');
  const permits = {};
  await runCmd(node, [HUB_BIN, 'init', '--data', hubDir, '--names', hubAddr, '--mesh', mesh]);
  const hubConfig = join(base, 'hub.yaml');
  writeFileSync(hubConfig, 'enrolPerMinute: 100000000\n');
  // The permits (the registry takes concurrent writers) and the config check
  // at once: each command is a process that starts in 0.4–0.9 s.
  const [configArgs] = await Promise.all([
    runCmd(node, [HUB_BIN, 'config', 'check', '--config', hubConfig]).then(
      () => ['--config', hubConfig],
      () => [],
    ),
    ...names.map((name) => {
      permits[name] = join(base, `${name}.permit.json`);
      return runCmd(node, [HUB_BIN, 'permit', 'create', name, '--data', hubDir, '--out', permits[name]]);
    }),
  ]);
  const serve = () =>
    start(`${tag}-hub`, node, [...binNodeArgs(HUB_BIN), ...nodeArgs, HUB_BIN, 'serve', '--data', hubDir, '--listen', hubAddr, ...configArgs, ...serveArgs], {
      env,
    });
  return { hubAddr, hubDir, permits, serve };
}

/** A hub, entry agent A and exit agent B through the real CLIs, tunnels
 * tcp/bench-iperf, tcp/bench-echo, tcp/bench-sink. `nodeArgs` go before the
 * bin (profiling; ZTM_BENCH_NODE_ARGS adds to them, for experiments with V8
 * flags, which NODE_OPTIONS refuses); `hubEnv` is added to the hub's
 * environment only. */
export async function ztm(targets, { tag = 'ztm', nodeArgs: args = [], iperfPort, root = ROOT, env = MALLOC.env, hubEnv = {} } = {}) {
  const nodeArgs = [...args, ...(process.env.ZTM_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean)];
  const AGENT_BIN = join(root, 'packages/agent/bin/ztm-agent.js');
  const base = join(runDir(), tag);
  mkdirSync(base, { recursive: true });
  const ip = iperfPort ? null : await iperfServer(tag);
  const targetPorts = targetPortsOf(targets, iperfPort ?? ip.port);
  const ports = {};
  for (const t of TARGETS) ports[t] = await freePort();
  const agents = { a: { dir: join(base, 'a') }, b: { dir: join(base, 'b') } };
  // Through the CLIs, as an operator would, with what can run at once in
  // parallel: permits are made on the data directory before the hub serves,
  // tunnels are saved before the agents run (they open at start).
  const { hubAddr, hubDir, serve } = await initHub({ tag, base, names: ['a', 'b'], nodeArgs, root, env: { ...env, ...hubEnv } });
  let hub = serve();
  await waitLog(hub, /"hub listening"/);
  const agentCli = (args) => runCmd(node, [AGENT_BIN, ...args]);
  await Promise.all([
    (async () => {
      await agentCli(['join', '--permit', join(base, 'b.permit.json'), '--data', agents.b.dir]);
      for (const t of TARGETS)
        await agentCli(['tunnel', 'open', 'outbound', `tcp/bench-${t}`, '--target', `127.0.0.1:${targetPorts[t]}`, '--data', agents.b.dir]);
    })(),
    (async () => {
      await agentCli(['join', '--permit', join(base, 'a.permit.json'), '--data', agents.a.dir]);
      for (const t of TARGETS) await agentCli(['tunnel', 'open', 'inbound', `tcp/bench-${t}`, '--listen', `127.0.0.1:${ports[t]}`, '--data', agents.a.dir]);
    })(),
  ]);
  for (const name of ['b', 'a'])
    agents[name].h = start(`${tag}-agent-${name}`, node, [...binNodeArgs(AGENT_BIN), ...nodeArgs, AGENT_BIN, 'run', '--data', agents[name].dir], { env });
  await waitLog(agents.a.h, /"msg":"online"/);
  await waitLog(agents.b.h, /"msg":"online"/);
  await probeEcho(ports.echo);
  const path = {
    name: tag,
    ports,
    hubAddr,
    hubDir,
    get hub() {
      return hub;
    },
    agents,
    roles: { entry: agents.a.h.pid, relay: hub.pid, exit: agents.b.h.pid },
    notes: 'client → agent A inbound → hub → agent B outbound → target; mTLS HTTP/2 on both hops',
    /** Kill the hub (SIGKILL) and start it again on the same data and port. */
    async restartHub() {
      await stop(hub, 'SIGKILL');
      const killedAt = Date.now();
      hub = serve();
      await waitLog(hub, /"hub listening"/, 30_000);
      path.roles.relay = hub.pid;
      return { killedAt, listeningAt: Date.now() };
    },
    async stop() {
      await Promise.all([stop(agents.a.h), stop(agents.b.h)]);
      await stop(hub);
      if (ip) await stop(ip.h);
    },
  };
  return path;
}

// ---- ssh -L ----

/** An OpenSSH server on a free loopback port, key-only, for this user: its
 * own host key and a client key in runDir()/<tag>, aes128-gcm only.
 * `extraConfig` lines are added to its sshd_config. */
export async function startSshd(tag, { extraConfig = [] } = {}) {
  const dir = join(runDir(), tag);
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o700);
  const user = process.env.USER || (await runCmd('id', ['-un'])).trim();
  if (process.getuid?.() === 0) mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  for (const k of ['host', 'client']) await runCmd('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, k)]);
  await runCmd('cp', [join(dir, 'client.pub'), join(dir, 'authorized_keys')]);
  chmodSync(join(dir, 'authorized_keys'), 0o600);
  const port = await freePort();
  writeFileSync(
    join(dir, 'sshd_config'),
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      'PermitRootLogin prohibit-password',
      `AllowUsers ${user}`,
      'StrictModes no',
      'UsePAM no',
      'AllowTcpForwarding yes',
      'Ciphers aes128-gcm@openssh.com',
      'Compression no',
      'MaxSessions 100',
      'MaxStartups 100:30:200',
      'LogLevel ERROR',
      `PidFile ${join(dir, 'sshd.pid')}`,
      ...extraConfig,
      '',
    ].join('\n'),
  );
  const sshd = start('sshd', '/usr/sbin/sshd', ['-D', '-e', '-f', join(dir, 'sshd_config')]);
  await waitPort(port, 10_000, 'sshd');
  return { dir, port, user, sshd, key: join(dir, 'client'), knownHosts: join(dir, 'known_hosts') };
}

export async function ssh(targets) {
  const ip = await iperfServer('ssh');
  const { port: sport, user, sshd, key, knownHosts } = await startSshd('ssh');
  const ports = {};
  const forwards = [];
  const targetPorts = targetPortsOf(targets, ip.port);
  for (const t of TARGETS) {
    ports[t] = await freePort();
    forwards.push('-L', `127.0.0.1:${ports[t]}:127.0.0.1:${targetPorts[t]}`);
  }
  const client = start('ssh', 'ssh', [
    '-N',
    '-F',
    '/dev/null',
    '-p',
    String(sport),
    '-i',
    key,
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    `UserKnownHostsFile=${knownHosts}`,
    '-o',
    'BatchMode=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'Ciphers=aes128-gcm@openssh.com',
    '-o',
    'Compression=no',
    ...forwards,
    `${user}@127.0.0.1`,
  ]);
  await probeEcho(ports.echo);
  return {
    name: 'ssh',
    ports,
    roles: { entry: client.pid, exit: sshd.pid },
    notes: 'ssh -L (OpenSSH, aes128-gcm@openssh.com): one encrypted hop; sshd measured with its session process',
    async stop() {
      await stop(client);
      await stop(sshd);
      await stop(ip.h);
    },
  };
}

// ---- stunnel: entry → relay → exit, TLS on both hops ----
async function selfSignedCert(dir) {
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  await runCmd('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    key,
    '-out',
    cert,
    '-days',
    '2',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
  ]);
  return { key, cert };
}

/** A TLS peer's working dir, certificate, own iperf3 server and target ports. */
async function tlsPeerSetup(name, targets) {
  const dir = join(runDir(), name);
  mkdirSync(dir, { recursive: true });
  const pki = await selfSignedCert(dir);
  const ip = await iperfServer(name);
  return { dir, pki, ip, targetPorts: targetPortsOf(targets, ip.port) };
}

function stunnelConf(dir, name, services, pki) {
  const lines = ['foreground = yes', 'pid =', 'debug = 3', 'socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1', ''];
  for (const s of services) {
    lines.push(`[${s.name}]`, `accept = 127.0.0.1:${s.accept}`, `connect = 127.0.0.1:${s.connect}`);
    if (s.client) lines.push('client = yes', 'verifyChain = yes', `CAfile = ${pki.cert}`, 'checkIP = 127.0.0.1');
    else lines.push(`cert = ${pki.cert}`, `key = ${pki.key}`);
    lines.push('');
  }
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, lines.join('\n'));
  return file;
}

/** Also returns `stunnel1`, the one-TLS-leg variant (entry → exit) on the
 * same processes, as a reference. */
export async function stunnel(targets) {
  const { pki, ip, targetPorts, dir } = await tlsPeerSetup('stunnel', targets);
  const entry = [];
  const relay = [];
  const exit = [];
  const ports = {};
  const ports1 = {};
  for (const t of TARGETS) {
    const [l, l1, rin, mid, xin] = [await freePort(), await freePort(), await freePort(), await freePort(), await freePort()];
    ports[t] = l;
    ports1[t] = l1;
    entry.push({ name: t, accept: l, connect: rin, client: true }, { name: `${t}-1leg`, accept: l1, connect: xin, client: true });
    relay.push({ name: `${t}-in`, accept: rin, connect: mid }, { name: `${t}-out`, accept: mid, connect: xin, client: true });
    exit.push({ name: t, accept: xin, connect: targetPorts[t] });
  }
  const procs = {};
  for (const [name, services] of [
    ['exit', exit],
    ['relay', relay],
    ['entry', entry],
  ]) {
    procs[name] = start(`stunnel-${name}`, 'stunnel', [stunnelConf(dir, name, services, pki)]);
  }
  await probeEcho(ports.echo);
  await probeEcho(ports1.echo);
  const stopAll = async () => {
    for (const h of Object.values(procs)) await stop(h);
    await stop(ip.h);
  };
  return [
    {
      name: 'stunnel',
      ports,
      roles: { entry: procs.entry.pid, relay: procs.relay.pid, exit: procs.exit.pid },
      notes: 'stunnel client → stunnel relay (TLS in, loopback, TLS out) → stunnel server → target: TLS on both hops, server-authenticated',
      stop: stopAll,
    },
    {
      name: 'stunnel1',
      ports: ports1,
      roles: { entry: procs.entry.pid, exit: procs.exit.pid },
      notes: 'stunnel client → stunnel server → target: one TLS hop (reference)',
      stop: async () => {},
    },
  ];
}

// ---- node3: three Node processes that only pipe ----
/** `node3` (TLS on both hops, like `stunnel`) and `node3tcp` (plain TCP) on the
 * same three processes of scripts/bench/node-relay.mjs: entry → relay → exit
 * → target, `socket.pipe()` and nothing else. Not a product a user would pick
 * but the floor under any relay made of three Node processes (event-loop
 * turns, wake-ups, TLS records): what ztm adds above it is its own. */
export async function node3(targets) {
  const { pki, ip, targetPorts, dir } = await tlsPeerSetup('node3', targets);
  const hops = { entry: [], relay: [], exit: [] };
  const ports = {};
  const portsTcp = {};
  const portsH2 = {};
  for (const t of TARGETS) {
    for (const [tls, into, h2] of [
      [true, ports, false],
      [false, portsTcp, false],
      [true, portsH2, true],
    ]) {
      const [l, mid, x] = [await freePort(), await freePort(), await freePort()];
      into[t] = l;
      hops.entry.push({ accept: l, connect: mid, tlsIn: false, tlsOut: tls, h2Out: h2 });
      hops.relay.push({ accept: mid, connect: x, tlsIn: tls, tlsOut: tls, h2In: h2, h2Out: h2 });
      hops.exit.push({ accept: x, connect: targetPorts[t], tlsIn: tls, tlsOut: false, h2In: h2 });
    }
  }
  const script = join(ROOT, 'scripts/bench/node-relay.mjs');
  const nodeArgs = binNodeArgs(HUB_BIN);
  const procs = {};
  for (const name of ['exit', 'relay', 'entry']) {
    const file = join(dir, `${name}.json`);
    writeFileSync(file, JSON.stringify({ key: pki.key, cert: pki.cert, services: hops[name] }));
    procs[name] = start(`node3-${name}`, node, [...nodeArgs, script, file]);
  }
  await probeEcho(ports.echo);
  await probeEcho(portsTcp.echo);
  await probeEcho(portsH2.echo);
  const roles = { entry: procs.entry.pid, relay: procs.relay.pid, exit: procs.exit.pid };
  // The three variants share the processes: whichever is stopped first (the
  // caller may keep only some of them) stops them all.
  let stopped;
  const stopAll = () => {
    stopped ??= (async () => {
      for (const h of Object.values(procs)) await stop(h);
      await stop(ip.h);
    })();
    return stopped;
  };
  return [
    {
      name: 'node3',
      ports,
      roles,
      notes: 'three Node processes, socket.pipe() only: entry → (TLS) relay → (TLS) exit → target; the floor of a 3-process Node relay with TLS',
      stop: stopAll,
    },
    { name: 'node3tcp', ports: portsTcp, roles, notes: 'the same three Node processes, plain TCP on both hops', stop: stopAll },
    {
      name: 'node3h2',
      ports: portsH2,
      roles,
      notes:
        "the same three Node processes, each connection a stream of one HTTP/2 session per hop (TLS, ztm's settings and marks): the floor of a 3-process Node relay that multiplexes",
      stop: stopAll,
    },
  ];
}

// ---- frp stcp ----
export async function frp(targets, binDir) {
  const dir = join(runDir(), 'frp');
  mkdirSync(dir, { recursive: true });
  const ip = await iperfServer('frp');
  const targetPorts = targetPortsOf(targets, ip.port);
  const sport = await freePort();
  const common = ['serverAddr = "127.0.0.1"', `serverPort = ${sport}`, 'auth.token = "ztm-bench"', 'transport.tls.enable = true', 'loginFailExit = true'];
  const log = ['log.to = "console"', 'log.level = "warn"'];
  writeFileSync(
    join(dir, 'frps.toml'),
    ['bindAddr = "127.0.0.1"', `bindPort = ${sport}`, 'auth.token = "ztm-bench"', 'transport.tls.force = true', ...log, ''].join('\n'),
  );
  const server = [...common, ...log, ''];
  const visitor = [...common, ...log, ''];
  const ports = {};
  for (const t of TARGETS) {
    ports[t] = await freePort();
    server.push('[[proxies]]', `name = "bench-${t}"`, 'type = "stcp"', 'secretKey = "ztm-bench"', 'localIP = "127.0.0.1"', `localPort = ${targetPorts[t]}`, '');
    visitor.push(
      '[[visitors]]',
      `name = "bench-${t}-visitor"`,
      'type = "stcp"',
      `serverName = "bench-${t}"`,
      'secretKey = "ztm-bench"',
      'bindAddr = "127.0.0.1"',
      `bindPort = ${ports[t]}`,
      '',
    );
  }
  writeFileSync(join(dir, 'frpc-server.toml'), server.join('\n'));
  writeFileSync(join(dir, 'frpc-visitor.toml'), visitor.join('\n'));
  const frps = start('frps', join(binDir, 'frps'), ['-c', join(dir, 'frps.toml')]);
  await waitPort(sport, 10_000, 'frps');
  const exit = start('frpc-server', join(binDir, 'frpc'), ['-c', join(dir, 'frpc-server.toml')]);
  const entry = start('frpc-visitor', join(binDir, 'frpc'), ['-c', join(dir, 'frpc-visitor.toml')]);
  await probeEcho(ports.echo, 30_000);
  return {
    name: 'frp',
    ports,
    roles: { entry: entry.pid, relay: frps.pid, exit: exit.pid },
    notes: 'frpc stcp visitor → frps → frpc → target; TLS on, tcpMux (defaults)',
    async stop() {
      await stop(entry);
      await stop(exit);
      await stop(frps);
      await stop(ip.h);
    },
  };
}
