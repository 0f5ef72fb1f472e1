/**
 * Real clients through a tunnel, as users would use it: ssh to a local sshd,
 * curl to an HTTP server, redis-cli to redis-server, iperf3 to its server.
 * scripts/test installs them (Debian packages); a missing one skips with why.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { join } from 'node:path';
import t from 'tap';
import { freePort, testDir, waitFor } from './helpers/index.js';
import { openTunnel, startMesh } from './helpers/tunnels.js';
import { connect } from './helpers/servers.js';

const which = (cmd: string): string | null => {
  for (const dir of ['/usr/bin', '/usr/sbin', '/bin', '/sbin', '/usr/local/bin']) {
    try {
      execFileSync('test', ['-x', `${dir}/${cmd}`]);
      return `${dir}/${cmd}`;
    } catch {}
  }
  return null;
};

function daemon(t: { teardown(fn: () => unknown): void }, cmd: string, args: string[]) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    out += d;
  });
  t.teardown(() => child.kill('SIGKILL'));
  return { child, output: () => out };
}

async function portOpen(port: number): Promise<boolean> {
  return connect(port)
    .then((s) => {
      s.destroy();
      return true;
    })
    .catch(() => false);
}

t.test('real clients through tunnels', async (t) => {
  const m = await startMesh(t, ['laptop', 'server']);
  const dir = testDir(t);

  const curl = which('curl');
  await t.test('curl to an HTTP server', { skip: curl ? false : 'curl not installed (scripts/test installs it)' }, async (t) => {
    if (!curl) return;
    const srv = createServer((req, res) => res.end(`hello ${req.url}`));
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    t.teardown(() => srv.close());
    const port = await freePort();
    await openTunnel(m, 'laptop', 'server', 'tcp/web', (srv.address() as { port: number }).port, port);
    // Async: the HTTP server lives in this process, so its event loop must run.
    const { stdout } = await promisify(execFile)(curl, ['-sS', '--max-time', '10', `http://127.0.0.1:${port}/tunnelled`], { encoding: 'utf8' });
    t.equal(stdout, 'hello /tunnelled');
  });

  const server = which('redis-server');
  const cli = which('redis-cli');
  await t.test(
    'redis-cli to redis-server',
    { skip: server && cli ? false : 'redis not installed (scripts/test installs redis-server, redis-tools)' },
    async (t) => {
      if (!server || !cli) return;
      const rport = await freePort();
      daemon(t, server, ['--port', String(rport), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]);
      await waitFor(() => portOpen(rport), { what: 'redis up' });
      const port = await freePort();
      await openTunnel(m, 'laptop', 'server', 'tcp/redis', rport, port);
      t.equal(execFileSync(cli, ['-p', String(port), 'SET', 'greeting', 'through the mesh'], { encoding: 'utf8' }).trim(), 'OK');
      t.equal(execFileSync(cli, ['-p', String(port), 'GET', 'greeting'], { encoding: 'utf8' }).trim(), 'through the mesh');
      t.equal(execFileSync(cli, ['-p', String(rport), 'GET', 'greeting'], { encoding: 'utf8' }).trim(), 'through the mesh', 'the real server has it');
    },
  );

  const sshd = which('sshd');
  const ssh = which('ssh');
  const keygen = which('ssh-keygen');
  const sshSkip =
    !sshd || !ssh || !keygen
      ? 'OpenSSH not installed (scripts/test installs openssh-server)'
      : process.getuid?.() !== 0
        ? 'sshd with a custom config needs root here'
        : false;
  await t.test('ssh to a local sshd (server speaks first)', { skip: sshSkip }, async (t) => {
    if (!sshd || !ssh || !keygen) return;
    const sdir = join(dir, 'ssh');
    mkdirSync(sdir, { recursive: true });
    chmodSync(dir, 0o755);
    chmodSync(sdir, 0o700);
    mkdirSync('/run/sshd', { recursive: true });
    execFileSync(keygen, ['-q', '-t', 'ed25519', '-N', '', '-f', join(sdir, 'host')]);
    execFileSync(keygen, ['-q', '-t', 'ed25519', '-N', '', '-f', join(sdir, 'client')]);
    execFileSync('cp', [join(sdir, 'client.pub'), join(sdir, 'authorized_keys')]);
    chmodSync(join(sdir, 'authorized_keys'), 0o600);
    const sport = await freePort();
    writeFileSync(
      join(sdir, 'sshd_config'),
      [
        `Port ${sport}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${join(sdir, 'host')}`,
        `AuthorizedKeysFile ${join(sdir, 'authorized_keys')}`,
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'PermitRootLogin prohibit-password',
        'StrictModes no',
        'UsePAM no',
        `PidFile ${join(sdir, 'sshd.pid')}`,
      ].join('\n'),
    );
    daemon(t, sshd, ['-D', '-e', '-f', join(sdir, 'sshd_config')]);
    await waitFor(() => portOpen(sport), { what: 'sshd up' });
    const port = await freePort();
    await openTunnel(m, 'laptop', 'server', 'tcp/ssh', sport, port);
    const out = execFileSync(
      ssh,
      [
        '-p',
        String(port),
        '-i',
        join(sdir, 'client'),
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        `UserKnownHostsFile=${join(sdir, 'known')}`,
        '-o',
        'BatchMode=yes',
        '-o',
        'ConnectTimeout=10',
        'root@127.0.0.1',
        'echo ssh-through-ztm $((6*7))',
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    t.equal(out.trim(), 'ssh-through-ztm 42');
  });

  const iperf = which('iperf3');
  await t.test(
    'iperf3 through the tunnel (data moves, both directions)',
    { skip: iperf ? false : 'iperf3 not installed (scripts/test installs it)' },
    async (t) => {
      if (!iperf) return;
      const iport = await freePort();
      daemon(t, iperf, ['-s', '-p', String(iport), '-B', '127.0.0.1']);
      await waitFor(() => portOpen(iport), { what: 'iperf3 up' });
      const port = await freePort();
      await openTunnel(m, 'laptop', 'server', 'tcp/iperf', iport, port);
      for (const reverse of [false, true]) {
        const run = () =>
          JSON.parse(
            execFileSync(iperf, ['-c', '127.0.0.1', '-p', String(port), '-t', '1', '-J', ...(reverse ? ['-R'] : [])], { encoding: 'utf8', timeout: 30_000 }),
          );
        let out = run();
        // iperf3's server takes one test at a time and may still be closing the
        // previous one: it says "busy". Bounded retries; any other error fails.
        for (let i = 0; i < 5 && /busy/i.test(String(out.error ?? '')); i++) {
          await new Promise((r) => setTimeout(r, 500));
          out = run();
        }
        t.notOk(out.error, `iperf3${reverse ? ' -R' : ''} reported no error${out.error ? ` (${out.error})` : ''}`);
        const bps = (out.end?.sum_received?.bits_per_second ?? 0) as number;
        t.ok(bps > 0, `iperf3${reverse ? ' -R' : ''}: ${(bps / 1e9).toFixed(2)} Gbit/s (a benchmark, not an assertion)`);
      }
    },
  );
});
