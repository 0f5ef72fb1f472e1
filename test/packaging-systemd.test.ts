import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { agentCli, freePort, hubCli } from './helpers/index.js';
import { have, read, sh, stubBins, yamlFile } from './helpers/packaging.js';
import { Proc } from './helpers/packaging.js';

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

// ---------------------------------------------------------------------------
// example configs
