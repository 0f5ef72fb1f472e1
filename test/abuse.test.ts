/**
 * Protocol abuse against a live hub, with configured limits: each is cut off
 * and counted while a well-behaved agent keeps its session and its tunnel.
 */
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { join } from 'node:path';
import * as tls from 'node:tls';
import t from 'tap';
import { freePort, joinAgent, startAgent, startHub, testDir, waitFor } from './helpers/index.js';
import { agentCreds } from './helpers/e2e-checks.js';
import { h2Session } from './helpers/e2e-wire.js';
import { connect, echoServer, readAll } from './helpers/servers.js';

t.test('limits hold under abuse; the hub keeps serving', async (t) => {
  const cfg = join(testDir(t), 'hub.yaml');
  writeFileSync(cfg, 'handshakeTimeout: 1s\nmaxUnauthenticated: 5\nenrolPerMinute: 5\nmaxStreamsPerSession: 20\n');
  const metricsPort = await freePort();
  const hub = await startHub(t, { serveArgs: ['--config', cfg, '--metrics', `127.0.0.1:${metricsPort}`] });
  const good = await startAgent(t, hub, 'good'); // enrolment attempt 1 of 5 this minute
  const flooderDir = await joinAgent(t, hub, 'flooder'); // attempt 2
  const echo = await echoServer(t);
  const port = await freePort();
  await good.cli(['tunnel', 'open', 'outbound', 'tcp/echo', '--target', `127.0.0.1:${echo.port}`]);
  await good.cli(['tunnel', 'open', 'inbound', 'tcp/echo', '--listen', String(port)]);
  const stillServes = async (what: string) => {
    const c = await connect(port);
    const r = readAll(c);
    c.end(what);
    t.equal((await r).toString(), what, `tunnel still works after ${what}`);
    const list = JSON.parse((await hub.cli(['endpoints', '--json'])).stdout);
    t.equal(list.find((e: { name: string }) => e.name === 'good')?.online, true, `good agent still online after ${what}`);
  };

  await t.test('slowloris: connections that never handshake are closed', async (t) => {
    const socks = await Promise.all(
      Array.from({ length: 50 }, async () => {
        const s = net.connect(hub.port, '127.0.0.1');
        s.on('error', () => {});
        s.resume();
        await once(s, 'connect');
        return s;
      }),
    );
    const closed = await Promise.all(socks.map((s) => Promise.race([once(s, 'close').then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))])));
    t.equal(closed.filter(Boolean).length, 50, 'all 50 idle connections dropped by the handshake timeout');
    await stillServes('slowloris');
  });

  await t.test('TLS without a certificate: capped, and enrol-only', async (t) => {
    const socks: tls.TLSSocket[] = [];
    for (let i = 0; i < 12; i++) {
      const s = tls.connect({ host: '127.0.0.1', port: hub.port, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
      s.on('error', () => {});
      await once(s, 'secureConnect').catch(() => {});
      s.resume(); // read, so a close from the hub is seen
      socks.push(s);
    }
    await new Promise((r) => setTimeout(r, 500));
    const open = socks.filter((s) => !s.destroyed && s.readyState === 'open').length;
    t.ok(open <= 5, `at most 5 unauthenticated connections held (${open} open)`);
    for (const s of socks) s.destroy();
    await stillServes('unauthenticated flood');
  });

  await t.test('enrolment attempts per address are limited', async (t) => {
    const codes: string[] = [];
    for (let i = 0; i < 6; i++) {
      const s = await h2Session(hub.address, { ca: agentCreds(good.dir).ca });
      const req = s.request({ ':method': 'POST', ':path': '/v1/enrol', 'content-type': 'application/json' });
      req.end(JSON.stringify({ permit: { bogus: true }, csr: 'x' }));
      const body = await readAll(req as unknown as net.Socket);
      codes.push(JSON.parse(body.toString()).error.code);
      s.close();
    }
    t.same(codes.slice(0, 3), Array(3).fill('ZTM_ERR_PERMIT_INVALID'), 'the first attempts are judged on their merits');
    t.same(codes.slice(3), Array(3).fill('ZTM_ERR_TOO_MANY'), 'then refused as too many');
    await stillServes('enrolment flood');
  });

  await t.test('a stream flood stops at maxConcurrentStreams', async (t) => {
    const s = await h2Session(hub.address, agentCreds(flooderDir));
    if (s.remoteSettings.maxConcurrentStreams !== 20) await once(s, 'remoteSettings');
    t.equal(s.remoteSettings.maxConcurrentStreams, 20, 'the hub advertises its stream limit');
    // Requests whose bodies never end hold their streams open.
    const reqs = Array.from({ length: 30 }, () => {
      const r = s.request({ ':method': 'POST', ':path': '/v1/renew' });
      r.on('error', () => {});
      r.write('{');
      return r;
    });
    await new Promise((r) => setTimeout(r, 500));
    // nghttp2 keeps streams past the peer's limit idle (not sent) until others close.
    const open = reqs.filter((r) => r.state?.state === http2.constants.NGHTTP2_STREAM_STATE_OPEN).length;
    t.equal(open, 20, `exactly 20 streams open on the hub; the other ${30 - open} wait`);
    s.destroy();
    await stillServes('stream flood');
  });

  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  t.match(text, /ztm_hub_enrolments_total\{result="ZTM_ERR_TOO_MANY"\} 3/, 'enrolment refusals counted');
  t.match(text, /ztm_hub_handshake_failures_total\{reason="[A-Z_]+"\} \d+/, 'handshake failures counted by reason');
  await waitFor(() => true);
});
