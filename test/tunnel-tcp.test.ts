/**
 * TCP tunnels end to end: real hub and agent processes, real sockets.
 */
import { once } from 'node:events';
import t from 'tap';
import { freePort } from './helpers/index.js';
import { openTunnel, startMesh, tunnelList, tunnelOpen, waitFor } from './helpers/tunnels.js';
import { connect, echoServer, hashAll, pseudoRandom, readAll, sha256Of, tcpServer, writeAll } from './helpers/servers.js';

t.test('tcp tunnel data path', async (t) => {
  const m = await startMesh(t, ['entry', 'exit']);
  const echo = await echoServer(t);
  const port = await freePort();
  await openTunnel(m, 'entry', 'exit', 'tcp/echo', echo.port, port);

  await t.test('256 MiB each way at once, SHA-256 equal', async (t) => {
    const total = 256 * 1024 * 1024;
    // A server that sends its own 256 MiB while hashing what it receives.
    let serverSide: Promise<{ bytes: number; sha256: string }> | undefined;
    const both = await tcpServer(t, (s) => {
      serverSide = hashAll(s);
      void writeAll(s, pseudoRandom('down', total));
    });
    const bulkPort = await freePort();
    await openTunnel(m, 'entry', 'exit', 'tcp/bulk', both.port, bulkPort);
    const c = await connect(bulkPort);
    const down = hashAll(c);
    await writeAll(c, pseudoRandom('up', total));
    const got = await down;
    await waitFor(() => serverSide);
    const up = await (serverSide as Promise<{ bytes: number; sha256: string }>);
    t.equal(up.bytes, total, 'server received every byte');
    t.equal(up.sha256, sha256Of('up', total), 'upstream bytes intact');
    t.equal(got.bytes, total, 'client received every byte');
    t.equal(got.sha256, sha256Of('down', total), 'downstream bytes intact');
  });

  await t.test('500 concurrent connections echo 64 KiB each', async (t) => {
    const payloadFor = (i: number) => Buffer.concat([...pseudoRandom(`c${i}`, 64 * 1024)]);
    const results = await Promise.all(
      Array.from({ length: 500 }, async (_, i) => {
        const c = await connect(port);
        const reply = readAll(c);
        const p = payloadFor(i);
        c.end(p);
        return (await reply).equals(p);
      }),
    );
    t.equal(results.filter(Boolean).length, 500, 'all 500 replies intact');
    const [entry] = await tunnelList(m.agents.entry!);
    await waitFor(async () => (await tunnelList(m.agents.entry!))[0]?.stats.open === 0, { what: 'streams closed' });
    t.ok((entry?.stats.total ?? 0) >= 500, 'entrance counted the streams');
    const exitOpen = async () => (await tunnelList(m.agents.exit!)).find((v) => v.tunnel === 'tcp/echo')?.stats.open;
    await waitFor(async () => (await exitOpen()) === 0, { timeoutMs: 10_000, what: 'exit streams closed' }).catch(() => {});
    t.equal(await exitOpen(), 0, 'the exit closed every stream too (none leaked)');
  });

  await t.test('half-close: client shuts its write side and still reads the whole reply', async (t) => {
    // The server reads everything first, then answers: only works if the
    // client's FIN travels alone and the reply path stays open.
    const delayed = await tcpServer(t, (s) => {
      readAll(s).then((all) => {
        s.write(`got ${all.length} bytes\n`);
        setTimeout(() => s.end('bye\n'), 200);
      });
    });
    const hp = await freePort();
    await openTunnel(m, 'entry', 'exit', 'tcp/half', delayed.port, hp);
    const c = await connect(hp);
    const reply = readAll(c);
    c.end(Buffer.alloc(100_000, 1));
    t.equal((await reply).toString(), 'got 100000 bytes\nbye\n');
  });

  await t.test('server speaks first (banner on accept)', async (t) => {
    const banner = await tcpServer(t, (s) => {
      s.write('220 banner.example ESMTP ready\r\n');
      s.on('data', (d) => {
        if (String(d).startsWith('QUIT')) s.end('221 bye\r\n');
      });
    });
    const bp = await freePort();
    await openTunnel(m, 'entry', 'exit', 'tcp/smtp', banner.port, bp);
    const c = await connect(bp);
    const [first] = (await once(c, 'data')) as [Buffer];
    t.equal(first.toString(), '220 banner.example ESMTP ready\r\n', 'banner arrives before the client sends anything');
    const rest = readAll(c);
    c.write('QUIT\r\n');
    t.equal((await rest).toString(), '221 bye\r\n');
  });

  await t.test('target refused: the client closes promptly; both agents log and count it', async (t) => {
    const dead = await freePort(); // nothing listens here
    const rp = await freePort();
    await openTunnel(m, 'entry', 'exit', 'tcp/refused', dead, rp);
    const started = Date.now();
    // The reset can come before this side has seen its connect complete: a
    // reset at connect is the same answer.
    const c = await connect(rp).catch((err: NodeJS.ErrnoException) => {
      t.equal(err.code, 'ECONNRESET', 'reset as the connection opened');
      return null;
    });
    const data = c ? await readAll(c).catch(() => Buffer.alloc(0)) : Buffer.alloc(0);
    t.equal(data.length, 0, 'no bytes');
    t.ok(Date.now() - started < 3000, `closed within 3 s (${Date.now() - started} ms)`);
    const exitView = (await tunnelList(m.agents.exit!)).find((v) => v.tunnel === 'tcp/refused');
    const entryView = (await tunnelList(m.agents.entry!)).find((v) => v.tunnel === 'tcp/refused');
    t.equal(exitView?.stats.failures.ZTM_ERR_TARGET_UNREACHABLE, 1, 'exit counted the refusal');
    t.equal(entryView?.stats.failures.ZTM_ERR_TARGET_UNREACHABLE, 1, 'entrance counted the refusal');
    await m.agents.exit!.daemon.waitLog((l) => l.msg === 'target unreachable' && String(l.reason).includes('ECONNREFUSED'));
    await m.agents.entry!.daemon.waitLog((l) => l.msg === 'connection refused' && l.code === 'ZTM_ERR_TARGET_UNREACHABLE');
    t.equal(exitView?.stats.open, 0, 'nothing left open');
  });
});

t.test('an exit that refuses: the hub tries the next, and the bytes the client sent first arrive whole', async (t) => {
  // The entrance sends a connection's first bytes with its stream's HEADERS
  // and the hub passes them on before the exit has answered, keeping a copy
  // of up to 64 KiB; an exit whose target refuses answers so, and the hub
  // sends the copy to the next. The client writes 100,000 bytes and its FIN
  // at once: more than the hub keeps, so the rest waits for an answer.
  const m = await startMesh(t, ['entry', 'refusing', 'working']);
  const dead = await freePort(); // nothing listens here
  const echo = await echoServer(t);
  const port = await freePort();
  await tunnelOpen(m.agents.refusing!, ['outbound', 'tcp/failover', '--target', `127.0.0.1:${dead}`]);
  await tunnelOpen(m.agents.working!, ['outbound', 'tcp/failover', '--target', `127.0.0.1:${echo.port}`]);
  await tunnelOpen(m.agents.entry!, ['inbound', 'tcp/failover', '--listen', `127.0.0.1:${port}`]);
  for (let i = 0; i < 4; i++) {
    const payload = Buffer.concat([...pseudoRandom(`failover-${i}`, 100_000)]);
    const c = await connect(port);
    const reply = readAll(c);
    c.end(payload);
    t.ok((await reply).equals(payload), `connection ${i + 1}: the whole request came back through the working exit`);
  }
  // Exits are taken in turn: half the connections met the refusing one first.
  const refusals = m.hub.daemon.logs().filter((l) => l.msg === 'exit refused; trying next');
  t.equal(refusals.length, 2, 'the hub met the refusing exit first twice, and tried the next');
  const refusing = (await tunnelList(m.agents.refusing!)).find((v) => v.tunnel === 'tcp/failover');
  t.equal(refusing?.stats.failures.ZTM_ERR_TARGET_UNREACHABLE, 2, 'the refusing exit counted its two refusals');
  const working = (await tunnelList(m.agents.working!)).find((v) => v.tunnel === 'tcp/failover');
  t.equal(working?.stats.total, 4, 'the working exit carried all four');
});

t.test('an exit that goes without answering may have passed the first bytes on: the hub does not send them to another', async (t) => {
  // The hub sends an exit a connection's first bytes before it answers (see
  // above). An exit that refuses passed nothing on; one that vanishes before
  // answering may have (the answer can be lost after its target got them), so
  // sending them to the next exit could deliver a request twice. The first
  // exit here is frozen, then killed, with the bytes on their way to it.
  const m = await startMesh(t, ['entry', 'vanishing', 'working']);
  let reached = 0;
  const echo = await tcpServer(t, (s) => {
    reached++;
    s.pipe(s);
  });
  const echo2 = await echoServer(t);
  const port = await freePort();
  await tunnelOpen(m.agents.vanishing!, ['outbound', 'tcp/once', '--target', `127.0.0.1:${echo2.port}`]);
  await tunnelOpen(m.agents.working!, ['outbound', 'tcp/once', '--target', `127.0.0.1:${echo.port}`]);
  await tunnelOpen(m.agents.entry!, ['inbound', 'tcp/once', '--listen', `127.0.0.1:${port}`, '--exit', 'vanishing', 'working']);
  const vanishing = m.agents.vanishing!.daemon;
  vanishing.child.kill('SIGSTOP');
  const c = await connect(port);
  let back = 0;
  c.on('data', (d: Buffer) => {
    back += d.length;
  });
  const closed = new Promise((r) => c.once('close', r));
  c.on('error', () => {});
  c.write('a request that must not arrive twice\n');
  await new Promise((r) => setTimeout(r, 1_000)); // the bytes reach the hub and go on to the frozen exit
  await vanishing.stop('SIGKILL');
  await m.hub.daemon.waitLog((l) => l.msg === 'exit did not answer; not retrying' && l.exit === 'vanishing', 10_000).catch(() => {});
  t.ok(await Promise.race([closed.then(() => true), new Promise((r) => setTimeout(() => r(false), 5_000))]), 'the client connection failed');
  c.destroy();
  t.equal(back, 0, 'the client got nothing back');
  t.equal(reached, 0, 'the working exit never saw the request');
  t.equal(m.hub.daemon.logs().filter((l) => l.msg === 'exit did not answer; not retrying').length, 1, 'the hub said why it did not try the next');
  // With the vanished exit gone the next connection goes to the working one.
  const c2 = await connect(port);
  const reply2 = readAll(c2);
  c2.end('hello\n');
  t.equal((await reply2).toString(), 'hello\n', 'a new connection goes through the working exit');
  t.equal(reached, 1, 'once');
});

t.test('allow-lists are checked by the hub with certificate identities', async (t) => {
  const m = await startMesh(t, ['friend', 'stranger', 'exit']);
  const echo = await echoServer(t);
  await m.agents.exit!.cli(['tunnel', 'open', 'outbound', 'tcp/private', '--target', `127.0.0.1:${echo.port}`, '--allow-endpoint', 'friend']);
  const fp = await freePort();
  const sp = await freePort();
  await m.agents.friend!.cli(['tunnel', 'open', 'inbound', 'tcp/private', '--listen', String(fp)]);
  await m.agents.stranger!.cli(['tunnel', 'open', 'inbound', 'tcp/private', '--listen', String(sp)]);

  const ok = await connect(fp);
  const okReply = readAll(ok);
  ok.end('hello');
  t.equal((await okReply).toString(), 'hello', 'allowed endpoint gets through');

  const no = await connect(sp);
  t.equal((await readAll(no).catch(() => Buffer.alloc(0))).length, 0, 'stranger is closed without data');
  const view = (await tunnelList(m.agents.stranger!))[0];
  t.equal(view?.stats.failures.ZTM_ERR_FORBIDDEN, 1, 'refused as forbidden');
  await m.hub.daemon.waitLog((l) => l.msg === 'relay refused' && l.source === 'stranger' && l.code === 'ZTM_ERR_FORBIDDEN');
  const exitView = (await tunnelList(m.agents.exit!))[0];
  t.equal(exitView?.stats.total, 1, 'the exit never saw the stranger');
});
