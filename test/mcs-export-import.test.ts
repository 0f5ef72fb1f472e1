/**
 * Multicluster services end to end: two real Kubernetes control planes (east,
 * west), a hub, and one cluster agent per cluster in its own network
 * namespace that reaches only the hub, its API server and its local backends.
 * The agents use a ServiceAccount token bound to docker/k8s/rbac.yaml.
 */
import t from 'tap';
import {
  type Cluster,
  type ClusterAgent,
  type KubeJson,
  K8S_MANIFESTS,
  backendManifest,
  condition,
  createSite,
  echoClientScript,
  echoServerOn,
  k8sSkipReason,
  nodeIn,
  serviceExport,
  startClusterAgent,
  startClusters,
  startMeshHub,
  udpClientScript,
  udpEchoServerOn,
} from './helpers/k8s.js';
import { waitFor } from './helpers/index.js';

const SI = 'serviceimports.multicluster.x-k8s.io';
const SE = 'serviceexports.multicluster.x-k8s.io';
const MCS_SLICES = 'endpointslice.kubernetes.io/managed-by=ztm.flomesh.io';

const sliceFor = async (c: Cluster, name: string, source: string): Promise<KubeJson | undefined> =>
  (await c.list('endpointslices', 'demo', `${MCS_SLICES},multicluster.kubernetes.io/service-name=${name}`)).find(
    (s) => s.metadata.labels['multicluster.kubernetes.io/source-cluster'] === source,
  );

// Two control planes plus agents: more than the suite's default 240 s on a
// loaded 2-core machine (about 1-2 min when it is idle).
t.setTimeout(600_000);

t.test('multicluster services between east and west', { skip: k8sSkipReason() }, async (t) => {
  const t0 = Date.now();
  const clusters = await startClusters(t, ['east', 'west']);
  const east = clusters.east as Cluster;
  const west = clusters.west as Cluster;
  t.comment(`clusters up in ${Date.now() - t0} ms`);
  const eastSite = await createSite(t, 'east');
  const westSite = await createSite(t, 'west');
  if (!eastSite.netns) t.comment(`no network namespaces; agents share the host network (${eastSite.hostAddr})`);
  const hub = await startMeshHub(t, [eastSite, westSite], ['--mcs-lease-ttl', '5s']);
  const [ea, wa] = (await Promise.all([
    startClusterAgent(t, hub, east, eastSite, { clusterId: 'east' }),
    startClusterAgent(t, hub, west, westSite, { clusterId: 'west' }),
  ])) as [ClusterAgent, ClusterAgent];
  for (const c of [east, west]) await c.kubectl(['create', 'namespace', 'demo']);
  // West has a Service of its own named like the one east exports: the import
  // must never touch it.
  await west.apply(`apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo, labels: {owner: west}}
spec: {ports: [{name: local, port: 9999, protocol: TCP}]}
`);
  const westLocalEcho = await west.get('service', 'echo', 'demo');
  const echo = await echoServerOn(t, eastSite.hostAddr);
  await east.apply(`${backendManifest('demo', 'echo', eastSite.hostAddr, echo.port)}---\n${serviceExport('demo', 'echo')}`);
  t.comment(`mesh and agents up in ${Date.now() - t0} ms`);

  await t.test('the agents use the ServiceAccount token bound to the shipped RBAC, not admin', async (t) => {
    for (const a of [ea, wa]) {
      const c = a.name === 'east' ? east : west;
      const can = async (...args: string[]) => (await c.kubectlTry(['--kubeconfig', a.kubeconfig, 'auth', 'can-i', ...args])).stdout.trim();
      t.equal(await can('watch', 'serviceexports.multicluster.x-k8s.io', '-A'), 'yes', `${a.name}: may watch ServiceExports`);
      t.equal(await can('patch', 'serviceimports.multicluster.x-k8s.io/status', '-n', 'demo'), 'yes', `${a.name}: may write ServiceImport status`);
      t.equal(await can('get', 'secrets', '-A'), 'no', `${a.name}: may not read Secrets`);
      t.equal(await can('create', 'pods', '-n', 'demo'), 'no', `${a.name}: may not create Pods`);
      t.equal(await can('delete', 'namespaces', '-A'), 'no', `${a.name}: may not delete Namespaces`);
      const who = (await c.kubectl(['--kubeconfig', a.kubeconfig, 'auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username}'])).trim();
      t.equal(who, 'system:serviceaccount:ztm-system:ztm-agent', `${a.name}: authenticated as the agent's ServiceAccount`);
    }
  });

  await t.test('the shipped manifests (docker/k8s) pass a real API server, pod security "restricted" included', async (t) => {
    const r = await east.kubectlTry(['apply', '--dry-run=server', '-k', K8S_MANIFESTS]);
    t.equal(r.code, 0, `kubectl apply --dry-run=server -k docker/k8s: ${r.stderr.trim()}`);
    t.match(r.stdout, /deployment.apps\/ztm-agent (created|configured|unchanged) \(server dry run\)/);
    t.notMatch(r.stderr, /PodSecurity/, 'no pod security warnings');
  });

  await t.test('export demo/echo in east: ServiceImport, derived Service and MCS EndpointSlice appear in west', async (t) => {
    const started = Date.now();
    const si = await waitFor(
      async () => {
        const o = await west.get(SI, 'echo', 'demo');
        return o?.spec?.ips?.length ? o : null;
      },
      { timeoutMs: 30_000, what: 'ServiceImport demo/echo with ips in west' },
    );
    t.comment(`import visible in west ${Date.now() - started} ms after the export`);
    t.equal(si.spec.type, 'ClusterSetIP');
    t.same(si.spec.ports, [{ name: 'tcp', port: 7, protocol: 'TCP' }], 'ports copied from the exported Service');
    t.same(si.spec.ipFamilies, ['IPv4']);
    t.same(
      si.status.clusters.map((c: { cluster: string }) => c.cluster),
      ['east'],
      'status.clusters names the exporting cluster',
    );
    const derivedName = si.metadata.annotations['multicluster.kubernetes.io/derived-service'];
    t.match(derivedName, /^derived-[0-9a-v]{10}$/, 'derived-service annotation');
    const derived = await west.get('service', derivedName, 'demo');
    t.ok(derived, 'derived Service exists');
    t.notOk(derived?.spec.selector, 'derived Service has no selector');
    t.same(si.spec.ips, derived?.spec.clusterIPs, 'spec.ips = the derived Service ClusterIP');
    t.equal(derived?.metadata.ownerReferences?.[0]?.uid, si.metadata.uid, 'derived Service owned by the ServiceImport');

    const slice = await waitFor(() => sliceFor(west, 'echo', 'east'), { what: 'MCS EndpointSlice for east in west' });
    t.equal(slice.metadata.labels['kubernetes.io/service-name'], derivedName, 'slice belongs to the derived Service');
    t.equal(slice.metadata.labels['endpointslice.kubernetes.io/managed-by'], 'ztm.flomesh.io');
    t.same(slice.endpoints[0].addresses, [westSite.nsAddr], "slice names the west agent's address");
    t.equal(slice.endpoints[0].conditions.ready, true);
    t.equal(slice.ports[0].name, 'tcp');
    t.ok(slice.ports[0].port > 0, 'slice port is the listener port');
    t.equal(slice.metadata.ownerReferences?.[0]?.kind, 'ServiceImport');

    const local = await west.get('service', 'echo', 'demo');
    t.equal(local?.metadata.resourceVersion, westLocalEcho?.metadata.resourceVersion, "west's own Service demo/echo untouched");
    t.same(
      local?.spec.ports.map((p: { port: number }) => p.port),
      [9999],
    );

    // The exporting cluster imports too (KEP-1645), from its own endpoints.
    const own = await waitFor(() => sliceFor(east, 'echo', 'east'), { what: "east's own MCS slice" });
    t.same(own.endpoints[0].addresses, [eastSite.hostAddr], 'east imports its own endpoints directly');
    t.equal(own.ports[0].port, echo.port);
  });

  await t.test('the ServiceExport in east is Valid=True, Ready=True, Conflict=False', async (t) => {
    const se = await waitFor(
      async () => {
        const o = await east.get(SE, 'echo', 'demo');
        return condition(o, 'Ready')?.status === 'True' ? o : null;
      },
      { what: 'Ready=True' },
    );
    t.match(condition(se, 'Valid'), { status: 'True', reason: 'Valid' });
    t.match(condition(se, 'Ready'), { status: 'True', reason: 'Exported' });
    t.match(condition(se, 'Conflict'), { status: 'False', reason: 'NoConflicts' });
  });

  await t.test("data path: a client in west's namespace talks to the echo server in east", async (t) => {
    const slice = (await sliceFor(west, 'echo', 'east')) as KubeJson;
    const addr = slice.endpoints[0].addresses[0];
    const port = slice.ports[0].port;
    const before = echo.connections();
    const r = await nodeIn(westSite, echoClientScript(addr, port, 'hello from west'));
    t.equal(r.stdout, 'OK hello from west', 'echoed through the mesh');
    t.equal(echo.connections(), before + 1, 'the echo server in east saw the connection');
    if (westSite.netns) {
      const direct = await nodeIn(westSite, echoClientScript(eastSite.hostAddr, echo.port, 'direct'));
      t.match(direct.stdout, /^ERR /, 'west has no IP path to the backend in east');
    }
  });

  await t.test('UDP port: datagrams from west reach a UDP server in east', async (t) => {
    const udp = await udpEchoServerOn(t, eastSite.hostAddr);
    await east.apply(`apiVersion: v1
kind: Service
metadata: {name: dns, namespace: demo}
spec: {ports: [{name: dns, port: 53, protocol: UDP, targetPort: ${udp.port}}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-manual
  namespace: demo
  labels: {kubernetes.io/service-name: dns, endpointslice.kubernetes.io/managed-by: ztm-test}
addressType: IPv4
endpoints: [{addresses: [${eastSite.hostAddr}], conditions: {ready: true}}]
ports: [{name: dns, port: ${udp.port}, protocol: UDP}]
---
${serviceExport('demo', 'dns')}`);
    const slice = await waitFor(() => sliceFor(west, 'dns', 'east'), { what: 'MCS slice for the UDP service' });
    t.equal(slice.ports[0].protocol, 'UDP');
    const r = await nodeIn(westSite, udpClientScript(slice.endpoints[0].addresses[0], slice.ports[0].port, 'udp hello'));
    t.equal(r.stdout, 'OK udp hello', 'datagram echoed through the mesh');
  });

  await t.test('ztm-agent status shows exports, imports, conditions and endpoint counts', async (t) => {
    const e = (await ea.status()).kubernetes;
    t.equal(e.cluster, 'east');
    const ex = e.exports.find((x: KubeJson) => x.name === 'echo');
    t.match(ex, { namespace: 'demo', valid: true, type: 'ClusterSetIP', readyEndpoints: 1 });
    t.ok(
      ex.conditions.some((c: KubeJson) => c.type === 'Ready' && c.status === 'True'),
      'conditions shown',
    );
    const w = (await wa.status()).kubernetes;
    const im = w.imports.find((x: KubeJson) => x.name === 'echo');
    t.match(im, { namespace: 'demo', type: 'ClusterSetIP', state: 'ok' });
    t.match(im.clusters, [{ cluster: 'east', online: true, readyEndpoints: 1 }]);
    t.equal(im.clusters[0].endpoints.length, 1, 'per-cluster endpoints listed');
    const human = await wa.cli(['status']);
    t.match(human.stdout, /imports[\s\S]*demo\/echo\s+ClusterSetIP\s+\S+\s+tcp:7\/TCP\s+east:1\s+ok/, 'human view lists the import');
    const humanEast = await ea.cli(['status']);
    t.match(humanEast.stdout, /demo\/echo\s+ClusterSetIP\s+tcp:7\/TCP\s+1\s+Valid=True\(Valid\) Ready=True\(Exported\) Conflict=False\(NoConflicts\)/);
  });

  await t.test('ExternalName: Valid=False InvalidServiceType, no import', async (t) => {
    await east.apply(`apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: example.com}
---
${serviceExport('demo', 'ext')}`);
    const se = await waitFor(
      async () => {
        const o = await east.get(SE, 'ext', 'demo');
        return condition(o, 'Valid') ? o : null;
      },
      { what: 'Valid condition on ext' },
    );
    t.match(condition(se, 'Valid'), { status: 'False', reason: 'InvalidServiceType' });
    t.not(condition(se, 'Ready')?.status, 'True', 'not Ready');
    t.equal(await west.get(SI, 'ext', 'demo'), null, 'no ServiceImport in west');
    t.equal(await east.get(SI, 'ext', 'demo'), null, 'no ServiceImport in east');
  });

  await t.test('ServiceExport without a Service: Valid=False NoService; valid once the Service exists', async (t) => {
    await east.apply(serviceExport('demo', 'later'));
    const se = await waitFor(
      async () => {
        const o = await east.get(SE, 'later', 'demo');
        return condition(o, 'Valid') ? o : null;
      },
      { what: 'Valid condition on later' },
    );
    t.match(condition(se, 'Valid'), { status: 'False', reason: 'NoService' });
    t.equal(await west.get(SI, 'later', 'demo'), null, 'no import');
    await east.apply(backendManifest('demo', 'later', eastSite.hostAddr, echo.port));
    await waitFor(async () => condition(await east.get(SE, 'later', 'demo'), 'Valid')?.status === 'True', { what: 'Valid=True' });
    await waitFor(() => west.get(SI, 'later', 'demo'), { what: 'import of later in west' });
    t.pass('the Service appearing made the export valid and imported');
  });

  await t.test('headless export: ServiceImport type Headless without ips', async (t) => {
    await east.apply(`apiVersion: v1
kind: Service
metadata: {name: hl, namespace: demo}
spec: {clusterIP: None, ports: [{name: http, port: 80, protocol: TCP}]}
---
${serviceExport('demo', 'hl')}`);
    const si = await waitFor(() => west.get(SI, 'hl', 'demo'), { what: 'headless import' });
    t.equal(si.spec.type, 'Headless');
    t.notOk(si.spec.ips?.length, 'no ips');
    const derived = await west.get('service', si.metadata.annotations['multicluster.kubernetes.io/derived-service'], 'demo');
    t.equal(derived?.spec.clusterIP, 'None', 'derived Service is headless');
  });

  await t.test('same port name, different numbers: the oldest export wins, Conflict on both', async (t) => {
    await east.apply(`apiVersion: v1
kind: Service
metadata: {name: clash, namespace: demo}
spec: {ports: [{name: http, port: 80, protocol: TCP}]}
---
${serviceExport('demo', 'clash')}`);
    await waitFor(() => west.get(SI, 'clash', 'demo'), { what: "east's clash imported" });
    await west.apply(`apiVersion: v1
kind: Service
metadata: {name: clash, namespace: demo}
spec: {ports: [{name: http, port: 8080, protocol: TCP}]}
---
${serviceExport('demo', 'clash')}`);
    for (const c of [east, west]) {
      const se = await waitFor(
        async () => {
          const o = await c.get(SE, 'clash', 'demo');
          return condition(o, 'Conflict')?.status === 'True' ? o : null;
        },
        { what: `Conflict=True in ${c.name}` },
      );
      t.match(condition(se, 'Conflict'), { reason: 'PortConflict', message: /oldest service export in cluster east/ }, `${c.name}: Conflict=True`);
      const si = await waitFor(
        async () => {
          const o = await c.get(SI, 'clash', 'demo');
          return o?.status?.clusters?.length === 2 ? o : null;
        },
        { what: `both clusters in ${c.name}'s import` },
      );
      t.same(si.spec.ports, [{ name: 'http', port: 80, protocol: 'TCP' }], `${c.name}: port from the oldest export`);
    }
  });

  await t.test('an extra named port: union of ports, Conflict', async (t) => {
    await east.apply(`apiVersion: v1
kind: Service
metadata: {name: extra, namespace: demo}
spec: {ports: [{name: http, port: 80, protocol: TCP}]}
---
${serviceExport('demo', 'extra')}`);
    await waitFor(() => west.get(SI, 'extra', 'demo'), { what: "east's extra imported" });
    await west.apply(`apiVersion: v1
kind: Service
metadata: {name: extra, namespace: demo}
spec: {ports: [{name: http, port: 80, protocol: TCP}, {name: metrics, port: 9090, protocol: TCP}]}
---
${serviceExport('demo', 'extra')}`);
    const si = await waitFor(
      async () => {
        const o = await west.get(SI, 'extra', 'demo');
        return o?.spec?.ports?.length === 2 ? o : null;
      },
      { what: 'union of ports' },
    );
    t.same(
      si.spec.ports,
      [
        { name: 'http', port: 80, protocol: 'TCP' },
        { name: 'metrics', port: 9090, protocol: 'TCP' },
      ],
      'ports are the union',
    );
    const derived = await west.get('service', si.metadata.annotations['multicluster.kubernetes.io/derived-service'], 'demo');
    t.same(
      derived?.spec.ports.map((p: { port: number }) => p.port),
      [80, 9090],
      'derived Service carries the union',
    );
    for (const c of [east, west]) {
      await waitFor(async () => condition(await c.get(SE, 'extra', 'demo'), 'Conflict')?.status === 'True', { what: `Conflict in ${c.name}` });
      t.match(condition(await c.get(SE, 'extra', 'demo'), 'Conflict'), { reason: 'PortConflict' }, `${c.name}: Conflict=True`);
    }
  });

  await t.test('opt-in annotation: the agent creates the ServiceExport, and removes it with the annotation', async (t) => {
    await east.apply(backendManifest('demo', 'auto', eastSite.hostAddr, echo.port));
    await east.kubectl(['annotate', 'service', 'auto', '-n', 'demo', 'ztm.flomesh.io/export=true']);
    const se = await waitFor(() => east.get(SE, 'auto', 'demo'), { what: 'ServiceExport made by the agent' });
    t.equal(se.metadata.labels?.['app.kubernetes.io/managed-by'], 'ztm.flomesh.io', 'labelled as the agent’s own');
    await waitFor(() => west.get(SI, 'auto', 'demo'), { what: 'auto imported in west' });
    await east.kubectl(['annotate', 'service', 'auto', '-n', 'demo', 'ztm.flomesh.io/export-']);
    await waitFor(async () => (await east.get(SE, 'auto', 'demo')) === null, { what: 'ServiceExport removed' });
    await waitFor(async () => (await west.get(SI, 'auto', 'demo')) === null, { what: 'import removed' });
    t.pass('exported while annotated, withdrawn after');
  });

  await t.test('unexport: the import and its objects go away', async (t) => {
    const si = await west.get(SI, 'echo', 'demo');
    const derivedName = si?.metadata.annotations['multicluster.kubernetes.io/derived-service'];
    const started = Date.now();
    await east.kubectl(['delete', SE, 'echo', '-n', 'demo']);
    await waitFor(async () => (await west.get(SI, 'echo', 'demo')) === null, { timeoutMs: 20_000, what: 'ServiceImport gone in west' });
    t.comment(`import withdrawn from west ${Date.now() - started} ms after the unexport`);
    await waitFor(async () => (await west.get('service', derivedName, 'demo')) === null, { what: 'derived Service gone' });
    await waitFor(async () => !(await sliceFor(west, 'echo', 'east')), { what: 'MCS slice gone' });
    await waitFor(async () => (await east.get(SI, 'echo', 'demo')) === null, { what: 'east import gone too' });
    const local = await west.get('service', 'echo', 'demo');
    t.equal(local?.metadata.labels?.owner, 'west', "west's own Service demo/echo is still there");
    t.pass('ServiceImport, derived Service and EndpointSlice removed');
  });
  t.comment(`suite ran ${Date.now() - t0} ms`);
});
