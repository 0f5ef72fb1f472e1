/**
 * Enrolment end to end: init, permits, join, run; both sides list the
 * endpoints; secrets on disk are owner-only; the hub reaches an agent over its
 * reverse session.
 */
import { join } from 'node:path';
import t from 'tap';
import type { EndpointInfo } from '@ztm/proto';
import { AGENT_BIN, Daemon, type RunResult, agentCli, readJson, runAgent, joinAgent, startHub, testDir, waitFor } from './helpers/index.js';
import { type AgentStatus, agentStatus, fileMode, hubEndpoints, scope } from './helpers/e2e-checks.js';

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

t.test('enrol two', async (t) => {
  const s = scope(t, 'en');
  const hub = await startHub(s);

  // init made owner-only keys and an owner-only admin socket.
  t.equal(fileMode(join(hub.dir, 'ca.key')), 0o600, 'hub ca.key is 0600');
  t.equal(fileMode(join(hub.dir, 'hub.key')), 0o600, 'hub hub.key is 0600');
  t.equal(fileMode(join(hub.dir, 'admin.sock')), 0o600, 'hub admin.sock is 0600');

  const permitFile = await hub.permit('alpha');
  t.equal(fileMode(permitFile), 0o600, 'permit file is 0600 (it holds a join token)');
  const permit = readJson<{ endpoint: string; mesh: string; hubs: string[] }>(permitFile);
  t.equal(permit.endpoint, 'alpha');
  t.equal(permit.mesh, 'test');
  t.same(permit.hubs, [hub.address]);

  // Join both first (in parallel), then run them.
  const [alphaDir, betaDir] = await Promise.all([joinAgent(s, hub, 'alpha'), joinAgent(s, hub, 'beta')]);
  for (const dir of [alphaDir, betaDir]) {
    t.equal(fileMode(join(dir, 'key.pem')), 0o600, `${dir}/key.pem is 0600`);
    const id = readJson<{ mesh: string; hubs: string[] }>(join(dir, 'identity.json'));
    t.equal(id.mesh, 'test');
    t.same(id.hubs, [hub.address]);
  }
  const [alpha, beta] = await Promise.all([runAgent(s, alphaDir, 'alpha'), runAgent(s, betaDir, 'beta')]);
  for (const a of [alpha, beta]) t.equal(fileMode(join(a.dir, 'admin.sock')), 0o600, `${a.name} admin.sock is 0600`);

  const checkList = (list: EndpointInfo[], who: string) => {
    t.same(
      list.map((e) => e.name),
      ['alpha', 'beta'],
      `${who}: both endpoints listed`,
    );
    for (const e of list) {
      t.equal(e.online, true, `${who}: ${e.name} online`);
      t.equal(e.revoked, false, `${who}: ${e.name} not revoked`);
      t.match(e.lastSeen, ISO, `${who}: ${e.name} lastSeen is an ISO time`);
      t.match(e.certExpires, ISO, `${who}: ${e.name} certExpires is an ISO time`);
      t.ok(Date.parse(e.certExpires as string) > Date.now() + 86_400_000, `${who}: ${e.name} certificate valid for more than a day`);
      t.ok(Math.abs(Date.parse(e.lastSeen as string) - Date.now()) < 60_000, `${who}: ${e.name} lastSeen is recent`);
    }
  };

  // Every view at once: the hub's and each agent's lists, status, pings, the table.
  const [hubList, agentLists, statuses, pings, table] = await Promise.all([
    hubEndpoints(hub),
    Promise.all([alpha, beta].map((a) => a.cli(['endpoints', '--json']))),
    Promise.all([alpha, beta].map((a) => agentStatus(a))),
    // The hub opens a stream to each agent over its reverse session.
    Promise.all(['alpha', 'beta'].map((name) => hub.cli(['ping', name, '--json']))),
    hub.cli(['endpoints']),
  ]);
  checkList(hubList, 'ztm-hub endpoints');
  for (const [i, a] of [alpha, beta].entries()) {
    const r = agentLists[i] as RunResult;
    t.equal(r.code, 0, `ztm-agent endpoints (${a.name}) exits 0`);
    checkList(JSON.parse(r.stdout || '[]') as EndpointInfo[], `ztm-agent endpoints (${a.name})`);
    const st = statuses[i] as AgentStatus;
    t.equal(st.hub.state, 'online', `ztm-agent status (${a.name}): hub online`);
    t.match(st.certificate.serial, /^[0-9A-F]+$/, `${a.name} status shows the certificate serial`);

    const p = pings[i] as RunResult;
    t.equal(p.code, 0, `ztm-hub ping ${a.name} exits 0 (${p.stderr.trim()})`);
    const out = JSON.parse(p.stdout || '{}') as { endpoint?: string; rttMs?: number };
    t.equal(out.endpoint, a.name);
    t.ok(typeof out.rttMs === 'number' && out.rttMs > 0 && out.rttMs < 5_000, `ping ${a.name}: rttMs ${out.rttMs} > 0`);
  }
  t.match(table.stdout, /^NAME\s+STATE/m, 'human table');
  t.match(table.stdout, /^alpha\s+online/m);
  t.match(table.stdout, /^beta\s+online/m);

  // Ping of an unknown endpoint: refused with one line.
  const bad = await hub.cli(['ping', 'nobody']);
  t.not(bad.code, 0, 'ping of an unknown endpoint fails');
  t.match(bad.stderr, /not online/);
});

// A data directory deep enough that <dir>/admin.sock exceeds the 107-byte
// limit of a Unix socket path: the agent must either work or say so plainly.
t.test('deep dir', async (t) => {
  const hub = await startHub(t);
  const dir = join(testDir(t), 'd'.repeat(100), 'agent');
  const j = await agentCli(['join', '--permit', await hub.permit('deep'), '--data', dir]);
  t.equal(j.code, 0, `join into a deep directory works (${j.stderr.trim()})`);
  const d = new Daemon(AGENT_BIN, ['run', '--data', dir]);
  t.teardown(() => d.stop('SIGKILL'));
  const outcome = await waitFor(() => (d.logs().some((l) => l.msg === 'online') ? 'online' : d.running ? undefined : 'exited'), {
    timeoutMs: 10_000,
  }).catch(() => 'timeout');
  if (outcome === 'online') {
    const s = await agentCli(['status', '--json', '--data', dir]);
    t.equal(s.code, 0, 'ztm-agent status reaches the running agent');
  } else {
    t.equal(outcome, 'exited', 'the agent did not hang');
    const lines = d.stderr.trim().split('\n');
    t.equal(lines.length, 1, 'one line on stderr');
    t.match(lines[0], /too long|over the \d+ a Unix socket allows/, `the agent says the path is too long (got ${JSON.stringify(d.stderr.trim())})`);
    t.notMatch(d.stderr, /ENOENT/, 'not a bare ENOENT');
  }
});
