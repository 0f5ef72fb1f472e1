/**
 * Restarts and losses: the hub restarted (gracefully and by kill -9) keeps its
 * endpoints, certificates and revocations and the agents come back on their
 * own; an agent killed or frozen is seen offline within the keepalive timeout;
 * keepalive is one PING per interval, from the agent, plus one from the hub to
 * an agent sending it data (whose own PINGs queue behind it); a frozen hub is noticed;
 * a reverse session that stops answering is dropped on its own.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { ClientHttp2Session } from 'node:http2';
import * as tls from 'node:tls';
import t from 'tap';
import { ALPN_REVERSE, type EndpointInfo, FileHeaders, FilePaths, encodeFrame } from '@ztm/proto';
import { type HubHandle, freePort, joinAgent, startAgent, startHub, waitFor } from './helpers/index.js';
import { type Creds, agentCreds, agentStatus, endpointOf, exitWithin, hubEndpoints, scope, sleep, waitOnline } from './helpers/e2e-checks.js';
import { h2Session, openControl } from './helpers/e2e-wire.js';

const KEEPALIVE = ['--keepalive-interval', '1s', '--keepalive-timeout', '3s'];

/** PINGs the hub has sent (its metrics endpoint). */
async function hubPingsSent(metricsPort: number, direction: 'sent' | 'sent_reverse' = 'sent'): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const m = new RegExp(`^ztm_hub_keepalive_pings_total\\{direction="${direction}"\\} (\\d+)`, 'm').exec(text);
  return Number(m?.[1] ?? Number.NaN);
}

/** A main session made by hand, online on the hub: control stream and hello,
 * no PINGs of its own (node:http2 answers the hub's by itself). */
async function agentByHand(t: ReturnType<typeof scope>, hub: HubHandle, name: string): Promise<{ creds: Creds; main: ClientHttp2Session }> {
  const creds = agentCreds(await joinAgent(t, hub, name));
  const main = await h2Session(hub.address, creds);
  t.teardown(() => main.destroy());
  const control = openControl(main);
  control.stream.write(encodeFrame({ type: 'hello', version: 1, agentVersion: 'test', labels: {} }));
  await hub.daemon.waitLog((l) => l.msg === 'endpoint online' && l.endpoint === name, 5_000);
  return { creds, main };
}

// Independent hubs: run side by side.
t.jobs = 2;

/** What must survive a restart (online and lastSeen may change). */
const durable = (list: EndpointInfo[]) => list.map(({ name, certExpires, revoked, enrolledAt }) => ({ name, certExpires, revoked, enrolledAt }));

t.test('hub restart', async (t) => {
  const s = scope(t, 'hr');
  const hub = await startHub(s, { serveArgs: KEEPALIVE });
  const [a, b, c] = await Promise.all([startAgent(s, hub, 'a'), startAgent(s, hub, 'b'), startAgent(s, hub, 'c')]);
  t.equal((await hub.cli(['revoke', 'c'])).code, 0, 'c revoked');
  t.equal(await exitWithin(c.daemon, 5_000), 3, 'c exits 3');
  const before = await hubEndpoints(hub);
  t.same(
    before.map((e) => [e.name, e.online, e.revoked]),
    [
      ['a', true, false],
      ['b', true, false],
      ['c', false, true],
    ],
  );
  const pids = [a.daemon.child.pid, b.daemon.child.pid];

  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    t.equal(await hub.daemon.stop(signal), signal === 'SIGTERM' ? 0 : null, `hub stopped by ${signal}`);
    await hub.restart(); // serve again on the same data directory and port
    const waited = await Promise.all([waitOnline(hub, 'a', true, 15_000), waitOnline(hub, 'b', true, 15_000)]);
    t.pass(`after ${signal}: a and b back online on their own (${waited.join(' ms, ')} ms)`);
    const after = await hubEndpoints(hub);
    t.same(durable(after), durable(before), `after ${signal}: endpoints, certificate expiry and revocations unchanged`);
    t.match(
      after.find((e) => e.name === 'c'),
      { revoked: true, online: false },
      `after ${signal}: c stays revoked`,
    );
    t.same([a.daemon.child.pid, b.daemon.child.pid], pids, `after ${signal}: same agent processes (no restart needed)`);
    t.ok(a.daemon.running && b.daemon.running, `after ${signal}: agents still running`);
    t.equal((await agentStatus(a)).hub.state, 'online', `after ${signal}: ztm-agent status says online`);
    const r = await a.cli(['endpoints', '--json']);
    t.equal(r.code, 0, `after ${signal}: ztm-agent endpoints answers through the hub`);
  }

  // The CA survived too: a new endpoint enrols and runs.
  await startAgent(s, hub, 'd');
  t.equal((await endpointOf(hub, 'd', true))?.online, true, 'a new endpoint enrols after the restarts');
});

t.test('agent loss', async (t) => {
  const s = scope(t, 'al');
  const hub = await startHub(s, { serveArgs: KEEPALIVE });
  const [killed, frozen] = await Promise.all([startAgent(s, hub, 'killed'), startAgent(s, hub, 'frozen')]);

  // kill -9: the socket closes, the hub sees it well within the keepalive timeout.
  await killed.daemon.stop('SIGKILL');
  const gone = await waitOnline(hub, 'killed', false, 5_000);
  t.ok(gone < 5_000, `kill -9: offline after ${gone} ms`);
  t.match(await endpointOf(hub, 'killed'), { online: false, revoked: false }, 'ztm-hub endpoints: killed offline');

  // SIGSTOP: the socket stays open but PINGs go unanswered.
  const pid = frozen.daemon.child.pid as number;
  process.kill(pid, 'SIGSTOP');
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {}
  });
  const silent = await waitOnline(hub, 'frozen', false, 3_000 + 2_000, 100).catch(() => -1);
  t.ok(silent >= 0, `frozen agent offline within keepalive timeout + 2 s (after ${silent} ms)`);
  // Its last sign of life can be up to 2.5 s before the stop: an idle agent is
  // PINGed by the hub once silent for two intervals (here 2 s), seen at the
  // hub's next visit (every half interval). So the 3 s timeout can end as soon
  // as 0.5 s after the stop; a closed socket is seen at once (kill -9 above).
  t.ok(silent < 0 || silent >= 400, 'not as soon as a closed socket would be (it was the keepalive)');
  t.ok(
    hub.daemon.logs().some((l) => l.endpoint === 'frozen' && l.msg === 'session closed' && /keepalive/.test(String(l.reason))),
    'hub log: session closed by keepalive timeout',
  );

  process.kill(pid, 'SIGCONT');
  const back = await waitOnline(hub, 'frozen', true, 10_000);
  t.pass(`SIGCONT: back online on its own after ${back} ms`);
  t.ok(frozen.daemon.running, 'same process');
  t.equal((await agentStatus(frozen)).hub.state, 'online', 'ztm-agent status says online');
});

t.test('keepalive is driven by the agent; a frozen hub is noticed by the agent', async (t) => {
  const s = scope(t, 'ka');
  const metricsPort = await freePort();
  const hub = await startHub(s, { serveArgs: [...KEEPALIVE, '--metrics', `127.0.0.1:${metricsPort}`] });
  const agent = await startAgent(s, hub, 'quiet', KEEPALIVE);
  // An outbound end: the agent keeps a reverse session too.
  t.equal((await agent.cli(['tunnel', 'open', 'outbound', 'tcp/quiet', '--target', '127.0.0.1:9'])).code, 0, 'an outbound end opened');
  await waitFor(async () => (await agentStatus(agent)).hub.reverse === true, { timeoutMs: 5_000, what: 'the reverse session' });
  // Idle for several intervals: the agent PINGs both sessions every interval
  // and the hub, hearing from it, sends none of its own (it probes only a
  // silent session). A silent agent would get a PING every 2 s or so (three
  // in 8 s, as in the next test) and be dropped after 3 s without an answer,
  // so staying online with at most one from the hub on each session means
  // the agent's PINGs reached it.
  const before = await hubPingsSent(metricsPort);
  const beforeReverse = await hubPingsSent(metricsPort, 'sent_reverse');
  await sleep(8_000);
  const after = await hubPingsSent(metricsPort);
  const afterReverse = await hubPingsSent(metricsPort, 'sent_reverse');
  t.ok(after - before <= 1, `the hub sent ${after - before} PING(s) in 8 s idle (it answers the agent's)`);
  t.ok(afterReverse - beforeReverse <= 1, `the hub sent ${afterReverse - beforeReverse} PING(s) on the reverse session in 8 s idle`);
  t.equal((await agentStatus(agent)).hub.reverse, true, 'the reverse session stayed open');
  t.equal((await agentStatus(agent)).hub.state, 'online', 'the agent stayed online');
  t.notOk(
    hub.daemon.logs().some((l) => l.msg === 'session closed'),
    'the hub closed no session',
  );

  // SIGSTOP the hub: its PINGs stop, the agent PINGs on its own, gets no
  // answer, and drops the session within its keepalive timeout.
  const pid = hub.daemon.child.pid as number;
  process.kill(pid, 'SIGSTOP');
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {}
  });
  const noticed = await waitFor(() => agent.daemon.logs().some((l) => l.msg === 'hub stopped answering pings'), {
    timeoutMs: 3_000 + 3_000,
    what: 'agent noticing the frozen hub',
  }).then(
    () => true,
    () => false,
  );
  t.ok(noticed, 'agent log: hub stopped answering pings');
  process.kill(pid, 'SIGCONT');
  const back = await waitOnline(hub, 'quiet', true, 15_000);
  t.pass(`SIGCONT: the agent is back online on its own after ${back} ms`);
  t.equal((await agentStatus(agent)).hub.state, 'online', 'ztm-agent status says online');
});

t.test('an agent sending the hub data hears a PING from it every interval', async (t) => {
  // On a slow uplink the agent's own PINGs, and the hub's answers, wait behind
  // its data; the hub's WINDOW_UPDATEs come every half window. The hub's
  // PINGs to a busy agent are what it hears from the hub meanwhile.
  const s = scope(t, 'bz');
  const hub = await startHub(s, { serveArgs: KEEPALIVE });
  const { main } = await agentByHand(s, hub, 'busy');
  let pings = 0;
  main.on('ping', () => pings++);
  // A file upload paced at 64 KiB every 100 ms for 4 s (2.5 MiB): busy in
  // every half interval, and no PING of this side's own.
  const chunk = randomBytes(64 * 1024);
  const n = 40;
  const sha = createHash('sha256');
  for (let i = 0; i < n; i++) sha.update(chunk);
  const upload = main.request({
    ':method': 'PUT',
    ':path': FilePaths.content(sha.digest('hex')),
    [FileHeaders.offset]: '0',
    [FileHeaders.size]: String(n * chunk.length),
  });
  const answer = once(upload, 'response');
  for (let i = 0; i < n; i++) {
    upload.write(chunk);
    await sleep(100);
  }
  upload.end();
  const [headers] = await answer;
  t.equal(headers[':status'], 200, 'the upload was taken');
  t.ok(pings >= 2, `the hub PINGed the busy agent ${pings} times in 4 s (keepalive 1 s)`);
  t.equal((await endpointOf(hub, 'busy', true))?.online, true, 'still online');
});

t.test('an agent that never PINGs (an earlier release) is probed by the hub and stays online', async (t) => {
  const s = scope(t, 'pr');
  const metricsPort = await freePort();
  const hub = await startHub(s, { serveArgs: [...KEEPALIVE, '--metrics', `127.0.0.1:${metricsPort}`] });
  await agentByHand(s, hub, 'elder');
  await sleep(8_000);
  const sent = await hubPingsSent(metricsPort);
  t.ok(sent >= 2, `the hub PINGed the silent agent (${sent} in 8 s; keepalive 1 s, a PING after 2 s of silence)`);
  t.equal((await endpointOf(hub, 'elder', true))?.online, true, 'still online after more than the 3 s timeout');
});

t.test('a reverse session that stops answering is dropped; the main session stays', async (t) => {
  const s = scope(t, 'rv');
  const hub = await startHub(s, { serveArgs: KEEPALIVE });
  const { creds } = await agentByHand(s, hub, 'stuck');
  // A reverse session whose far end completes TLS and then says nothing at
  // all, as a peer locked up in both directions would: no SETTINGS, no PING
  // answers.
  const [host, port] = hub.address.split(':') as [string, string];
  const rev = tls.connect({ host, port: Number(port), ...creds, ALPNProtocols: [ALPN_REVERSE], minVersion: 'TLSv1.3' });
  rev.on('error', () => {});
  rev.resume(); // read and discard what the hub sends, answer nothing
  t.teardown(() => rev.destroy());
  await once(rev, 'secureConnect');
  const dropped = await hub.daemon
    .waitLog((l) => l.endpoint === 'stuck' && l.msg === 'reverse session stopped answering pings; dropping it', 3_000 + 4_000)
    .then(
      () => true,
      () => false,
    );
  t.ok(dropped, 'hub log: the silent reverse session was dropped after the keepalive timeout');
  await waitFor(() => rev.destroyed || rev.readableEnded, { timeoutMs: 5_000, what: 'the reverse socket to close' });
  t.pass('the reverse connection was closed by the hub');
  t.equal((await endpointOf(hub, 'stuck', true))?.online, true, 'the main session stays online');
});

t.test('after a longer outage the agent is back within 2 s of the hub listening again', async (t) => {
  const s = scope(t, 'lo');
  const hub = await startHub(s, { serveArgs: KEEPALIVE });
  await startAgent(s, hub, 'patient');
  await hub.daemon.stop('SIGKILL');
  // Long enough for the uncapped backoff to reach 4–8 s: refused dials are
  // capped at 2 s (proto limits.ts), so it should not matter.
  await sleep(7_000);
  await hub.restart();
  const back = await waitOnline(hub, 'patient', true, 15_000, 50);
  t.ok(back <= 2_000 + 1_000, `back online ${back} ms after the hub listened again (cap 2 s + handshake)`);
});
