/**
 * Packaging: docker/ (Dockerfile, compose.yaml, example configs) and the
 * systemd units in docker/systemd/. No Docker engine is needed: the units are
 * checked with systemd-analyze and their command lines are run for real, the
 * configs with the real CLIs, compose.yaml with a compose implementation when
 * one is installed, the Dockerfile against the repository's own build
 * commands. ZTM_TEST_DOCKER_BUILD=1 also replays the Dockerfile's build stage
 * (its COPYs and RUNs) in a temporary directory.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, get as httpGet } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { parseListen, parseTarget, parseTunnelId } from '@ztm/proto';
import { AGENT_BIN, HUB_BIN, agentCli, freePort, hubCli, waitFor } from './helpers/index.js';

const root = resolve(fileURLToPath(import.meta.url), '../..');
const dockerDir = join(root, 'docker');
const read = (p: string) => readFileSync(join(root, p), 'utf8');

// `yaml` is a dependency of the packages, not of the root: load it from there.
const YAML = createRequire(join(root, 'packages/agent/package.json'))('yaml') as {
  parse(text: string, options?: { merge?: boolean }): unknown;
};
type Obj = Record<string, unknown>;
const yamlFile = (p: string) => YAML.parse(read(p), { merge: true }) as Obj;

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  const r = spawnSync(cmd, args, { cwd: opts.cwd ?? root, env: opts.env ?? process.env, encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000 });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error };
}

/** Executables that run the real CLIs, standing in for /usr/bin/ztm-hub and /usr/bin/ztm-agent. */
function stubBins(dir: string): { hub: string; agent: string; dir: string } {
  const bin = join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  const make = (name: string, target: string) => {
    const p = join(bin, name);
    writeFileSync(p, `#!/bin/sh\nexec '${process.execPath}' '${target}' "$@"\n`);
    chmodSync(p, 0o755);
    return p;
  };
  return { hub: make('ztm-hub', HUB_BIN), agent: make('ztm-agent', AGENT_BIN), dir: bin };
}

// ---------------------------------------------------------------------------
// systemd units

type Unit = Record<string, Record<string, string[]>>;

function parseUnit(text: string): Unit {
  const unit: Unit = {};
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1] as string;
      unit[section] ??= {};
      continue;
    }
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    const s = unit[section] as Record<string, string[]>;
    s[key] = [...(s[key] ?? []), line.slice(eq + 1)];
  }
  return unit;
}

const UNITS = { hub: 'docker/systemd/ztm-hub.service', agent: 'docker/systemd/ztm-agent.service' } as const;
const units = { hub: parseUnit(read(UNITS.hub)), agent: parseUnit(read(UNITS.agent)) };
const svc = (which: keyof typeof units, key: string): string[] => units[which].Service?.[key] ?? [];
const one = (which: keyof typeof units, key: string): string | undefined => svc(which, key).at(-1);

/** Copies of the units whose ExecStart names the stub executables. */
function unitCopies(dir: string): { hub: string; agent: string; bins: ReturnType<typeof stubBins> } {
  const bins = stubBins(dir);
  const copy = (which: 'hub' | 'agent', bin: string) => {
    const text = read(UNITS[which]);
    const from = `/usr/bin/ztm-${which}`;
    if (!text.includes(`ExecStart=${from} `)) throw new Error(`${UNITS[which]}: ExecStart does not start with ${from}`);
    const p = join(dir, `ztm-${which}.service`);
    writeFileSync(p, text.replaceAll(from, bin));
    return p;
  };
  return { hub: copy('hub', bins.hub), agent: copy('agent', bins.agent), bins };
}

const noSystemd = have('systemd-analyze') ? false : 'systemd-analyze not installed (Debian package systemd; scripts/test installs it)';
const noOfflineSecurity =
  noSystemd || (sh('systemd-analyze', ['--help']).stdout.includes('--offline') ? false : 'this systemd-analyze has no offline security check (systemd < 250)');

t.test('systemd units', async (t) => {
  t.test('directives', async (t) => {
    for (const which of ['hub', 'agent'] as const) {
      const name = `ztm-${which}`;
      const exec = one(which, 'ExecStart') ?? '';
      t.match(exec, new RegExp(`^/usr/bin/${name} ${which === 'hub' ? 'serve' : 'run'}( |$)`), `${name}: ExecStart runs /usr/bin/${name}`);
      t.ok(one(which, 'DynamicUser') === 'yes' || (one(which, 'User') && one(which, 'User') !== 'root'), `${name}: runs as a non-root user`);
      t.equal(one(which, 'StateDirectory'), name, `${name}: StateDirectory`);
      t.ok(svc(which, 'Environment').includes(`ZTM_DATA=%S/${name}`), `${name}: ZTM_DATA=%S/${name}`);
      t.equal(one(which, 'Restart'), 'on-failure', `${name}: Restart=on-failure`);
      t.match(one(which, 'TimeoutStopSec') ?? '', /^\d+s?$/, `${name}: TimeoutStopSec set`);
      const expected: Record<string, string> = {
        NoNewPrivileges: 'yes',
        ProtectSystem: 'strict',
        ProtectHome: 'yes',
        PrivateTmp: 'yes',
        PrivateDevices: 'yes',
        ProtectKernelTunables: 'yes',
        ProtectKernelModules: 'yes',
        ProtectKernelLogs: 'yes',
        RestrictAddressFamilies: 'AF_INET AF_INET6 AF_UNIX',
        LockPersonality: 'yes',
        MemoryDenyWriteExecute: 'no',
        CapabilityBoundingSet: '',
        UMask: '0077',
      };
      for (const [k, v] of Object.entries(expected)) t.equal(one(which, k), v, `${name}: ${k}=${v}`);
      t.ok(svc(which, 'SystemCallFilter').includes('@system-service'), `${name}: SystemCallFilter=@system-service`);
      t.match(read(UNITS[which]), /V8|JIT/, `${name}: says why MemoryDenyWriteExecute=no`);
    }
    t.same(svc('agent', 'RestartPreventExitStatus'), ['3'], 'agent: no restart after revocation (exit 3)');
  });

  t.test('systemd-analyze verify accepts both units', { skip: noSystemd }, async (t) => {
    const dir = t.testdir();
    const c = unitCopies(dir);
    const r = sh('systemd-analyze', ['verify', '--man=no', c.hub, c.agent]);
    t.equal(r.code, 0, `systemd-analyze verify exits 0\n${r.stderr}`);
    // verify exits 0 on unknown keys and bad values too; it only warns. So: no output at all.
    t.equal(`${r.stdout}${r.stderr}`.trim(), '', 'no warnings');

    // The check is sensitive: a unit with a typo and a missing binary gets warnings.
    const bad = join(dir, 'bad');
    mkdirSync(bad);
    const badUnit = join(bad, 'ztm-hub.service');
    writeFileSync(
      badUnit,
      readFileSync(c.hub, 'utf8').replace('ProtectHome=yes', 'ProtectHome=yes\nProtectHomeDir=yes').replaceAll(c.bins.hub, '/nonexistent/ztm-hub'),
    );
    const rb = sh('systemd-analyze', ['verify', '--man=no', badUnit]);
    t.match(rb.stderr, /ProtectHomeDir/, 'a misspelt key is reported');
    t.match(rb.stderr, /nonexistent\/ztm-hub/, 'a missing ExecStart binary is reported');
  });

  t.test('systemd-analyze security: exposure stays low', { skip: noOfflineSecurity }, async (t) => {
    const c = unitCopies(t.testdir());
    for (const unit of [c.hub, c.agent]) {
      const r = sh('systemd-analyze', ['security', '--offline=yes', '--threshold=30', '--no-pager', unit]);
      const level = /Overall exposure level for \S+: ([\d.]+)/.exec(r.stdout)?.[1];
      t.equal(r.code, 0, `${unit}: exposure ${level} is at most 3.0 (threshold 30: systemd counts tenths) ${r.stderr}`);
    }
  });

  t.test("the units' command lines run the real CLIs", async (t) => {
    // A short path: the admin sockets live in the data directories, and a
    // unix socket path has at most 107 bytes (t.testdir() is too deep).
    const dir = mkdtempSync(join(tmpdir(), 'ztm-unit-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const bins = stubBins(dir);
    const state = join(dir, 'state'); // %S
    const port = await freePort();
    const listenPort = await freePort();
    // The units read /etc/ztm/*.yaml: use the examples, on loopback ports.
    const hubYaml = join(dir, 'hub.yaml');
    writeFileSync(hubYaml, JSON.stringify({ ...yamlFile('docker/hub.yaml'), listen: `127.0.0.1:${port}` }));
    const agentConf = yamlFile('docker/agent-a.yaml') as { tunnels: { inbound: { listen: string[] }[] } };
    for (const end of agentConf.tunnels.inbound) end.listen = [`127.0.0.1:${listenPort}`];
    const agentYaml = join(dir, 'agent.yaml');
    writeFileSync(agentYaml, JSON.stringify(agentConf));

    /** The unit's ExecStart argv and environment (%S expanded), with stubbed binary and config. */
    const command = (which: 'hub' | 'agent') => {
      const env: NodeJS.ProcessEnv = { ...process.env };
      for (const e of svc(which, 'Environment')) {
        const i = e.indexOf('=');
        env[e.slice(0, i)] = e.slice(i + 1).replaceAll('%S', state);
      }
      const argv = (one(which, 'ExecStart') ?? '')
        .split(/\s+/)
        .map((a) =>
          a.replace(`/usr/bin/ztm-${which}`, bins[which]).replace(`/etc/ztm/${which === 'hub' ? 'hub' : 'agent'}.yaml`, which === 'hub' ? hubYaml : agentYaml),
        );
      const data = join(state, `ztm-${which}`);
      mkdirSync(data, { recursive: true, mode: 0o700 });
      return { argv, env, data };
    };
    const start = (c: ReturnType<typeof command>) => new Proc(c.argv, c.env, c.data);

    const hub = command('hub');
    t.equal(hub.env.ZTM_DATA, hub.data, 'hub: ZTM_DATA is the state directory');
    // `ztm-hub init` as the README says, with ZTM_DATA from the unit instead of --data.
    const init = await hubCli(['init', '--names', `127.0.0.1:${port}`, '--mesh', 'pkg'], { env: hub.env });
    t.equal(init.code, 0, `ztm-hub init (ZTM_DATA) exits 0 ${init.stderr}`);
    const hubProc = start(hub);
    t.teardown(() => hubProc.kill('SIGKILL'));
    await hubProc.waitLog('hub listening');
    const st = await hubCli(['status'], { env: hub.env });
    t.equal(st.code, 0, `ztm-hub status (the image's HEALTHCHECK) exits 0 ${st.stderr}`);

    const agent = command('agent');
    const permit = join(dir, 'agent-a.permit.json');
    const p = await hubCli(['permit', 'create', 'agent-a', '--out', permit], { env: hub.env });
    t.equal(p.code, 0, `permit create ${p.stderr}`);
    const join_ = await agentCli(['join', '--permit', permit], { env: agent.env });
    t.equal(join_.code, 0, `ztm-agent join (ZTM_DATA) exits 0 ${join_.stderr}`);

    // A graceful stop: KillSignal, exit 0 (so Restart=on-failure does not restart it).
    const timeoutMs = (u: 'hub' | 'agent') => Number.parseInt(one(u, 'TimeoutStopSec') ?? '90', 10) * 1000;
    let agentProc = start(agent);
    t.teardown(() => agentProc.kill('SIGKILL'));
    await agentProc.waitLog('online');
    const as = await agentCli(['status'], { env: agent.env });
    t.equal(as.code, 0, `ztm-agent status (the image's HEALTHCHECK) exits 0 ${as.stderr}`);
    t.equal(await agentProc.stop(one('agent', 'KillSignal') as NodeJS.Signals, timeoutMs('agent')), 0, 'agent: SIGTERM → exit 0 within TimeoutStopSec');

    // Revoked: the exit status is one the unit does not restart on.
    agentProc = start(agent);
    await agentProc.waitLog('online');
    const rv = await hubCli(['revoke', 'agent-a'], { env: hub.env });
    t.equal(rv.code, 0, `revoke ${rv.stderr}`);
    const code = await Promise.race([agentProc.exited, new Promise((r) => setTimeout(() => r('still running'), 15_000))]);
    t.ok(svc('agent', 'RestartPreventExitStatus').includes(String(code)), `revoked agent exits ${code}: in RestartPreventExitStatus`);

    t.equal(await hubProc.stop(one('hub', 'KillSignal') as NodeJS.Signals, timeoutMs('hub')), 0, 'hub: SIGTERM → exit 0 within TimeoutStopSec');
  });
});

/** A unit's main process: JSON logs on stdout. */
class Proc {
  child: ChildProcess;
  out = '';
  exited: Promise<number | null>;
  constructor(argv: string[], env: NodeJS.ProcessEnv, cwd: string) {
    this.child = spawn(argv[0] as string, argv.slice(1), { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.on('data', (c: Buffer) => {
      this.out += c;
    });
    this.child.stderr?.on('data', (c: Buffer) => {
      this.out += c;
    });
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null);
  }
  async waitLog(msg: string): Promise<void> {
    const seen = () => this.out.split('\n').some((l) => l.startsWith('{"') && l.endsWith('}') && (JSON.parse(l) as { msg?: string }).msg === msg);
    try {
      await waitFor(seen, { timeoutMs: 15_000, what: `log "${msg}"` });
    } catch (err) {
      throw new Error(`${(err as Error).message}; exit ${this.child.exitCode ?? this.child.signalCode}; output: ${this.out.slice(-1500)}`);
    }
  }
  async stop(signal: NodeJS.Signals, timeoutMs: number): Promise<number | null | string> {
    this.child.kill(signal);
    return Promise.race([this.exited, new Promise<string>((r) => setTimeout(() => r(`not stopped after ${timeoutMs} ms`), timeoutMs))]);
  }
  kill(signal: NodeJS.Signals) {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

// ---------------------------------------------------------------------------
// example configs

t.test('example configs', async (t) => {
  for (const [bin, file] of [
    [hubCli, 'docker/hub.yaml'],
    [agentCli, 'docker/agent-a.yaml'],
    [agentCli, 'docker/agent-b.yaml'],
  ] as const) {
    const r = await bin(['config', 'check', '--config', join(root, file)]);
    t.equal(r.code, 0, `config check ${file}: ${r.stdout.trim()}${r.stderr.trim()}`);
  }
  // The check is not vacuous: the hub's schema rejects an agent's file.
  const wrong = await hubCli(['config', 'check', '--config', join(root, 'docker/agent-a.yaml')]);
  t.not(wrong.code, 0, 'ztm-hub config check rejects an agent config');

  // Tunnel ends: the values parse as the agent parses them, and the two
  // examples are the two ends of one tunnel.
  type Conf = { tunnels: { inbound?: Obj[]; outbound?: Obj[] } };
  const a = yamlFile('docker/agent-a.yaml') as Conf;
  const b = yamlFile('docker/agent-b.yaml') as Conf;
  const inb = a.tunnels.inbound?.[0] as { tunnel: string; listen: string[]; exits: string[] };
  const outb = b.tunnels.outbound?.[0] as { tunnel: string; targets: string[]; allowEndpoints: string[] };
  t.ok(inb && outb, 'agent-a has an inbound end, agent-b an outbound end');
  t.doesNotThrow(() => [parseTunnelId(inb.tunnel), ...inb.listen.map(parseListen), parseTunnelId(outb.tunnel), ...outb.targets.map(parseTarget)]);
  t.equal(inb.tunnel, outb.tunnel, 'same tunnel on both ends');
  t.ok(inb.exits.includes('agent-b'), 'agent-a exits through agent-b');
  t.ok(outb.allowEndpoints.includes('agent-a'), 'agent-b lets agent-a in');
});

// ---------------------------------------------------------------------------
// docker compose

const compose = yamlFile('docker/compose.yaml') as {
  name?: string;
  services: Record<string, Obj>;
  networks: Record<string, Obj | null>;
  volumes: Record<string, unknown>;
};
const services = compose.services;
const svcNetworks = (s: Obj) => (Array.isArray(s.networks) ? (s.networks as string[]) : Object.keys((s.networks as Obj) ?? {}));
/** A one-string `sh -ec` script in compose, with compose's `$$` unescaped. */
const script = (s: Obj) => ((s.command as string[])[0] as string).replaceAll('$$', '$');

t.test('compose.yaml: topology and enrolment', async (t) => {
  t.same(Object.keys(services).sort(), ['agent-a', 'agent-b', 'demo', 'hub', 'hub-init']);
  // demo: only on an internal network that only agent-b shares; no ports.
  const demoNets = svcNetworks(services.demo as Obj);
  t.same(demoNets, ['demo'], 'demo is on the demo network only');
  t.equal((compose.networks.demo as Obj).internal, true, 'the demo network is internal');
  const onDemo = Object.entries(services)
    .filter(([, s]) => svcNetworks(s).includes('demo'))
    .map(([n]) => n)
    .sort();
  t.same(onDemo, ['agent-b', 'demo'], 'only agent-b shares it');
  t.notOk((services.demo as Obj).ports, 'demo publishes no port');

  // agent-a publishes its inbound listener on the host's loopback.
  const a = yamlFile('docker/agent-a.yaml') as { tunnels: { inbound: { listen: string[] }[] } };
  const inPort = parseListen(a.tunnels.inbound[0]?.listen[0] as string).port;
  t.same((services['agent-a'] as Obj).ports, [`127.0.0.1:8080:${inPort}`], 'agent-a: 127.0.0.1:8080 → its inbound listener');
  t.notOk(
    Object.entries(services).some(([n, s]) => n !== 'agent-a' && s.ports),
    'nothing else is published',
  );
  // agent-b's target is the demo service.
  const b = yamlFile('docker/agent-b.yaml') as { tunnels: { outbound: { targets: string[] }[] } };
  t.equal(parseTarget(b.tunnels.outbound[0]?.targets[0] as string).host, 'demo');

  // State in named volumes; configs bind-mounted from docker/.
  for (const [n, s] of Object.entries(services)) {
    for (const v of (s.volumes as string[] | undefined) ?? []) {
      const src = v.split(':')[0] as string;
      if (src.startsWith('.')) t.ok(existsSync(join(dockerDir, src)), `${n}: ${src} exists`);
      else t.ok(src in compose.volumes, `${n}: volume ${src} declared`);
    }
  }
  for (const n of ['hub', 'agent-a', 'agent-b']) {
    const s = services[n] as Obj;
    t.ok(s.healthcheck, `${n}: healthcheck`);
    t.match(String(s.restart), /^(always|unless-stopped|on-failure)/, `${n}: restart policy`);
    t.ok(
      (s.volumes as string[]).some((v) => v.endsWith(':/var/lib/ztm')),
      `${n}: state volume at /var/lib/ztm`,
    );
  }
  t.same(services.hub?.depends_on, { 'hub-init': { condition: 'service_completed_successfully' } });
  for (const n of ['agent-a', 'agent-b']) t.same(services[n]?.depends_on, { hub: { condition: 'service_healthy' } });
  for (const n of ['agent-a', 'agent-b']) {
    const vols = ((services[n] as Obj).volumes as string[] | undefined) ?? [];
    t.ok(vols.includes(`./${n}.yaml:/etc/ztm/agent.yaml:ro`), `${n}: runs with docker/${n}.yaml`);
  }

  // Build targets exist in the Dockerfile.
  const targets = [...read('docker/Dockerfile').matchAll(/^FROM\s+\S+\s+AS\s+(\S+)/gim)].map((m) => m[1]);
  for (const [n, s] of Object.entries(services)) {
    const target = (s.build as Obj | undefined)?.target;
    if (target) t.ok(targets.includes(target as string), `${n}: build target ${target} exists`);
  }

  // Every `$` is doubled, so compose interpolates nothing in the scripts.
  for (const n of ['hub-init', 'agent-a', 'agent-b']) {
    t.same((services[n] as Obj).entrypoint, ['/bin/sh', '-ec'], `${n}: runs a shell script`);
    const raw = ((services[n] as Obj).command as string[])[0] as string;
    t.notMatch(raw.replaceAll('$$', ''), /\$/, `${n}: no single $ for compose to interpolate`);
  }
  // The hub's names are its compose service name and the port hub.yaml listens on.
  const hubPort = String((yamlFile('docker/hub.yaml').listen as string).split(':').at(-1));
  t.match(script(services['hub-init'] as Obj), new RegExp(`--names hub:${hubPort}\\b`), 'init --names hub:PORT');
  for (const n of ['agent-a', 'agent-b']) {
    t.equal(((services[n] as Obj).environment as Obj).ZTM_ENDPOINT, n, `${n}: joins with its own permit`);
    t.match(script(services[n] as Obj), /ztm-agent join --permit "\/permits\/\$\{ZTM_ENDPOINT\}\.permit\.json"/);
  }
});

t.test("compose.yaml: hub-init's script, run against the real CLI", async (t) => {
  // The one-shot's script, with /var/lib/ztm and /permits moved to a temp dir
  // and ztm-hub on PATH: first run initialises and writes permits; a second
  // run leaves the hub alone and writes fresh permits (nobody enrolled yet).
  const dir = t.testdir();
  const bins = stubBins(dir);
  const data = join(dir, 'hub-data');
  const permits = join(dir, 'permits');
  mkdirSync(data, { mode: 0o700 });
  mkdirSync(permits, { mode: 0o700 });
  const text = script(services['hub-init'] as Obj)
    .replaceAll('/var/lib/ztm', data)
    .replaceAll('/permits', permits);
  const env = { ...process.env, PATH: `${bins.dir}:${process.env.PATH}` };
  const first = sh('sh', ['-ec', text], { env });
  t.equal(first.code, 0, `first run exits 0 ${first.stderr}`);
  t.match(first.stdout, /hub initialised: mesh demo/);
  for (const n of ['agent-a', 'agent-b']) {
    const f = join(permits, `${n}.permit.json`);
    t.ok(existsSync(f), `${n}: permit written`);
    if (existsSync(f)) {
      const p = JSON.parse(readFileSync(f, 'utf8')) as { endpoint: string; hubs: string[] };
      t.equal(p.endpoint, n);
      t.same(p.hubs, ['hub:8888'], 'agents dial the hub service');
      t.equal(statSync(f).mode & 0o777, 0o600, 'permit is 0600');
    }
  }
  const second = sh('sh', ['-ec', text], { env });
  t.equal(second.code, 0, `second run exits 0 ${second.stderr}`);
  t.match(second.stdout, /hub already initialised/);
});

t.test('compose.yaml on loopback, without Docker: enrolment, healthchecks, the tunnel to demo', async (t) => {
  // Each service's command runs as compose would run it, with the container
  // paths moved to a temp dir, `hub:8888` and `demo:80` moved to loopback
  // ports, and the images' binaries on PATH. What this cannot show: Docker's
  // networks (that demo is unreachable except through agent-b), volumes,
  // users, restart policies.
  const dir = mkdtempSync(join(tmpdir(), 'ztm-compose-')); // short: admin socket paths
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bins = stubBins(dir);
  const [hubPort, entryPort] = [await freePort(), await freePort()];
  const demo = createServer((_req, res) => res.end('hello from demo\n'));
  demo.listen(0, '127.0.0.1');
  await once(demo, 'listening');
  t.teardown(() => demo.close());
  const demoPort = (demo.address() as AddressInfo).port;

  const permits = join(dir, 'permits');
  mkdirSync(permits, { mode: 0o700 });
  const cfg = (name: string, value: unknown) => {
    const p = join(dir, name);
    writeFileSync(p, JSON.stringify(value));
    return p;
  };
  const hubYaml = cfg('hub.yaml', { ...yamlFile('docker/hub.yaml'), listen: `127.0.0.1:${hubPort}` });
  const aConf = yamlFile('docker/agent-a.yaml') as { tunnels: { inbound: { listen: string[] }[] } };
  for (const e of aConf.tunnels.inbound) e.listen = e.listen.map((l) => (parseListen(l).port === 8080 ? `127.0.0.1:${entryPort}` : l));
  const bConf = yamlFile('docker/agent-b.yaml') as { tunnels: { outbound: { targets: string[] }[] } };
  for (const e of bConf.tunnels.outbound) e.targets = e.targets.map((x) => (x === 'demo:80' ? `127.0.0.1:${demoPort}` : x));
  const agentYaml: Record<string, string> = { 'agent-a': cfg('agent-a.yaml', aConf), 'agent-b': cfg('agent-b.yaml', bConf) };

  const dataOf = (n: string) => {
    const d = join(dir, n === 'hub-init' ? 'hub' : n);
    mkdirSync(d, { recursive: true, mode: 0o700 });
    return d;
  };
  const local = (n: string, text: string) =>
    text
      .replaceAll('hub:8888', `127.0.0.1:${hubPort}`)
      .replaceAll('/var/lib/ztm', dataOf(n))
      .replaceAll('/permits', permits)
      .replaceAll('/etc/ztm/hub.yaml', hubYaml)
      .replaceAll('/etc/ztm/agent.yaml', agentYaml[n] ?? '/nonexistent');
  const env = (n: string): NodeJS.ProcessEnv => ({
    ...process.env,
    ZTM_DATA: dataOf(n),
    PATH: `${bins.dir}:${process.env.PATH}`,
    ...(((services[n] as Obj).environment as Record<string, string> | undefined) ?? {}),
  });
  const healthy = (n: string) => {
    const test = ((services[n] as Obj).healthcheck as { test: string[] }).test;
    const r =
      test[0] === 'CMD-SHELL'
        ? sh('sh', ['-c', local(n, test[1] as string)], { env: env(n) })
        : sh('sh', ['-c', '"$@"', 'sh', ...test.slice(1).map((a) => local(n, a))], { env: env(n) });
    return r.code === 0;
  };
  const startService = (n: string) => {
    const s = services[n] as Obj;
    const argv = s.entrypoint ? ['sh', '-ec', local(n, script(s))] : [bins.hub, ...(s.command as string[]).map((a) => local(n, a))];
    const p = new Proc(argv, env(n), dataOf(n));
    t.teardown(() => p.kill('SIGKILL'));
    return p;
  };

  const init = sh('sh', ['-ec', local('hub-init', script(services['hub-init'] as Obj))], { env: env('hub-init') });
  t.equal(init.code, 0, `hub-init exits 0 ${init.stderr}`);
  const hub = startService('hub');
  await hub.waitLog('hub listening');
  await waitFor(() => healthy('hub'), { timeoutMs: 10_000, what: 'hub healthy' });
  t.pass('hub: healthcheck passes');

  let a = startService('agent-a');
  const b = startService('agent-b');
  await Promise.all([a.waitLog('online'), b.waitLog('online')]);
  for (const n of ['agent-a', 'agent-b']) {
    await waitFor(() => healthy(n), { timeoutMs: 10_000, what: `${n} healthy` });
    t.pass(`${n}: joined with its permit, runs, healthcheck passes`);
  }

  const get = () =>
    new Promise<string>((res, rej) => {
      httpGet({ host: '127.0.0.1', port: entryPort, path: '/', timeout: 5_000 }, (r) => {
        let body = '';
        r.on('data', (c: Buffer) => {
          body += c;
        });
        r.on('end', () => res(body));
      }).on('error', rej);
    });
  t.equal(await waitFor(get, { timeoutMs: 10_000, what: 'demo through the tunnel' }), 'hello from demo\n', "agent-a's 8080 reaches demo through agent-b");

  // A restart goes straight to `run` (enrolled; the permit is spent).
  t.equal(await a.stop('SIGTERM', 30_000), 0, 'agent-a stops on SIGTERM');
  a = startService('agent-a');
  await a.waitLog('online');
  t.notMatch(a.out, /joined mesh/, 'agent-a does not join again');
  t.equal(await waitFor(get, { timeoutMs: 10_000, what: 'demo after restart' }), 'hello from demo\n', 'tunnel works after a restart');

  // hub-init again, with the hub running: no new permits for enrolled agents.
  const again = sh('sh', ['-ec', local('hub-init', script(services['hub-init'] as Obj))], { env: env('hub-init') });
  t.equal(again.code, 0, `hub-init re-run exits 0 ${again.stderr}`);
  t.match(again.stdout, /hub already initialised/);
  t.match(again.stdout, /agent-a is enrolled/);
  t.match(again.stdout, /agent-b is enrolled/);
});

function composeValidator(): { argv: string[]; v1: boolean } | string {
  if (have('docker') && sh('docker', ['compose', 'version']).code === 0) return { argv: ['docker', 'compose'], v1: false };
  if (have('docker-compose')) {
    const v = sh('docker-compose', ['version', '--short']);
    if (v.code === 0) return { argv: ['docker-compose'], v1: /^1\./.test(v.stdout.trim()) };
  }
  return 'no compose implementation (docker compose plugin or docker-compose) is installed';
}
const validator = composeValidator();

t.test('docker compose config parses compose.yaml', { skip: typeof validator === 'string' ? validator : false }, async (t) => {
  if (typeof validator === 'string') return;
  const [cmd, ...pre] = validator.argv as [string, ...string[]];
  let file = join(dockerDir, 'compose.yaml');
  if (validator.v1) {
    // Compose v1 predates the top-level `name` (the project name); drop that
    // one key and validate the rest, with docker/ as the project directory.
    const copy = join(t.testdir(), 'compose.yaml');
    writeFileSync(copy, read('docker/compose.yaml').replace(/^name:.*\n/m, ''));
    file = copy;
    pre.push('--project-directory', dockerDir);
  }
  const r = sh(cmd, [...pre, '-f', file, 'config']);
  t.equal(r.code, 0, `${validator.argv.join(' ')} config exits 0\n${r.stderr}`);
  const resolved = YAML.parse(r.stdout) as { services: Record<string, Obj> };
  t.same(Object.keys(resolved.services ?? {}).sort(), Object.keys(services).sort(), 'all services resolved');
  if (!validator.v1) t.equal((resolved as { name?: string }).name, compose.name, 'project name');
});

// ---------------------------------------------------------------------------
// Dockerfile

interface Instr {
  stage: string;
  op: string;
  args: string;
}
function parseDockerfile(text: string): Instr[] {
  const out: Instr[] = [];
  let stage = '';
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const joined = lines.join('\n').replace(/\\\n/g, ' ');
  for (const line of joined.split('\n')) {
    const m = /^\s*([A-Z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const op = m[1] as string;
    const args = (m[2] as string).replace(/\s+/g, ' ').trim();
    if (op === 'FROM') stage = /\bAS\s+(\S+)/i.exec(args)?.[1] ?? args;
    out.push({ stage, op, args });
  }
  return out;
}
const dockerfile = parseDockerfile(read('docker/Dockerfile'));
const buildStage = dockerfile.filter((i) => i.stage === 'build');

t.test('Dockerfile: build commands are the repository’s', async (t) => {
  const runs = buildStage.filter((i) => i.op === 'RUN').map((i) => i.args);
  const install = runs.indexOf('pnpm install --frozen-lockfile');
  const build = runs.indexOf('pnpm run build');
  t.ok(install >= 0, 'RUN pnpm install --frozen-lockfile');
  t.ok(build > install, 'RUN pnpm run build, after the install');
  t.match(read('scripts/lib/setup.sh'), /^pnpm install --frozen-lockfile\b/m, 'scripts/lib/setup.sh installs the same way');
  t.match(read('scripts/test'), /^pnpm run build$/m, 'scripts/test builds the same way');
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string>; packageManager: string };
  t.ok(pkg.scripts.build, `package.json has a build script (${pkg.scripts.build})`);
  // pnpm comes from package.json's packageManager through corepack, not from a second pin.
  t.match(pkg.packageManager, /^pnpm@\d+\.\d+\.\d+/);
  t.ok(
    runs.some((r) => /\bcorepack (install|enable)\b/.test(r)),
    'corepack provides pnpm',
  );
  t.notMatch(read('docker/Dockerfile'), /pnpm@(?!\S*\bpackageManager)/, 'no pnpm version pinned in the Dockerfile');
  t.match(read('docker/Dockerfile'), /FROM node:20-bookworm AS build/);
  t.match(read('docker/Dockerfile'), /python3 make g\+\+/, 'native build tools for better-sqlite3');

  // Everything the build stage copies exists, and every workspace package is copied.
  const copies = buildStage.filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'));
  const sources = copies.flatMap((i) => i.args.split(' ').slice(0, -1));
  for (const s of sources) t.ok(existsSync(join(root, s)), `COPY ${s} exists`);
  const ignore = read('docker/Dockerfile.dockerignore')
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('#'));
  for (const s of sources) t.notOk(ignore.includes(s) || ignore.includes(s.split('/')[0] as string), `${s} not excluded from the context`);
  for (const p of readdirSync(join(root, 'packages'))) {
    if (!existsSync(join(root, 'packages', p, 'package.json'))) continue;
    for (const part of ['package.json', 'tsconfig.json', 'src']) t.ok(sources.includes(`packages/${p}/${part}`), `packages/${p}/${part} is copied`);
  }
  for (const f of ['package.json', 'pnpm-lock.yaml', 'pnpm-workspace.yaml', 'tsconfig.json', 'tsconfig.base.json', 'test']) {
    t.ok(sources.includes(f), `${f} is copied`);
  }
});

t.test('Dockerfile: runtime targets', async (t) => {
  const text = read('docker/Dockerfile');
  t.match(text, /^FROM node:20-bookworm-slim AS runtime$/m);
  t.match(text, /useradd [^\n]*--uid 10001[^\n]* ztm/);
  for (const [target, bin] of [
    ['hub', 'ztm-hub'],
    ['agent', 'ztm-agent'],
  ] as const) {
    const st = dockerfile.filter((i) => i.stage === target);
    t.match(st[0]?.args ?? '', /^runtime AS/, `${target} builds on the runtime stage`);
    const get = (op: string) => st.filter((i) => i.op === op).map((i) => i.args);
    t.same(get('ENTRYPOINT'), [`["${bin}"]`], `${target}: ENTRYPOINT ${bin}`);
    t.same(get('USER'), ['ztm'], `${target}: USER ztm`);
    t.match(get('HEALTHCHECK')[0] ?? '', new RegExp(`CMD \\["${bin}", "status", "--data", "/var/lib/ztm"\\]`), `${target}: HEALTHCHECK ${bin} status`);
    t.ok(
      st.some((i) => i.op === 'COPY' && i.args.startsWith('--from=build') && i.args.includes(`/out/${target}`)),
      `${target}: copies the deployed tree`,
    );
  }
  t.same(
    dockerfile.filter((i) => i.stage === 'hub' && i.op === 'EXPOSE').map((i) => i.args),
    ['8888'],
  );
  t.ok(
    dockerfile.some((i) => i.stage === 'runtime' && i.op === 'ENV' && /\bZTM_DATA=\/var\/lib\/ztm\b/.test(i.args)),
    'ENV ZTM_DATA=/var/lib/ztm',
  );
  t.ok(
    dockerfile.some((i) => i.stage === 'runtime' && i.op === 'VOLUME' && i.args.includes('/var/lib/ztm')),
    'VOLUME /var/lib/ztm',
  );
});

// Opt-in (slow): replay the build stage — its COPYs into an empty directory,
// then its RUNs from `pnpm install` on, with /out and /tmp moved — and run the
// deployed trees. What a `docker build` does, minus the base image.
t.test(
  'Dockerfile: build stage replayed from its own COPYs',
  { skip: process.env.ZTM_TEST_DOCKER_BUILD === '1' ? false : 'set ZTM_TEST_DOCKER_BUILD=1 (runs pnpm install, tsc -b, pnpm deploy: slow)', timeout: 600_000 },
  async (t) => {
    const ctx = join(t.testdir(), 'src');
    const outDir = join(dirname(ctx), 'out');
    const tmpDir = join(dirname(ctx), 'tmp');
    mkdirSync(ctx);
    mkdirSync(tmpDir);
    const env = { ...process.env, COREPACK_ENABLE_DOWNLOAD_PROMPT: '0', CI: 'true' };
    let started = false;
    for (const i of buildStage) {
      if (i.op === 'COPY') {
        // Docker's rules: a directory's contents go to DEST; a file goes into
        // DEST/ when DEST ends in / or there are several sources, else to DEST.
        const parts = i.args.split(' ');
        const destRaw = parts.at(-1) as string;
        const sources = parts.slice(0, -1);
        const intoDir = destRaw.endsWith('/') || sources.length > 1;
        for (const s of sources) {
          const from = join(root, s);
          const to = statSync(from).isDirectory() || !intoDir ? join(ctx, destRaw) : join(ctx, destRaw, s.split('/').at(-1) as string);
          mkdirSync(statSync(from).isDirectory() ? to : dirname(to), { recursive: true });
          cpSync(from, to, { recursive: true });
        }
      } else if (i.op === 'RUN') {
        if (i.args.startsWith('pnpm install')) started = true;
        if (!started) continue; // apt-get, npm -g corepack: the machine's business
        const cmd = i.args.replaceAll('/out', outDir).replaceAll('/tmp/', `${tmpDir}/`);
        const r = sh('sh', ['-ec', cmd], { cwd: ctx, env, timeoutMs: 500_000 });
        t.equal(r.code, 0, `RUN ${i.args.slice(0, 80)}${r.code ? `\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}` : ''}`);
        if (r.code !== 0) return;
      }
    }
    for (const [target, bin] of [
      ['hub', 'ztm-hub'],
      ['agent', 'ztm-agent'],
    ]) {
      const r = sh(process.execPath, [
        join(outDir, target as string, 'bin', `${bin}.js`),
        'config',
        'check',
        '--config',
        join(dockerDir, `${target === 'hub' ? 'hub' : 'agent-a'}.yaml`),
      ]);
      t.equal(r.code, 0, `${bin} from the deployed tree runs ${r.stderr}`);
      t.notOk(existsSync(join(outDir, target as string, 'node_modules', 'typescript')), `${target}: no dev dependencies`);
    }
  },
);
