/** The merge of exports into imports (KEP-1645 conflict resolution). */
import type { McsExport } from '@ztm/proto';
import t from 'tap';
import { type ClusterExport, mergeExports } from '../src/mcs/mcs-merge.js';

const ex = (cluster: string, createdAt: string, over: Partial<McsExport> = {}): ClusterExport => ({
  cluster,
  endpoint: `agent-${cluster}`,
  online: true,
  export: {
    namespace: 'demo',
    name: 'web',
    type: 'ClusterSetIP',
    ports: [{ name: 'http', protocol: 'TCP', port: 80 }],
    sessionAffinity: 'None',
    ipFamilies: ['IPv4'],
    labels: {},
    annotations: {},
    createdAt,
    readyEndpoints: 1,
    ...over,
  },
});

t.test('one export: no conflict', async (t) => {
  const m = mergeExports('demo', 'web', [ex('a', '2026-01-01T00:00:00Z')]);
  t.same(m?.statuses.get('a')?.conflicts, []);
  t.equal(mergeExports('demo', 'web', []), null);
});

t.test('identical exports: no conflict, every cluster listed', async (t) => {
  const m = mergeExports('demo', 'web', [ex('b', '2026-01-02T00:00:00Z'), ex('a', '2026-01-01T00:00:00Z')]);
  t.same(
    m?.import.clusters.map((c) => c.cluster),
    ['a', 'b'],
  );
  t.same(m?.statuses.get('b')?.conflicts, []);
  t.match(m?.statuses.get('b')?.message, /All 2 clusters agree/);
});

t.test('type, affinity, policies from the oldest; Conflict on all', async (t) => {
  const m = mergeExports('demo', 'web', [
    ex('young', '2026-03-01T00:00:00Z', { type: 'Headless', sessionAffinity: 'ClientIP', internalTrafficPolicy: 'Local', trafficDistribution: 'PreferClose' }),
    ex('old', '2026-01-01T00:00:00Z'),
  ]);
  t.equal(m?.import.type, 'ClusterSetIP');
  t.equal(m?.import.sessionAffinity, 'None');
  t.equal(m?.import.internalTrafficPolicy, undefined);
  for (const c of ['old', 'young']) {
    t.same(m?.statuses.get(c)?.conflicts, ['TypeConflict', 'SessionAffinityConflict', 'InternalTrafficPolicyConflict', 'TrafficDistributionConflict'], c);
  }
  t.match(m?.statuses.get('old')?.message, /oldest service export in cluster old .*1\/2 clusters disagree/);
});

t.test('ports: by name, then protocol+port; the oldest wins duplicates', async (t) => {
  const m = mergeExports('demo', 'web', [
    ex('b', '2026-02-01T00:00:00Z', {
      ports: [
        { name: 'http', protocol: 'TCP', port: 8080 }, // same name, other number: loses
        { name: 'web', protocol: 'TCP', port: 80 }, // other name, same number: loses
        { name: 'metrics', protocol: 'TCP', port: 9090 }, // new: joins the union
      ],
    }),
    ex('a', '2026-01-01T00:00:00Z'),
  ]);
  t.same(m?.import.ports, [
    { name: 'http', protocol: 'TCP', port: 80 },
    { name: 'metrics', protocol: 'TCP', port: 9090 },
  ]);
  t.same(
    m?.import.clusters.find((c) => c.cluster === 'b')?.ports,
    [
      { name: 'http', protocol: 'TCP', port: 80, tunnel: 'mcs.demo.web.http' },
      { name: 'metrics', protocol: 'TCP', port: 9090, tunnel: 'mcs.demo.web.metrics' },
    ],
    "b serves the import's http on its own http port's tunnel",
  );
  t.same(m?.statuses.get('a')?.conflicts, ['PortConflict']);
});

t.test('an unnamed port among several: the oldest export’s ports only', async (t) => {
  const m = mergeExports('demo', 'web', [
    ex('a', '2026-01-01T00:00:00Z', { ports: [{ name: '', protocol: 'TCP', port: 80 }] }),
    ex('b', '2026-02-01T00:00:00Z', { ports: [{ name: 'metrics', protocol: 'TCP', port: 9090 }] }),
  ]);
  t.same(m?.import.ports, [{ name: '', protocol: 'TCP', port: 80 }]);
  t.same(m?.statuses.get('b')?.conflicts, ['PortConflict']);
});

t.test('ties in age go to the cluster name', async (t) => {
  const m = mergeExports('demo', 'web', [ex('zz', '2026-01-01T00:00:00Z', { type: 'Headless' }), ex('aa', '2026-01-01T00:00:00Z')]);
  t.equal(m?.import.type, 'ClusterSetIP');
});
