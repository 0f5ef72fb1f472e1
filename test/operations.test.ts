/**
 * Operating it: config check, metrics (parsed by the reference Prometheus
 * parser), health endpoints, status views, graceful SIGTERM.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { agentCli, freePort, hubCli, testDir, waitFor } from './helpers/index.js';
import { openTunnel, startMesh } from './helpers/tunnels.js';
import { connect, echoServer, hashAll, pseudoRandom, readAll, sha256Of, tcpServer, writeAll } from './helpers/servers.js';

const hasPromParser = (() => {
  try {
    execFileSync('python3', ['-c', 'import prometheus_client']);
    return true;
  } catch {
    return false;
  }
})();

/** Parse Prometheus text with prometheus_client; returns {name{labels}: value}. */
function parseProm(text: string): Record<string, number> {
  const py = `
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = s.name + json.dumps(s.labels, sort_keys=True)
        out[key] = None if s.value != s.value else s.value
print(json.dumps(out))`;
  return JSON.parse(execFileSync('python3', ['-c', py], { input: text, encoding: 'utf8' }));
}

const sample = (m: Record<string, number>, name: string, labels: Record<string, string> = {}) =>
  m[`${name}${JSON.stringify(Object.fromEntries(Object.entries(labels).sort()))}`.replace(/":"/g, '": "').replace(/","/g, '", "')];

t.test('config check reports every problem with its path; daemons refuse a bad config', async (t) => {
  const dir = testDir(t);
  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'listen: nowhere\nkeepaliveTimeout: soon\nlogLevel: loud\nbogus: 1\nmaxUnauthenticated: -3\n');
  const r = await hubCli(['config', 'check', '--config', bad]);
  t.not(r.code, 0);
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 5, `five problems, one line each:\n${r.stderr}`);
  for (const key of ['listen', 'keepaliveTimeout', 'logLevel', '(root)', 'maxUnauthenticated'])
    t.ok(
      lines.some((l) => l.startsWith(`${key}: `)),
      `${key} named`,
    );
  t.match(r.stderr, /bogus/, 'the unknown key is named');
  t.match(r.stderr, /got "soon"/, 'the bad value is shown');

  const good = join(dir, 'good.yaml');
  writeFileSync(good, 'listen: 127.0.0.1:9999\nkeepaliveTimeout: 20s\ncertLifetime: 7d\n');
  const ok = await hubCli(['config', 'check', '--config', good]);
  t.equal(ok.code, 0, ok.stderr);

  const agentBad = join(dir, 'agent-bad.yaml');
  writeFileSync(agentBad, 'tunnels:\n  inbound:\n    - tunnel: tcp/x\n      listen: 8080\nreconnectMax: never\n');
  const ar = await agentCli(['config', 'check', '--config', agentBad]);
  t.not(ar.code, 0);
  t.match(ar.stderr, /^tunnels\.inbound\.0\.listen: /m);
  t.match(ar.stderr, /^reconnectMax: /m);

  await hubCli(['init', '--data', join(dir, 'hub'), '--names', '127.0.0.1:1']);
  const serve = await hubCli(['serve', '--data', join(dir, 'hub'), '--config', bad], { timeoutMs: 10_000 });
  t.not(serve.code, 0, 'serve refuses to start');
  t.match(serve.stderr, /^listen: /m, 'and says why');
});

t.test('metrics, health and status while traffic flows', async (t) => {
  const hubMetrics = await freePort();
  const agentMetrics = await freePort();
  const m = await startMesh(t, ['entry', 'exit'], { serveArgs: ['--metrics', `127.0.0.1:${hubMetrics}`] });
  await m.agents.entry!.restart(['--metrics', `127.0.0.1:${agentMetrics}`]);
  const echo = await echoServer(t);
  const port = await freePort();
  await openTunnel(m, 'entry', 'exit', 'tcp/echo', echo.port, port);

  for (const p of [hubMetrics, agentMetrics]) {
    const h = await fetch(`http://127.0.0.1:${p}/healthz`);
    t.equal(h.status, 200, `healthz on ${p}`);
    const r = await fetch(`http://127.0.0.1:${p}/readyz`);
    t.equal(r.status, 200, `readyz on ${p}: ${await r.text()}`);
  }

  const scrape = async (p: number) => (await fetch(`http://127.0.0.1:${p}/metrics`)).text();
  const before = await scrape(hubMetrics);
  for (let i = 0; i < 5; i++) {
    const c = await connect(port);
    const r = readAll(c);
    c.end(Buffer.alloc(10_000, i));
    await r;
  }
  await waitFor(async () => /ztm_hub_streams_total\{tunnel="tcp\/echo",reason="closed"\} 5/.test(await scrape(hubMetrics)), { what: 'hub counted 5 streams' });
  const after = await scrape(hubMetrics);
  const agentText = await scrape(agentMetrics);
  t.test('parsed by the reference parser', { skip: hasPromParser ? false : 'python prometheus_client not installed' }, async (t) => {
    const a = parseProm(before);
    const b = parseProm(after);
    t.equal(sample(b, 'ztm_hub_endpoints_online'), 2, 'two endpoints online');
    t.equal(sample(b, 'ztm_hub_streams_total', { tunnel: 'tcp/echo', reason: 'closed' }), 5, 'five streams finished');
    t.equal(sample(b, 'ztm_hub_relay_bytes_total', { tunnel: 'tcp/echo', direction: 'in' }), 50_000, 'bytes in counted');
    t.equal(sample(b, 'ztm_hub_relay_bytes_total', { tunnel: 'tcp/echo', direction: 'out' }), 50_000, 'bytes out counted');
    t.notOk(sample(a, 'ztm_hub_streams_total', { tunnel: 'tcp/echo', reason: 'closed' }), 'none before');
    t.ok((sample(b, 'ztm_hub_control_messages_total', { type: 'hello' }) ?? 0) >= 2, 'hellos counted');
    const ag = parseProm(agentText);
    t.equal(sample(ag, 'ztm_agent_hub_online'), 1);
    t.equal(sample(ag, 'ztm_agent_tunnel_streams_total', { tunnel: 'tcp/echo', direction: 'inbound', reason: 'closed' }), 5);
  });

  const hs = await m.hub.cli(['status', '--json']);
  const st = JSON.parse(hs.stdout);
  t.equal(st.online, 2);
  t.equal(st.tunnels['tcp/echo'].total, 5);
  const human = await m.hub.cli(['status']);
  t.match(human.stdout, /endpoints\s+2 enrolled, 2 online/);
  t.match(human.stdout, /tcp\/echo/);
  const as = await m.agents.entry!.cli(['status']);
  t.match(as.stdout, /hub\s+online/);
  t.match(as.stdout, /tcp\/echo/);
});

t.test('SIGTERM during a transfer: the stream finishes, the process exits 0', async (t) => {
  const m = await startMesh(t, ['entry', 'exit']);
  const total = 128 * 1024 * 1024;
  let got: Promise<{ bytes: number; sha256: string }> | undefined;
  // A reader that reads half the time, so the transfer lasts a few seconds.
  const srv = await tcpServer(t, (s) => {
    got = hashAll(s);
    const duty = setInterval(() => {
      s.pause();
      setTimeout(() => s.resume(), 25);
    }, 50);
    s.on('end', () => {
      clearInterval(duty);
      s.end();
    });
  });
  const port = await freePort();
  await openTunnel(m, 'entry', 'exit', 'tcp/drain', srv.port, port);
  for (const who of ['hub', 'entry'] as const) {
    const c = await connect(port);
    const sending = writeAll(c, pseudoRandom(who, total, 256 * 1024));
    await new Promise((r) => setTimeout(r, 300));
    const d = who === 'hub' ? m.hub.daemon : m.agents.entry!.daemon;
    const started = Date.now();
    const code = await d.stop('SIGTERM', 15_000);
    await sending;
    c.resume();
    await waitFor(() => got);
    const r = await (got as unknown as Promise<{ bytes: number; sha256: string }>);
    t.equal(code, 0, `${who} exits 0 after SIGTERM`);
    t.ok(Date.now() - started < 12_000, `${who} stopped within the grace period (${Date.now() - started} ms)`);
    t.equal(r.bytes, total, `the transfer through the stopping ${who} completed`);
    t.equal(r.sha256, sha256Of(who, total), 'intact');
    got = undefined;
    if (who === 'hub') await m.hub.restart();
    else await m.agents.entry!.restart();
    await waitFor(async () => JSON.parse((await m.hub.cli(['endpoints', '--json'])).stdout).every((e: { online: boolean }) => e.online), {
      what: 'both online again',
    });
  }
});
