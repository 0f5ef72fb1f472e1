/**
 * Network faults: two agents, each in its own network namespace behind an
 * emulated WAN link that adds 20 ms ± 5 ms and drops 1 % of packets in each
 * direction (test/helpers/netns.ts), the hub on the host. Tunnelled bytes and
 * mesh files arrive intact; a link cut longer than the keepalive timeout takes
 * the agent offline and it comes back by itself once the link returns; a short
 * cut under a transfer leaves it whole or fails it visibly, never truncated.
 *
 * The client and the target server are real TCP programs inside the agents'
 * namespaces (their loopback), so only the agent ↔ hub legs cross the link.
 * Sizes suit this machine's default congestion control (BBR, which shrugs off
 * random loss); under a loss-based one such as CUBIC, 1 % loss at a 40 ms
 * round trip holds a connection near 0.5 MB/s and the timeouts would need
 * raising.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { AGENT_BIN, type RunResult, agentCli, freePort, testDir, waitFor } from './helpers/index.js';
import { type MeshHub, SiteDaemon, nodeIn, startMeshHub } from './helpers/k8s.js';
import { type Impairment, type Wan, type WanSite, createWan, wanSkipReason } from './helpers/netns.js';
import { type TransferOutcome, startBulkPeers } from './helpers/bulk-peers.js';
import { sha256Of } from './helpers/servers.js';

const MiB = 1024 * 1024;
const IMPAIRMENT: Impairment = { delayMs: 20, jitterMs: 5, lossPct: 1 };
/** Short keepalives (hub and agents) so that a cut "longer than the timeout" fits the test. */
const KEEPALIVE = ['--keepalive-interval', '1s', '--keepalive-timeout', '4s'];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface SiteAgent {
  name: string;
  dir: string;
  daemon: SiteDaemon;
  cli(args: string[]): Promise<RunResult>;
  /** How many times it logged msg (online, offline). */
  count(msg: string): number;
}

/** Permit and join from the host, then run inside the site, dialing the hub across the WAN. */
async function startSiteAgent(t: Test, hub: MeshHub, site: WanSite): Promise<SiteAgent> {
  mkdirSync(join(testDir(t), 'agents'), { recursive: true });
  const dir = join(testDir(t), 'agents', site.name);
  const joined = await agentCli(['join', '--permit', await hub.permit(site.name), '--data', dir, '--hub', `127.0.0.1:${hub.port}`]);
  if (joined.code !== 0) throw new Error(`join ${site.name} failed: ${joined.stderr}`);
  const daemon = new SiteDaemon(site, AGENT_BIN, ['run', '--data', dir, '--log-level', 'debug', '--hub', `${site.hostAddr}:${hub.port}`, ...KEEPALIVE]);
  t.teardown(async () => {
    await daemon.stop('SIGKILL');
    // ZTM_TEST_LOGS=DIR keeps the agents' logs for a post-mortem.
    const keep = process.env.ZTM_TEST_LOGS;
    if (keep) {
      mkdirSync(keep, { recursive: true });
      writeFileSync(join(keep, `faults-network-${site.name}.log`), `${daemon.output}\n--- stderr ---\n${daemon.stderr}`);
    }
  });
  await daemon.waitLog((l) => l.msg === 'online');
  return {
    name: site.name,
    dir,
    daemon,
    cli: (args) => agentCli([...args, '--data', dir]),
    count: (msg) => daemon.logs().filter((l) => l.msg === msg).length,
  };
}

async function cliOk(a: SiteAgent, args: string[]): Promise<string> {
  const r = await a.cli(args);
  if (r.code !== 0) throw new Error(`ztm-agent ${args.join(' ')} (${a.name}) failed: ${r.stderr}`);
  return r.stdout;
}

async function hubSaysOnline(hub: MeshHub, name: string): Promise<boolean> {
  const r = await hub.cli(['endpoints', '--json']);
  if (r.code !== 0) throw new Error(`ztm-hub endpoints: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { name: string; online: boolean }[]).some((e) => e.name === name && e.online);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('agents behind a slow, lossy link', { skip: wanSkipReason() }, async (t) => {
  const t0 = Date.now();
  const wan: Wan = await createWan(t, ['entry', 'exit'], IMPAIRMENT);
  const entrySite = wan.sites.entry as WanSite;
  const exitSite = wan.sites.exit as WanSite;
  const hub = await startMeshHub(t, [entrySite, exitSite], KEEPALIVE);
  const [entry, exit] = await Promise.all([startSiteAgent(t, hub, entrySite), startSiteAgent(t, hub, exitSite)]);

  const listenPort = await freePort(); // any port will do: the entry's namespace has a loopback of its own
  const peers = await startBulkPeers(t, { serverPrefix: exitSite.prefix, clientPrefix: entrySite.prefix, listenPort });
  const { startTransfer, transfer, whole } = peers;
  await cliOk(exit, ['tunnel', 'open', 'outbound', 'tcp/bulk', '--target', `127.0.0.1:${peers.targetPort}`]);
  await cliOk(entry, ['tunnel', 'open', 'inbound', 'tcp/bulk', '--listen', `127.0.0.1:${listenPort}`]);
  const assertWhole = (t: Test, id: string, up: number, down: number, r: TransferOutcome) =>
    peers.assertWhole(t, id, up, down, r, async () => {
      // Is the exit still reachable over its reverse session?
      const ping = await hub.cli(['ping', 'exit']);
      return `after ${id} failed, ztm-hub ping exit: ${(ping.code === 0 ? ping.stdout : ping.stderr).trim()}`;
    });
  let probes = 0;
  /** Bounded retries of a tiny transfer until the hub routes the tunnel. */
  const tunnelRoutes = (timeoutMs: number) =>
    waitFor(
      async () => {
        const id = `probe${++probes}`;
        return whole(id, 64, 64, await transfer(id, 64, 64, 10_000));
      },
      { timeoutMs, intervalMs: 250, what: 'a tiny transfer through tcp/bulk' },
    );
  await tunnelRoutes(20_000);
  t.comment(`set up in ${Date.now() - t0} ms (${probes} probe(s) until the tunnel routed)`);

  await t.test('the link is slow: a TCP handshake to the hub takes at least two one-way delays', async (t) => {
    const floor = 2 * (IMPAIRMENT.delayMs - IMPAIRMENT.jitterMs);
    const r = await nodeIn(
      entrySite,
      `const s=Date.now();const c=require('net').connect(${hub.port},${JSON.stringify(wan.hostAddr)},()=>{console.log(Date.now()-s);c.destroy()});` +
        `c.on('error',e=>{console.log('ERR '+e.code);process.exit(1)})`,
    );
    const rtt = Number(r.stdout.trim());
    t.ok(rtt >= floor, `handshake took ${r.stdout.trim()} ms (the link adds at least ${floor} ms)`);
  });

  await t.test('24 MiB each way through the tunnel, SHA-256 equal both ways; nobody goes offline', async (t) => {
    const size = 24 * MiB;
    const offline = [entry.count('offline'), exit.count('offline')];
    const started = Date.now();
    await assertWhole(t, 'bulk-up', size, 0, await transfer('bulk-up', size, 0, 30_000));
    await assertWhole(t, 'bulk-down', 0, size, await transfer('bulk-down', 0, size, 30_000));
    t.comment(`${(2 * size) / MiB} MiB moved in ${Date.now() - started} ms`);
    t.same([entry.count('offline'), exit.count('offline')], offline, 'a busy, lossy link kept both sessions up');
  });

  await t.test('a file published by one agent arrives identical at the other', async (t) => {
    const body = randomBytes(4 * MiB);
    const file = join(testDir(t), 'wan.bin');
    writeFileSync(file, body);
    const started = Date.now();
    await cliOk(entry, ['publish', 'file', file, '--as', 'net/wan.bin']);
    const landed = join(exit.dir, 'files', 'net/wan.bin');
    await waitFor(() => existsSync(landed) && sha(readFileSync(landed)) === sha(body), { timeoutMs: 45_000, intervalMs: 250, what: 'the copy at the exit' });
    t.pass(`4 MiB copy at the exit is identical (${Date.now() - started} ms)`);
    const view = (JSON.parse(await cliOk(exit, ['files', '--json'])) as { name: string; local: string; sha256: string }[]).find(
      (f) => f.name === 'net/wan.bin',
    );
    t.equal(view?.local, 'present', 'the exit lists it as present');
    t.equal(view?.sha256, sha(body), 'with the published checksum');
  });

  await t.test('a cut shorter than the keepalive timeout under a transfer: whole, or a visible failure', async (t) => {
    const size = 16 * MiB;
    const up = 0; // one way: two-way bulk at once meets the known lock-up (last subtest)
    const offline = entry.count('offline');
    const hubClosed = () => hub.daemon.logs().filter((l) => l.msg === 'session closed' && l.endpoint === 'entry').length;
    const closedBefore = hubClosed();
    const { client, done } = startTransfer('short-cut', up, size, 30_000);
    const progress = () => Math.max(0, ...client.logs().map((l) => (l.msg === 'progress' ? Number(l.bytes) : 0)));
    await waitFor(() => progress() >= 2 * MiB || !client.running, { timeoutMs: 30_000, intervalMs: 10, what: 'the transfer under way' });
    const at = progress();
    t.ok(client.running && at < size, `cut while in flight (${(at / MiB).toFixed(1)} of ${size / MiB} MiB received)`);
    wan.cut('entry');
    await sleep(1_000);
    wan.restore('entry');
    const r = await done;
    const dropped = entry.count('offline') > offline || hubClosed() > closedBefore;
    t.comment(
      `outcome: client ${r.result.end}${r.result.error ? ` (${r.result.error})` : ''} after ${(r.result.bytes / MiB).toFixed(1)} MiB; ` +
        `server ${r.received?.end ?? 'no report'}; session ${dropped ? 'dropped' : 'kept'}`,
    );
    // Whatever ended cleanly has every byte, and the right ones; a failure is
    // a reset the product delivered, not our client giving up on a hang.
    if (r.result.end === 'end') {
      t.equal(r.result.bytes, size, 'clean end at the client: every byte');
      t.equal(r.result.sha256, sha256Of('short-cut-down', size), 'clean end at the client: bytes intact');
    } else t.ok(r.result.error && r.result.error !== 'timeout', `the client was told of the failure (${r.result.error})`);
    if (r.received?.end === 'end') {
      t.equal(r.received.bytes, up, 'clean end at the server: every byte');
      t.equal(r.received.sha256, sha256Of('short-cut-up', up), 'clean end at the server: bytes intact');
    } else t.ok(r.received?.error, `the server was told of the failure (${r.received?.error ?? 'no report'})`);
    // With the session kept, TCP carried the stream across the gap: it must be whole.
    if (!dropped) await assertWhole(t, 'short-cut', up, size, r);
    await tunnelRoutes(20_000);
    t.pass('the tunnel carries new connections after the cut');
  });

  await t.test('a cut longer than the keepalive timeout: the exit goes offline and comes back by itself', async (t) => {
    const online = exit.count('online');
    const offline = exit.count('offline');
    const cutAt = Date.now();
    wan.cut('exit');
    try {
      await waitFor(async () => !(await hubSaysOnline(hub, 'exit')), { timeoutMs: 20_000, intervalMs: 250, what: 'the hub to mark the exit offline' });
      t.pass(`the hub marked the exit offline ${Date.now() - cutAt} ms after the cut`);
      await waitFor(() => exit.count('offline') > offline, { timeoutMs: 20_000, what: 'the exit to notice' });
      t.pass('the exit noticed it lost the hub');
      t.ok(await hubSaysOnline(hub, 'entry'), 'the entry, on its own link, stayed online');
      const refused = await transfer('while-cut', MiB, MiB, 20_000);
      t.equal(refused.result.end, 'error', `a new connection meanwhile fails visibly (${refused.result.error})`);
      t.equal(refused.result.bytes, 0, 'and carries no bytes');
    } finally {
      wan.restore('exit');
    }
    const restoredAt = Date.now();
    await waitFor(() => exit.count('online') > online, { timeoutMs: 45_000, what: 'the exit back online' });
    await waitFor(() => hubSaysOnline(hub, 'exit'), { timeoutMs: 10_000, what: 'the hub to list the exit online' });
    t.pass(`the exit is back online ${Date.now() - restoredAt} ms after the link returned, without anyone's help`);
    await tunnelRoutes(20_000);
    t.pass('a small connection gets through the tunnel again');
    const size = 8 * MiB;
    await assertWhole(t, 'after-cut-up', size, 0, await transfer('after-cut-up', size, 0, 20_000));
    await assertWhole(t, 'after-cut-down', 0, size, await transfer('after-cut-down', 0, size, 20_000));
  });

  // Bulk data both ways at once over a thin link: node:http2 stops reading
  // its socket while one of its writes is pending, so two node:http2 peers
  // that both write more than the TCP buffers hold wait for each other for
  // ever. The agents keep reading (read-guard.ts); this locked the session up
  // before they did.
  await t.test('two-way bulk at once over the slow link', async (t) => {
    const size = 8 * MiB;
    await assertWhole(t, 'two-way', size, size, await transfer('two-way', size, size, 20_000));
  });

  await t.test('the link really dropped and delayed packets', async (t) => {
    const s = wan.stats();
    t.ok(s.passed > 1_000, `${s.passed} packets delayed by the link`);
    t.ok(s.dropped > 0, `${s.dropped} packets dropped (${((100 * s.dropped) / (s.passed + s.dropped)).toFixed(2)} %)`);
  });
  t.comment(`whole test ${Date.now() - t0} ms`);
});
