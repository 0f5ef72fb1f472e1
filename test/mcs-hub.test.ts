/**
 * The hub's side of multicluster services, spoken by hand on control streams
 * (no Kubernetes needed): the cluster binding in certificates, the merge of
 * exports into imports, conflicts, and leases.
 */
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type McsExport, type McsImport, clusterFromSubjectAltName, encodeFrame } from '@ztm/proto';
import t from 'tap';
import { type ControlStream, h2Session, openControl } from './helpers/e2e-wire.js';
import { type HubHandle, agentCli, joinAgent, startHub, testDir, waitFor } from './helpers/index.js';

const LEASE_TTL_MS = 1_500;

async function joinCluster(t: Parameters<typeof startHub>[0], hub: HubHandle, name: string, cluster: string): Promise<string> {
  const dir = join(testDir(t), 'agents', name);
  const permit = await hub.permit(name);
  const r = await agentCli(['join', '--permit', permit, '--data', dir, '--cluster-id', cluster]);
  if (r.code !== 0) throw new Error(`join ${name}: ${r.stderr}`);
  return dir;
}

/** A control stream in an enrolled agent's name, past hello/welcome. */
async function control(t: Parameters<typeof startHub>[0], hub: HubHandle, dir: string): Promise<ControlStream> {
  const creds = {
    ca: readFileSync(join(dir, 'ca.pem'), 'utf8'),
    cert: readFileSync(join(dir, 'cert.pem'), 'utf8'),
    key: readFileSync(join(dir, 'key.pem'), 'utf8'),
  };
  const s = await h2Session(hub.address, creds);
  t.teardown(() => s.destroy());
  const c = openControl(s);
  c.stream.write(encodeFrame({ type: 'hello', version: 1, agentVersion: 'test', labels: {} }));
  await waitFor(() => c.frames.find((f) => f.type === 'welcome'), { what: 'welcome' });
  return c;
}

const exp = (name: string, ports: McsExport['ports'], createdAt: string, extra: Partial<McsExport> = {}): McsExport => ({
  namespace: 'demo',
  name,
  type: 'ClusterSetIP',
  ports,
  sessionAffinity: 'None',
  ipFamilies: ['IPv4'],
  labels: {},
  annotations: {},
  createdAt,
  readyEndpoints: 2,
  ...extra,
});

const lastImport = (c: ControlStream, name: string): McsImport | undefined => {
  let found: McsImport | undefined;
  for (const f of c.frames) {
    if (f.type !== 'mcs-imports') continue;
    const m = f as unknown as { imports: McsImport[]; withdrawn: { name: string }[] };
    for (const i of m.imports) if (i.name === name) found = i;
    if (m.withdrawn.some((w) => w.name === name)) found = undefined;
  }
  return found;
};

const lastStatus = (c: ControlStream, name: string) => {
  let found: { conflicts: string[]; message: string; clusters: number } | undefined;
  for (const f of c.frames) {
    if (f.type !== 'mcs-status') continue;
    for (const s of (f as { exports: { name: string; conflicts: string[]; message: string; clusters: number }[] }).exports) if (s.name === name) found = s;
  }
  return found;
};

t.test('hub: multicluster exports, imports, conflicts and leases', async (t) => {
  const hub = await startHub(t, { serveArgs: ['--mcs-lease-ttl', `${LEASE_TTL_MS}ms`] });
  const aDir = await joinCluster(t, hub, 'agent-a', 'cluster-a');
  const bDir = await joinCluster(t, hub, 'agent-b', 'cluster-b');

  await t.test('the cluster id is bound into the certificate at enrolment', async (t) => {
    const cert = new X509Certificate(readFileSync(join(aDir, 'cert.pem')));
    t.equal(clusterFromSubjectAltName(cert.subjectAltName), 'cluster-a');
    t.match(cert.subjectAltName, /URI:ztm:\/\/test\/cluster\/cluster-a/);
  });

  await t.test('exports are refused from an endpoint without a cluster, or claiming another one', async (t) => {
    const plainDir = await joinAgent(t, hub, 'plain');
    const plain = await control(t, hub, plainDir);
    plain.stream.write(
      encodeFrame({
        type: 'mcs-exports',
        cluster: 'cluster-a',
        full: true,
        exports: [exp('web', [{ name: 'http', protocol: 'TCP', port: 80 }], '2026-01-01T00:00:00Z')],
      }),
    );
    const r1 = await waitFor(() => plain.frames.find((f) => f.type === 'mcs-status'), { what: 'refusal' });
    t.match(r1, { refused: /names no cluster/ }, 'no cluster in the certificate');
    const a = await control(t, hub, aDir);
    a.stream.write(
      encodeFrame({
        type: 'mcs-exports',
        cluster: 'cluster-b',
        full: true,
        exports: [exp('web', [{ name: 'http', protocol: 'TCP', port: 80 }], '2026-01-01T00:00:00Z')],
      }),
    );
    const r2 = await waitFor(() => a.frames.find((f) => f.type === 'mcs-status'), { what: 'refusal' });
    t.match(r2, { refused: /bound to cluster cluster-a, not cluster-b/ }, 'another cluster than the certificate names');
    t.notOk(
      a.frames.some((f) => f.type === 'mcs-imports'),
      'a refused session gets no imports',
    );
    a.stream.close();
  });

  await t.test('multicluster-service tunnels (mcs.*) admit cluster agents only', async (t) => {
    const relayStatus = async (dir: string) => {
      const c = await control(t, hub, dir);
      const s = c.stream.session as import('node:http2').ClientHttp2Session;
      const req = s.request({ ':method': 'POST', ':path': '/v1/tunnel/tcp/mcs.demo.web.http', 'ztm-version': '1' }, { endStream: false });
      req.on('error', () => {});
      const [h] = (await once(req, 'response')) as [Record<string, unknown>];
      req.close();
      c.stream.close();
      return Number(h[':status']);
    };
    t.equal(await relayStatus(await joinAgent(t, hub, 'plain2')), 403, 'an endpoint without a cluster is refused');
    t.equal(await relayStatus(aDir), 502, 'a cluster agent gets through to exit selection (no exit here)');
  });

  await t.test('two clusters, one name: union of ports, oldest wins, Conflict on both; the lease withdraws a silent cluster', async (t) => {
    const a = await control(t, hub, aDir);
    const b = await control(t, hub, bDir);
    a.stream.write(
      encodeFrame({
        type: 'mcs-exports',
        cluster: 'cluster-a',
        full: true,
        exports: [exp('web', [{ name: 'http', protocol: 'TCP', port: 80 }], '2026-01-01T00:00:00Z')],
      }),
    );
    const solo = await waitFor(() => lastImport(a, 'web'), { what: 'import of web' });
    t.same(solo.ports, [{ name: 'http', protocol: 'TCP', port: 80 }]);
    t.match(solo.clusters, [{ cluster: 'cluster-a', endpoint: 'agent-a', online: true, readyEndpoints: 2, ports: [{ tunnel: 'mcs.demo.web.http' }] }]);
    t.match(await waitFor(() => lastStatus(a, 'web')), { conflicts: [], clusters: 1 });

    b.stream.write(
      encodeFrame({
        type: 'mcs-exports',
        cluster: 'cluster-b',
        full: true,
        exports: [
          exp(
            'web',
            [
              { name: 'http', protocol: 'TCP', port: 8080 },
              { name: 'metrics', protocol: 'TCP', port: 9090 },
            ],
            '2026-02-01T00:00:00Z',
            { sessionAffinity: 'ClientIP' },
          ),
        ],
      }),
    );
    const merged = await waitFor(
      () => {
        const i = lastImport(a, 'web');
        return i?.clusters.length === 2 ? i : undefined;
      },
      { what: 'merged import' },
    );
    t.same(
      merged.ports,
      [
        { name: 'http', protocol: 'TCP', port: 80 },
        { name: 'metrics', protocol: 'TCP', port: 9090 },
      ],
      'union of ports; http keeps the oldest number',
    );
    t.equal(merged.sessionAffinity, 'None', 'affinity from the oldest export');
    t.same(
      merged.clusters.find((c) => c.cluster === 'cluster-b')?.ports,
      [
        { name: 'http', protocol: 'TCP', port: 80, tunnel: 'mcs.demo.web.http' },
        { name: 'metrics', protocol: 'TCP', port: 9090, tunnel: 'mcs.demo.web.metrics' },
      ],
      "cluster-b's ports map onto the import's",
    );
    t.same(lastImport(b, 'web'), merged, 'both clusters get the same import');
    for (const c of [a, b]) {
      const st = await waitFor(() => (lastStatus(c, 'web')?.conflicts.length ? lastStatus(c, 'web') : undefined), { what: 'conflict status' });
      t.same(st.conflicts, ['PortConflict', 'SessionAffinityConflict']);
      t.match(st.message, /Conflicting ports, sessionAffinity\. .*oldest service export in cluster cluster-a .*1\/2 clusters disagree/);
    }

    // b goes silent: offline at once, withdrawn when its lease runs out.
    b.stream.close();
    const gone = Date.now();
    await waitFor(() => lastImport(a, 'web')?.clusters.find((c) => c.cluster === 'cluster-b' && !c.online), { what: 'cluster-b offline' });
    await waitFor(() => lastImport(a, 'web')?.clusters.length === 1, { timeoutMs: LEASE_TTL_MS + 5_000, what: 'cluster-b withdrawn' });
    const took = Date.now() - gone;
    t.ok(took >= LEASE_TTL_MS - 200 && took < LEASE_TTL_MS + 4_000, `withdrawn after ${took} ms (lease ${LEASE_TTL_MS} ms)`);
    t.match(await waitFor(() => (lastStatus(a, 'web')?.clusters === 1 ? lastStatus(a, 'web') : undefined)), { conflicts: [] }, 'no conflict left');

    // The last export gone: the import is withdrawn.
    a.stream.write(encodeFrame({ type: 'mcs-exports', cluster: 'cluster-a', full: false, exports: [], withdrawn: [{ namespace: 'demo', name: 'web' }] }));
    await waitFor(() => a.frames.some((f) => f.type === 'mcs-imports' && (f.withdrawn as { name: string }[]).some((w) => w.name === 'web')), {
      what: 'withdrawal',
    });
    t.notOk(lastImport(a, 'web'), 'import withdrawn with its last export');
  });

  await t.test('a full set in several frames replaces the previous one only when complete', async (t) => {
    const a = await control(t, hub, aDir);
    const p = [{ name: 'http', protocol: 'TCP' as const, port: 80 }];
    a.stream.write(encodeFrame({ type: 'mcs-exports', cluster: 'cluster-a', full: true, exports: [exp('one', p, '2026-01-01T00:00:00Z')] }));
    await waitFor(() => lastImport(a, 'one'), { what: 'one' });
    a.stream.write(encodeFrame({ type: 'mcs-exports', cluster: 'cluster-a', full: true, more: true, exports: [exp('two', p, '2026-01-01T00:00:00Z')] }));
    await new Promise((r) => setTimeout(r, 300));
    t.ok(lastImport(a, 'one'), 'the old set stands while the new one is incomplete');
    t.notOk(lastImport(a, 'two'), 'nothing of the new set yet');
    a.stream.write(encodeFrame({ type: 'mcs-exports', cluster: 'cluster-a', full: false, more: false, exports: [exp('three', p, '2026-01-01T00:00:00Z')] }));
    await waitFor(() => lastImport(a, 'three'), { what: 'three' });
    t.ok(lastImport(a, 'two'), 'two imported');
    t.notOk(lastImport(a, 'one'), 'one withdrawn: not in the new full set');
  });
});
