/**
 * The hub's keepalive of a reverse session (the one it sends an exit its
 * tunnels' data on) judges the agent by what the agent does, not by what the
 * hub happens to read.
 *
 * node:http2 stops reading its socket while one of its own writes is pending,
 * so while the hub sends an agent data faster than the agent takes it, the
 * agent's PINGs and WINDOW_UPDATEs wait unread in the hub's socket buffer,
 * however alive the agent is: on a slow link an upload's exit was dropped
 * this way (test/slow-uplink.test.ts failed once in CI with 'reverse session
 * stopped answering pings'). An agent taking the hub's data is alive; one
 * frozen is not, and the hub's writes to it stop once the buffers between
 * them are full.
 *
 * Here the agent end is a real process speaking HTTP/2 on loopback that
 * sends nothing at all while it reads (its windows are too large to need a
 * WINDOW_UPDATE and it sends no PING): silence on the wire in both cases, so
 * only the hub's view of its own writes tells the two apart.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { silentLogger } from '@ztm/hub';
import t, { type Test } from 'tap';
import { AgentSession } from '../packages/hub/src/session/agent-session.js';

// Long enough that a test process starved of CPU for a moment (parallel
// tests on two cores) does not look like an agent gone quiet.
const TIMEOUT_MS = 2_000;
const NEVER_PROBE_MS = 60_000;

// The agent end: serves the reverse session, answers each stream 200 and
// reads its data, sends nothing else. Windows of 2 GiB: no WINDOW_UPDATE is
// due before a gigabyte has been read.
const AGENT = `
const http2 = require('node:http2');
const net = require('node:net');
const BIG = 2 ** 31 - 1;
const server = net.createServer((socket) => {
  const s = http2.performServerHandshake(socket, { settings: { initialWindowSize: BIG } });
  s.setLocalWindowSize(BIG);
  s.on('stream', (st) => { st.respond({ ':status': 200 }); st.on('data', () => {}); });
  s.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));
`;

async function startAgentEnd(t: Test): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, ['-e', AGENT], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const [line] = (await once(child.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
  return { child, port: Number(line.toString().trim()) };
}

/** An AgentSession on an in-process main session (h2c on loopback), and its
 * reverse session to the agent end. */
async function sessionWithReverse(t: Test, agentPort: number) {
  const server = http2.createServer();
  const mains: http2.ServerHttp2Session[] = [];
  server.on('session', (s) => mains.push(s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  await once(client, 'connect');
  while (mains.length === 0) await new Promise((r) => setTimeout(r, 5));
  const identity = { endpoint: 'exit', user: 'exit', serial: '01', spkiSha256: '', certNotAfter: Date.now() + 3_600_000, cluster: null };
  const session = new AgentSession(mains[0] as http2.ServerHttp2Session, identity, '127.0.0.1', silentLogger());
  const reverse = http2.connect(`http://127.0.0.1:${agentPort}`);
  await once(reverse, 'connect');
  session.attachReverse(reverse);
  t.teardown(() => {
    session.destroy();
    client.destroy();
    server.close();
  });
  return { session, reverse, client };
}

/** Write 64 KiB every 20 ms on one stream of the reverse session, once the
 * agent has answered it. */
async function startSending(t: Test, reverse: http2.ClientHttp2Session): Promise<void> {
  const stream = reverse.request({ ':method': 'POST', ':path': '/tcp/x' });
  stream.on('error', () => {});
  await once(stream, 'response');
  const chunk = Buffer.alloc(64 * 1024, 7);
  const writer = setInterval(() => {
    if (!stream.destroyed && stream.writableLength < 4 * 1024 * 1024) stream.write(chunk);
  }, 20);
  t.teardown(() => clearInterval(writer));
}

/** Run the keepalive sweep's check of the reverse session every 100 ms for
 * `ms` or until it is dropped; how long it was kept. */
async function sweepFor(session: AgentSession, ms: number): Promise<number> {
  const started = Date.now();
  let keptFor = 0;
  while (Date.now() - started < ms) {
    await new Promise((r) => setTimeout(r, 100));
    session.sweepReverse(Date.now(), NEVER_PROBE_MS, TIMEOUT_MS, () => {});
    if (!session.hasReverse) break;
    keptFor = Date.now() - started;
  }
  return keptFor;
}

t.test('an agent that takes our data keeps its reverse session, though it sends nothing', async (t) => {
  const agent = await startAgentEnd(t);
  const { session, reverse } = await sessionWithReverse(t, agent.port);
  await startSending(t, reverse);
  const read = reverse.socket.bytesRead;
  const written = reverse.socket.bytesWritten;
  const keptFor = await sweepFor(session, 3 * TIMEOUT_MS);
  t.equal(reverse.socket.bytesRead, read, 'the agent sent nothing meanwhile');
  const took = reverse.socket.bytesWritten - written;
  t.ok(took > 2 * 1024 * 1024, `it took ${(took / 1024 / 1024).toFixed(1)} MiB`);
  t.ok(session.hasReverse, `still there after three keepalive timeouts (${keptFor} ms)`);
});

t.test('a frozen agent loses its reverse session once it stops taking our data', async (t) => {
  const agent = await startAgentEnd(t);
  const { session, reverse } = await sessionWithReverse(t, agent.port);
  await startSending(t, reverse);
  t.ok((await sweepFor(session, 2 * TIMEOUT_MS)) >= 2 * TIMEOUT_MS - 100, 'kept while it reads');
  agent.child.kill('SIGSTOP');
  t.teardown(() => {
    agent.child.kill('SIGCONT');
  });
  // The kernel takes some megabytes for it first (socket buffers); then the
  // hub's writes stop completing and the timeout runs.
  const written = reverse.socket.bytesWritten;
  await sweepFor(session, 20_000);
  t.notOk(session.hasReverse, 'the reverse session was dropped');
  t.ok(reverse.destroyed, 'and destroyed');
  t.comment(`the kernel took ${((reverse.socket.bytesWritten - written) / 1024 / 1024).toFixed(1)} MiB for the frozen agent first`);
});

t.test('on the main session too: an agent taking 16 KiB or more between visits counts as heard, our PINGs do not', async (t) => {
  const agent = await startAgentEnd(t);
  const { session, client } = await sessionWithReverse(t, agent.port);
  t.notOk(session.tookFromUsSinceLastVisit(), 'nothing sent yet');
  // A few PINGs from us, answered: small writes prove nothing.
  for (let i = 0; i < 5; i++) await new Promise((r) => session.main.ping(r));
  t.notOk(session.tookFromUsSinceLastVisit(), 'five PINGs do not count');
  const got = new Promise<number>((resolve) => {
    session.main.once('stream', (st) => {
      st.respond({ ':status': 200 });
      st.end(Buffer.alloc(256 * 1024, 1));
    });
    const req = client.request({ ':path': '/' });
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
    });
    req.on('end', () => resolve(n));
    req.end();
  });
  t.equal(await got, 256 * 1024, 'the agent read 256 KiB from us');
  t.ok(session.tookFromUsSinceLastVisit(), 'that counts');
  t.notOk(session.tookFromUsSinceLastVisit(), 'and once only');
});
