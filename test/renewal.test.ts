/**
 * Certificate renewal: with 6-second certificates an agent renews on its own
 * (new serial, new cert.pem), and stays online, at the hub too, past the
 * expiry of the certificate it started with.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { certificateTimes } from '../packages/agent/src/identity/identity-store.js';
import { joinAgent, runAgent, startHub, waitFor } from './helpers/index.js';
import { agentStatus, endpointOf, hubEndpoints, logLines, scope, sleep } from './helpers/e2e-checks.js';

t.test('renewal', async (t) => {
  const s = scope(t, 'rn');
  const hub = await startHub(s, { serveArgs: ['--cert-lifetime', '6s'] });
  const joinedAt = Date.now();
  const dir = await joinAgent(s, hub, 'alpha');
  const joinedBy = Date.now();
  const certFile = join(dir, 'cert.pem');
  const firstPem = readFileSync(certFile, 'utf8');
  const agent = await runAgent(s, dir, 'alpha');
  const startedAt = Date.now();

  // The first certificate is the one join wrote: on a slow machine the agent
  // can renew it before its status is first read.
  const first = certificateTimes(firstPem);
  const firstExpires = first.notAfter;
  t.ok(firstExpires <= joinedBy + 6_000, `the first certificate lives about 6 s (expires ${new Date(firstExpires).toISOString()})`);
  const planned = (await agentStatus(agent)).certificate;
  const renewAt = Date.parse(planned.renewAt);
  t.ok(
    renewAt >= joinedAt - 1_000 && renewAt < Date.parse(planned.expires),
    `renewal is planned between issue and expiry (renewAt ${planned.renewAt}, issued ≈ ${new Date(joinedAt).toISOString()})`,
  );

  // Within ~5 s the agent holds a new certificate: new serial, new file.
  const renewed = await waitFor(
    async () => {
      const st = await agentStatus(agent);
      return st.certificate.serial !== first.serial ? st : undefined;
    },
    { timeoutMs: 6_000, intervalMs: 250, what: 'a new certificate serial' },
  ).catch(() => undefined);
  t.ok(renewed, `serial changed within ${Date.now() - startedAt} ms`);
  t.not(readFileSync(certFile, 'utf8'), firstPem, 'cert.pem on disk was replaced');
  if (renewed) t.ok(Date.parse(renewed.certificate.expires) > firstExpires, 'the new certificate expires later');

  // Past the first certificate's expiry (and then some), still online on both sides.
  await sleep(Math.max(0, startedAt + 10_000 - Date.now()));
  t.ok(Date.now() > firstExpires, 'the first certificate has expired by now');
  t.ok(agent.daemon.running, 'agent process still running at 10 s');
  const st = await agentStatus(agent);
  t.equal(st.hub.state, 'online', 'ztm-agent status: online at 10 s');
  t.ok(Date.parse(st.certificate.expires) > Date.now(), 'ztm-agent status: the certificate in use is valid');
  const seen = await endpointOf(hub, 'alpha');
  t.equal(seen?.online, true, 'ztm-hub endpoints: alpha online at 10 s');
  t.ok(Date.parse(seen?.certExpires ?? '') > Date.now(), `ztm-hub endpoints: alpha's certificate valid (${seen?.certExpires})`);
  t.equal((await hub.cli(['ping', 'alpha', '--json'])).code, 0, 'the hub reaches alpha at 10 s');

  // Renewal is paced by the lifetime, not a storm: about one per 4 s.
  const renewals = logLines(agent.allOutput()).filter((l) => l.msg === 'certificate renewed').length;
  t.ok(renewals >= 2 && renewals <= 5, `renewed ${renewals} times in 10 s (expected 2–3, one per ≈ 4 s)`);
  t.equal((await hubEndpoints(hub)).filter((e) => e.online).length, 1, 'one endpoint online');
});
