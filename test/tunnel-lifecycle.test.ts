/** Tunnels across restarts, and bad input at the CLI. */
import { createServer } from 'node:net';
import { once } from 'node:events';
import t from 'tap';
import { freePort } from './helpers/index.js';
import { openTunnel, startMesh, tunnelList, waitFor } from './helpers/tunnels.js';
import { connect, echoServer, readAll } from './helpers/servers.js';

async function roundTrip(port: number, text: string): Promise<string> {
  const c = await connect(port);
  const r = readAll(c);
  c.end(text);
  return (await r).toString();
}

t.test('tunnels survive agent and hub restarts', async (t) => {
  const m = await startMesh(t, ['entry', 'exit']);
  const echo = await echoServer(t);
  const port = await freePort();
  await openTunnel(m, 'entry', 'exit', 'tcp/echo', echo.port, port);
  t.equal(await roundTrip(port, 'before'), 'before');

  await m.agents.entry!.restart();
  await m.agents.exit!.restart();
  t.equal((await tunnelList(m.agents.entry!)).find((v) => v.tunnel === 'tcp/echo')?.state, 'listening', 'entrance restored its listener');
  t.equal((await tunnelList(m.agents.exit!)).find((v) => v.tunnel === 'tcp/echo')?.state, 'ready', 'exit restored its outbound end');
  t.equal(await waitFor(() => roundTrip(port, 'after agents').catch(() => ''), { timeoutMs: 5000 }), 'after agents', 'works after agent restarts');

  await m.hub.restart();
  const started = Date.now();
  const back = await waitFor(() => roundTrip(port, 'after hub').catch(() => ''), { timeoutMs: 10_000, intervalMs: 50 });
  t.equal(back, 'after hub', 'works again after a hub restart without operator action');
  t.comment(`tunnel usable ${Date.now() - started} ms after the hub was listening again`);

  await m.hub.daemon.stop('SIGKILL');
  await m.hub.restart();
  t.equal(await waitFor(() => roundTrip(port, 'after kill -9').catch(() => ''), { timeoutMs: 10_000, intervalMs: 50 }), 'after kill -9');
});

t.test('bad input is refused with a clear message; a port in use fails that tunnel alone', async (t) => {
  const m = await startMesh(t, ['a']);
  const a = m.agents.a!;
  const bad: [string[], RegExp][] = [
    [['inbound', 'tcp/Bad_Name', '--listen', '9999'], /tunnel name .* not valid/],
    [['inbound', 'sctp/x', '--listen', '9999'], /must be tcp\/NAME or udp\/NAME/],
    [['inbound', 'tcp/x', '--listen', '70000'], /listen address .* port from 1 to 65535/],
    [['inbound', 'tcp/x', '--listen', 'nonsense'], /listen address/],
    [['inbound', 'tcp/x'], /needs at least one --listen/],
    [['outbound', 'tcp/x', '--target', 'no-port'], /target .* must be HOST:PORT/],
    [['outbound', 'tcp/x', '--target', 'h:0'], /target .* port from 1 to 65535/],
    [['outbound', 'tcp/x', '--target', 'h:1', '--allow-endpoint', 'NOT OK'], /not a valid endpoint/],
    [['sideways', 'tcp/x'], /direction must be inbound or outbound/],
  ];
  for (const [args, re] of bad) {
    const r = await a.cli(['tunnel', 'open', ...args]);
    t.not(r.code, 0, `${args.join(' ')} exits non-zero`);
    t.match(r.stderr, re, `${args.join(' ')}: ${r.stderr.trim()}`);
    t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  }

  const echo = await echoServer(t);
  const good = await freePort();
  await a.cli(['tunnel', 'open', 'outbound', 'tcp/loop', '--target', `127.0.0.1:${echo.port}`]);
  await a.cli(['tunnel', 'open', 'inbound', 'tcp/loop', '--listen', String(good)]);
  const squatter = createServer();
  squatter.listen(0, '127.0.0.1');
  await once(squatter, 'listening');
  t.teardown(() => squatter.close());
  const taken = (squatter.address() as { port: number }).port;
  const r = await a.cli(['tunnel', 'open', 'inbound', 'tcp/other', '--listen', String(taken)]);
  t.not(r.code, 0, 'port in use: non-zero exit');
  t.match(r.stderr, /cannot listen on 127\.0\.0\.1:\d+: the port is in use/, r.stderr.trim());
  t.equal(await roundTrip(good, 'still fine'), 'still fine', 'the other tunnel keeps working');
  t.notOk(
    (await tunnelList(a)).find((v) => v.tunnel === 'tcp/other'),
    'the failed tunnel was not kept',
  );

  // A persisted tunnel whose port is taken at start fails alone too.
  await a.daemon.stop();
  const f = (await import('node:fs')).readFileSync(`${a.dir}/tunnels.json`, 'utf8');
  const file = JSON.parse(f);
  file.inbound.push({ tunnel: 'tcp/clash', listen: [`127.0.0.1:${taken}`], exits: [] });
  (await import('node:fs')).writeFileSync(`${a.dir}/tunnels.json`, JSON.stringify(file));
  await a.restart();
  const views = await tunnelList(a);
  t.match(views.find((v) => v.tunnel === 'tcp/clash')?.state, /failed: .*port is in use/, 'restored tunnel reports why it failed');
  t.equal(await waitFor(() => roundTrip(good, 'after restart').catch(() => ''), { timeoutMs: 5000 }), 'after restart', 'the others came back');
});
