import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, get as httpGet } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { parseListen, parseTarget, parseTunnelId } from '@ztm/proto';
import { agentCli, freePort, hubCli, waitFor } from './helpers/index.js';
import { dockerDir, have, read, root, sh, stubBins, type Obj, yamlFile, YAML } from './helpers/packaging.js';
import { Proc } from './helpers/packaging.js';

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
