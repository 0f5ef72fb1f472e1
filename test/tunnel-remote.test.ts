/**
 * Operating another endpoint's tunnels through the hub: allowed for the same
 * user or a hub admin, refused otherwise — decided from certificates.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { agentCli, freePort, runAgent, startHub, testDir } from './helpers/index.js';
import { connect, echoServer, readAll } from './helpers/servers.js';
import { tunnelList } from './helpers/tunnels.js';

t.test('remote tunnel management is authorised by the hub', async (t) => {
  const cfg = join(testDir(t), 'hub.yaml');
  writeFileSync(cfg, 'admins: [ops]\n');
  const hub = await startHub(t, { serveArgs: ['--config', cfg] });
  const join_ = async (name: string, user: string) => {
    const dir = join(testDir(t), name);
    const permit = join(testDir(t), `${name}.permit`);
    await hub.cli(['permit', 'create', name, '--user', user, '--out', permit]);
    const r = await agentCli(['join', '--permit', permit, '--data', dir]);
    if (r.code !== 0) throw new Error(r.stderr);
    return runAgent(t, dir, name);
  };
  const laptop = await join_('laptop', 'alice');
  const server = await join_('server', 'alice');
  const mallory = await join_('mallory', 'mallory');
  const ops = await join_('console', 'ops');
  const echo = await echoServer(t);

  // alice's laptop opens an outbound end on alice's server, remotely.
  const r = await laptop.cli(['tunnel', 'open', 'outbound', 'tcp/echo', '--target', `127.0.0.1:${echo.port}`, '--endpoint', 'server']);
  t.equal(r.code, 0, r.stderr);
  t.equal((await tunnelList(server)).find((v) => v.tunnel === 'tcp/echo')?.direction, 'outbound', 'the end exists on the server');
  await server.daemon.waitLog((l) => l.msg === 'tunnel managed remotely' && l.by === 'laptop');
  const port = await freePort();
  await laptop.cli(['tunnel', 'open', 'inbound', 'tcp/echo', '--listen', String(port)]);
  const c = await connect(port);
  const reply = readAll(c);
  c.end('remote');
  t.equal((await reply).toString(), 'remote', 'and it carries traffic');

  const denied = await mallory.cli(['tunnel', 'open', 'outbound', 'tcp/steal', '--target', '127.0.0.1:22', '--endpoint', 'server']);
  t.not(denied.code, 0, 'another user is refused');
  t.match(denied.stderr, /may not manage server.*same user or a hub admin/, denied.stderr.trim());
  t.notOk(
    (await tunnelList(server)).find((v) => v.tunnel === 'tcp/steal'),
    'nothing was opened',
  );

  const list = await ops.cli(['tunnel', 'list', '--endpoint', 'server', '--json']);
  t.equal(list.code, 0, `an admin may: ${list.stderr}`);
  t.ok(
    JSON.parse(list.stdout).find((v: { tunnel: string }) => v.tunnel === 'tcp/echo'),
    'admin sees the server tunnels',
  );
  const closed = await ops.cli(['tunnel', 'close', 'outbound', 'tcp/echo', '--endpoint', 'server']);
  t.equal(closed.code, 0, closed.stderr);
  t.notOk(
    (await tunnelList(server)).find((v) => v.tunnel === 'tcp/echo'),
    'closed by the admin',
  );
});
