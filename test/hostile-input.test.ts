/**
 * Hostile input at the hub's port: garbage bytes, no certificate, oversized and
 * broken control frames, unsupported versions. Each is refused and dropped;
 * the hub keeps serving the agents it has.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { encodeFrame } from '@ztm/proto';
import { joinAgent, readJson, startAgent, startHub, waitFor } from './helpers/index.js';
import { agentCreds, endpointOf, hubEndpoints, scope } from './helpers/e2e-checks.js';
import { frameHeader, h2Session, openControl, within } from './helpers/e2e-wire.js';

t.test('hostile input', async (t) => {
  const s = scope(t, 'h');
  const hub = await startHub(s);
  const [sentinel, malloryDir] = await Promise.all([startAgent(s, hub, 'sentinel'), joinAgent(s, hub, 'mallory')]);
  const mallory = agentCreds(malloryDir);
  const hubCa = readFileSync(join(hub.dir, 'ca.crt'), 'utf8');
  const hubStillServes = async (t: Test) => {
    t.ok(hub.daemon.running, 'hub process still running');
    t.equal((await endpointOf(hub, 'sentinel', true))?.online, true, 'the running agent stays online');
    t.equal(sentinel.daemon.running, true, 'the agent process was not disturbed');
  };
  const warned = (code: string) =>
    hub.daemon
      .waitLog((l) => l.level === 40 && l.code === code, 5_000)
      .then(
        () => true,
        () => false,
      );
  const hello = (version: number) => encodeFrame({ type: 'hello', version, agentVersion: 'test', labels: {} });

  await t.test('control: a valid hello is welcomed', async (t) => {
    // The harness speaks the protocol right: what the next tests break is the only difference.
    const sess = await h2Session(hub.address, mallory);
    const c = openControl(sess);
    c.stream.write(hello(1));
    t.equal(await c.status, 200);
    await hub.daemon.waitLog((l) => l.msg === 'endpoint online' && l.endpoint === 'mallory', 5_000);
    await waitFor(() => c.frames.length > 0, { timeoutMs: 5_000, what: 'a frame from the hub' });
    t.match(c.frames[0], { type: 'welcome', endpoint: 'mallory', mesh: 'test' }, 'welcome frame');
    sess.destroy();
  });

  await t.test('raw garbage and plain HTTP', async (t) => {
    const inputs: [string, Buffer][] = [
      ['random bytes', Buffer.concat([Buffer.from([0]), randomBytes(4095)])],
      ['plain HTTP request', Buffer.from(`GET /v1/endpoints HTTP/1.1\r\nHost: ${hub.address}\r\n\r\n`)],
      ['HTTP/2 preface without TLS', Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')],
    ];
    for (const [what, bytes] of inputs) {
      const sock = net.connect(hub.port, '127.0.0.1');
      sock.on('error', () => {});
      let got = '';
      sock.on('data', (c: Buffer) => {
        got += c.toString('latin1');
      });
      const closed = once(sock, 'close');
      await once(sock, 'connect');
      sock.write(bytes);
      t.equal(await within(closed, 5_000), 'closed', `${what}: connection closed by the hub`);
      t.notMatch(got, /HTTP\/1\.[01] \d{3}|endpoint/, `${what}: no HTTP answer, no data`);
      sock.destroy();
    }
    const r = await hubEndpoints(hub);
    t.ok(
      r.some((e) => e.name === 'sentinel'),
      'ztm-hub endpoints still answers',
    );
    await hubStillServes(t);
  });

  await t.test('no client certificate', async (t) => {
    const anon = await h2Session(hub.address, { ca: hubCa });
    const c = openControl(anon);
    c.stream.end();
    t.equal(await c.status, 401, 'POST /v1/control without a certificate: 401');
    await within(c.closed, 5_000);
    t.match(JSON.parse(c.body() || '{}'), { error: { code: 'ZTM_ERR_UNAUTHENTICATED', message: String } }, 'JSON error body');

    // Enrolment is the one open route, and the hub checks the permit itself.
    const forged = { ...readJson<Record<string, unknown>>(await hub.permit('victim')), endpoint: 'mallory2' };
    const req = anon.request({ ':method': 'POST', ':path': '/v1/enrol', 'ztm-version': '1', 'content-type': 'application/json' });
    req.on('error', () => {});
    let status = 0;
    let body = '';
    req.on('response', (h) => {
      status = Number(h[':status']);
    });
    req.on('data', (c: Buffer) => {
      body += c;
    });
    req.end(JSON.stringify({ permit: forged, csr: 'not a csr' }));
    await within(once(req, 'close'), 5_000);
    t.equal(status, 403, 'a forged permit sent straight to the hub: 403');
    t.match(JSON.parse(body || '{}'), { error: { code: 'ZTM_ERR_PERMIT_TAMPERED' } });
    anon.destroy();
    await hubStillServes(t);
  });

  const dropped = async (t: Test, payload: Buffer, code: string, what: string) => {
    const sess = await h2Session(hub.address, mallory);
    const sessClosed = once(sess, 'close');
    const c = openControl(sess);
    c.stream.write(payload);
    t.equal(await within(c.closed, 5_000), 'closed', `${what}: control stream closed`);
    t.equal(await within(sessClosed, 5_000), 'closed', `${what}: session dropped`);
    t.ok(await warned(code), `${what}: hub logged a warning with ${code}`);
    sess.destroy();
    await hubStillServes(t);
    return c;
  };

  await t.test('frame announcing 10 MB', async (t) => {
    // Only the 4-byte header is sent: the hub must refuse before any body arrives.
    await dropped(t, frameHeader(10 * 1024 * 1024), 'ZTM_ERR_FRAME_TOO_LARGE', '10 MB frame header');
  });

  await t.test('frame of invalid JSON', async (t) => {
    const body = Buffer.from('{"type": hello');
    await dropped(t, Buffer.concat([frameHeader(body.length), body]), 'ZTM_ERR_BAD_FRAME', 'invalid JSON frame');
  });

  await t.test('hello of an unsupported version', async (t) => {
    const c = await dropped(t, hello(99), 'ZTM_ERR_UNSUPPORTED_VERSION', 'hello version 99');
    t.match(c.frames, [{ type: 'error', code: 'ZTM_ERR_UNSUPPORTED_VERSION' }], 'the agent is told why in an error frame');
    t.notOk(
      c.frames.some((f) => f.type === 'welcome'),
      'no welcome',
    );
    t.equal((await endpointOf(hub, 'mallory', true))?.online, false, 'mallory is not online');

    // The same in the request header: refused before any frame.
    const sess = await h2Session(hub.address, mallory);
    const h = openControl(sess, '99');
    h.stream.end();
    t.equal(await h.status, 426, 'ztm-version: 99 header: 426');
    await within(h.closed, 5_000);
    t.match(JSON.parse(h.body() || '{}'), { error: { code: 'ZTM_ERR_UNSUPPORTED_VERSION' } });
    sess.destroy();
  });
});
