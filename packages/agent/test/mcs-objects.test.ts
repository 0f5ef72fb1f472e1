/** The pure parts of the Kubernetes controllers: what is exported, conditions, derived names. */
import t from 'tap';
import type { KubeObject } from '../src/k8s/kube-api.js';
import { covers, derivedServiceName, evaluateExport, exportConditions, mergeConditions, slicesOf } from '../src/k8s/mcs-objects.js';

const se: KubeObject = { metadata: { name: 'web', namespace: 'demo', generation: 1, creationTimestamp: '2026-01-01T00:00:00Z' } };
const svc = (spec: Record<string, unknown>): KubeObject => ({ metadata: { name: 'web', namespace: 'demo' }, spec });
const slice = (name: string, endpoints: unknown[], ports: unknown[], labels: Record<string, string> = {}): KubeObject => ({
  metadata: { name, namespace: 'demo', labels: { 'kubernetes.io/service-name': 'web', ...labels } },
  endpoints,
  ports,
});

t.test('derived Service name: the reference controller’s (checked against Go base32.HexEncoding)', async (t) => {
  t.equal(derivedServiceName('demo', 'echo'), 'derived-qieggqc27v');
  t.equal(derivedServiceName('demo', 'hl'), 'derived-09vdtl0l9d');
});

t.test('evaluateExport', async (t) => {
  t.match(evaluateExport(se, undefined, []).valid, { status: 'False', reason: 'NoService' });
  t.match(evaluateExport(se, svc({ type: 'ExternalName', externalName: 'x.example' }), []).valid, { status: 'False', reason: 'InvalidServiceType' });

  const ok = evaluateExport(
    se,
    svc({
      type: 'ClusterIP',
      clusterIP: '10.96.0.10',
      ports: [
        { name: 'http', port: 80, protocol: 'TCP' },
        { name: 'dns', port: 53, protocol: 'UDP' },
      ],
      sessionAffinity: 'ClientIP',
      sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } },
      ipFamilies: ['IPv4'],
      internalTrafficPolicy: 'Local',
    }),
    slicesOf(
      [
        slice(
          'web-1',
          [{ addresses: ['10.0.0.1'], conditions: { ready: true } }, { addresses: ['10.0.0.2'], conditions: { ready: false } }, { addresses: ['10.0.0.3'] }],
          [
            { name: 'http', port: 8080, protocol: 'TCP' },
            { name: 'dns', port: 5353, protocol: 'UDP' },
          ],
        ),
        slice('ours', [{ addresses: ['10.9.9.9'] }], [{ name: 'http', port: 1 }], { 'endpointslice.kubernetes.io/managed-by': 'ztm.flomesh.io' }),
      ],
      'demo',
      'web',
    ),
  );
  t.match(ok.valid, { status: 'True', reason: 'Valid' });
  t.match(ok.export, {
    type: 'ClusterSetIP',
    readyEndpoints: 2,
    sessionAffinity: 'ClientIP',
    sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } },
    internalTrafficPolicy: 'Local',
    createdAt: '2026-01-01T00:00:00Z',
  });
  t.same(ok.ends, [
    {
      protocol: 'tcp',
      tunnel: 'mcs.demo.web.http',
      targets: [
        { host: '10.0.0.1', port: 8080 },
        { host: '10.0.0.3', port: 8080 },
      ],
    },
    {
      protocol: 'udp',
      tunnel: 'mcs.demo.web.dns',
      targets: [
        { host: '10.0.0.1', port: 5353 },
        { host: '10.0.0.3', port: 5353 },
      ],
    },
  ]);

  const noSlices = evaluateExport(se, svc({ clusterIP: '10.96.0.10', ports: [{ port: 7 }] }), []);
  t.same(noSlices.ends, [{ protocol: 'tcp', tunnel: 'mcs.demo.web.tcp-7', targets: [{ host: '10.96.0.10', port: 7 }] }], 'falls back to the ClusterIP');
  t.equal(evaluateExport(se, svc({ clusterIP: 'None', ports: [{ port: 7 }] }), []).export?.type, 'Headless');
});

t.test('conditions', async (t) => {
  const valid = { type: 'Valid', status: 'True' as const, reason: 'Valid', message: 'ok' };
  t.match(exportConditions(valid, { online: true }, 1), [{ type: 'Valid' }, { type: 'Ready', status: 'Unknown', reason: 'Pending' }]);
  t.match(exportConditions(valid, { online: true, refused: 'no' }, 1), [{}, { type: 'Ready', status: 'False', reason: 'Failed' }]);
  const withConflict = exportConditions(
    valid,
    { online: true, status: { namespace: 'demo', name: 'web', conflicts: ['PortConflict', 'TypeConflict'], message: 'm', clusters: 2 } },
    1,
  );
  t.match(withConflict, [{}, { type: 'Ready', status: 'True', reason: 'Exported' }, { type: 'Conflict', status: 'True', reason: 'PortConflict,TypeConflict' }]);

  const first = mergeConditions(undefined, withConflict, 'T1');
  t.ok(first.changed);
  t.ok(first.conditions.every((c) => c.lastTransitionTime === 'T1'));
  const again = mergeConditions(first.conditions, withConflict, 'T2');
  t.notOk(again.changed, 'nothing to write when nothing changed');
  t.ok(
    again.conditions.every((c) => c.lastTransitionTime === 'T1'),
    'transition times kept',
  );
  const flipped = mergeConditions(first.conditions, exportConditions(valid, { online: true }, 1), 'T3');
  t.ok(flipped.changed, 'a condition dropped or changed is a change');
  t.equal(flipped.conditions.find((c) => c.type === 'Ready')?.lastTransitionTime, 'T3');
});

t.test('covers', async (t) => {
  t.ok(covers({ a: 1, b: [{ c: 2 }] }, { a: 1, b: [{ c: 2, d: 3 }], e: 4 }), 'extra server fields are fine');
  t.notOk(covers({ b: [{ c: 2 }] }, { b: [{ c: 2 }, { c: 3 }] }), 'list length matters');
  t.ok(covers({ a: undefined }, {}), 'undefined is not a requirement');
  t.notOk(covers({ a: 'x' }, { a: 'y' }));
});
