/**
 * Multicluster-services objects, as pure functions: what a ServiceExport
 * exports, the conditions it should carry, and the ServiceImport, derived
 * Service and EndpointSlices an import becomes. No I/O; the controllers write
 * what these return.
 */
import { createHash } from 'node:crypto';
import { isIPv6 } from 'node:net';
import { type HostPort, type McsExport, type McsExportStatus, type McsImport, type McsPort, mcsTunnelName, mcsTunnelProtocol } from '@ztm/proto';
import type { KubeObject } from './kube-api.js';

export const MCS_GROUP = 'multicluster.x-k8s.io';
export const LABEL_SERVICE_NAME = 'multicluster.kubernetes.io/service-name';
export const LABEL_SOURCE_CLUSTER = 'multicluster.kubernetes.io/source-cluster';
export const LABEL_K8S_SERVICE_NAME = 'kubernetes.io/service-name';
export const LABEL_MANAGED_BY = 'endpointslice.kubernetes.io/managed-by';
export const ANNOTATION_DERIVED_SERVICE = 'multicluster.kubernetes.io/derived-service';
/** Our EndpointSlice controller name (must not be the endpointslice controller's). */
export const MANAGED_BY = 'ztm.flomesh.io';
/** Marks the ServiceImports and derived Services this agent manages. */
export const LABEL_APP_MANAGED_BY = 'app.kubernetes.io/managed-by';
/** Opt-in on a Service (value "true"): the agent creates its ServiceExport
 * (and deletes the one it created when the annotation goes). */
export const ANNOTATION_EXPORT = 'ztm.flomesh.io/export';

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime?: string;
  observedGeneration?: number;
}

const BASE32HEX = '0123456789abcdefghijklmnopqrstuv';

/** The reference controller's name for the derived Service:
 * `derived-` + the first 10 lowercase base32hex characters of SHA-256("ns/name"). */
export function derivedServiceName(namespace: string, name: string): string {
  const h = createHash('sha256').update(`${namespace}/${name}`).digest();
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of h) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < 10) {
      out += BASE32HEX[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
    if (out.length >= 10) break;
  }
  return `derived-${out}`;
}

export interface ExportTargets {
  protocol: 'tcp' | 'udp';
  tunnel: string;
  targets: HostPort[];
}

export interface ExportEvaluation {
  valid: Condition;
  export?: McsExport;
  /** Outbound ends to serve: one per tunnelled port. */
  ends: ExportTargets[];
}

const isReady = (ep: { conditions?: { ready?: boolean | null } }) => ep.conditions?.ready !== false;

/** Slices of Service ns/name made by anyone but us. */
export function slicesOf(slices: Iterable<KubeObject>, namespace: string, name: string): KubeObject[] {
  const out: KubeObject[] = [];
  for (const s of slices) {
    if (s.metadata.namespace !== namespace) continue;
    const l = s.metadata.labels ?? {};
    if (l[LABEL_K8S_SERVICE_NAME] !== name || l[LABEL_MANAGED_BY] === MANAGED_BY) continue;
    out.push(s);
  }
  return out;
}

/** Validate a ServiceExport against its Service and build what it exports. */
export function evaluateExport(se: KubeObject, svc: KubeObject | undefined, slices: readonly KubeObject[]): ExportEvaluation {
  const { namespace = '', name } = se.metadata;
  const gen = se.metadata.generation;
  const cond = (status: Condition['status'], reason: string, message: string): Condition => ({
    type: 'Valid',
    status,
    reason,
    message,
    ...(gen ? { observedGeneration: gen } : {}),
  });
  if (!svc || svc.metadata.deletionTimestamp) {
    return { valid: cond('False', 'NoService', `Service ${namespace}/${name} not found`), ends: [] };
  }
  const spec = svc.spec ?? {};
  if (spec.type === 'ExternalName') {
    return { valid: cond('False', 'InvalidServiceType', `Service ${namespace}/${name} is of type ExternalName, which cannot be exported`), ends: [] };
  }
  const headless = spec.clusterIP === 'None';
  const ports: McsPort[] = ((spec.ports ?? []) as { name?: string; protocol?: string; appProtocol?: string; port: number }[]).map((p) => ({
    name: p.name ?? '',
    protocol: (p.protocol ?? 'TCP') as McsPort['protocol'],
    port: p.port,
    ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}),
  }));

  // Ready endpoints and the targets of each port, from the Service's slices.
  const addresses = new Set<string>();
  const ends: ExportTargets[] = [];
  const targetsByPort = new Map<McsPort, HostPort[]>();
  for (const p of ports) targetsByPort.set(p, []);
  for (const slice of slices) {
    for (const ep of (slice.endpoints ?? []) as { addresses?: string[]; conditions?: { ready?: boolean } }[]) {
      const addr = ep.addresses?.[0];
      if (!addr || !isReady(ep)) continue;
      addresses.add(addr);
      for (const p of ports) {
        const sp = ((slice.ports ?? []) as { name?: string; protocol?: string; port?: number }[]).find(
          (x) => (x.name ?? '') === p.name && (x.protocol ?? 'TCP') === p.protocol,
        );
        if (sp?.port) targetsByPort.get(p)?.push({ host: addr, port: sp.port });
      }
    }
  }
  const clusterIP: string | undefined = !headless && spec.clusterIP ? spec.clusterIP : undefined;
  for (const p of ports) {
    const protocol = mcsTunnelProtocol(p.protocol);
    if (!protocol) continue;
    let targets = targetsByPort.get(p) ?? [];
    // No endpoint information (no slices readable, or none ready): the ClusterIP.
    if (targets.length === 0 && clusterIP) targets = [{ host: clusterIP, port: p.port }];
    ends.push({ protocol, tunnel: mcsTunnelName(namespace, name, p), targets: dedupe(targets) });
  }

  const ex: McsExport = {
    namespace,
    name,
    type: headless ? 'Headless' : 'ClusterSetIP',
    ports,
    sessionAffinity: spec.sessionAffinity === 'ClientIP' ? 'ClientIP' : 'None',
    ipFamilies: ((spec.ipFamilies ?? []) as string[]).filter((f): f is 'IPv4' | 'IPv6' => f === 'IPv4' || f === 'IPv6'),
    labels: { ...(se.spec?.exportedLabels ?? {}) },
    annotations: { ...(se.spec?.exportedAnnotations ?? {}) },
    createdAt: se.metadata.creationTimestamp ?? new Date(0).toISOString(),
    readyEndpoints: addresses.size,
  };
  if (spec.sessionAffinity === 'ClientIP' && spec.sessionAffinityConfig?.clientIP) {
    const t = spec.sessionAffinityConfig.clientIP.timeoutSeconds;
    ex.sessionAffinityConfig = { clientIP: t === undefined ? {} : { timeoutSeconds: t } };
  }
  if (spec.internalTrafficPolicy === 'Cluster' || spec.internalTrafficPolicy === 'Local') ex.internalTrafficPolicy = spec.internalTrafficPolicy;
  if (typeof spec.trafficDistribution === 'string') ex.trafficDistribution = spec.trafficDistribution;
  return { valid: cond('True', 'Valid', 'Service is valid for export'), export: ex, ends };
}

function dedupe(list: HostPort[]): HostPort[] {
  const seen = new Set<string>();
  return list.filter((h) => {
    const k = `${h.host}|${h.port}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** The three ServiceExport conditions, from validity and what the hub said. */
export function exportConditions(
  valid: Condition,
  hub: { status?: McsExportStatus; refused?: string; online: boolean },
  generation: number | undefined,
): Condition[] {
  const g = generation ? { observedGeneration: generation } : {};
  const out: Condition[] = [valid];
  if (valid.status !== 'True') {
    out.push({ type: 'Ready', status: 'False', reason: 'Failed', message: `not exported: ${valid.message}`, ...g });
    return out;
  }
  if (hub.refused) {
    out.push({ type: 'Ready', status: 'False', reason: 'Failed', message: `the hub refused the export: ${hub.refused}`, ...g });
    return out;
  }
  if (!hub.status) {
    out.push({
      type: 'Ready',
      status: 'Unknown',
      reason: 'Pending',
      message: hub.online ? 'waiting for the hub to accept the export' : 'waiting for the connection to the hub',
      ...g,
    });
    return out;
  }
  const n = hub.status.clusters;
  out.push({
    type: 'Ready',
    status: 'True',
    reason: 'Exported',
    message: `exported to the clusterset through the hub (${n} cluster${n === 1 ? '' : 's'} export it)`,
    ...g,
  });
  out.push(
    hub.status.conflicts.length > 0
      ? { type: 'Conflict', status: 'True', reason: hub.status.conflicts.join(','), message: hub.status.message, ...g }
      : { type: 'Conflict', status: 'False', reason: 'NoConflicts', message: hub.status.message, ...g },
  );
  return out;
}

/** Conditions with lastTransitionTime kept from `current` when the status did
 * not change; whether anything differs from `current` at all. */
export function mergeConditions(
  current: readonly Condition[] | undefined,
  desired: readonly Condition[],
  now: string,
): { conditions: Condition[]; changed: boolean } {
  let changed = false;
  const conditions = desired.map((d) => {
    const c = current?.find((x) => x.type === d.type);
    if (!c || c.status !== d.status || c.reason !== d.reason || c.message !== d.message || (c.observedGeneration ?? 0) !== (d.observedGeneration ?? 0)) {
      changed = true;
    }
    return { ...d, lastTransitionTime: c && c.status === d.status && c.lastTransitionTime ? c.lastTransitionTime : now };
  });
  // A condition we no longer set (e.g. Conflict after the export turned invalid).
  if ((current ?? []).some((c) => ['Valid', 'Ready', 'Conflict'].includes(c.type) && !desired.some((d) => d.type === c.type))) changed = true;
  return { conditions, changed };
}

export interface ImportListener {
  /** The import port this listener serves. */
  name: string;
  protocol: 'TCP' | 'UDP' | 'SCTP';
  port: number;
}

const ownerRef = (si: KubeObject) => ({
  apiVersion: `${MCS_GROUP}/v1beta1`,
  kind: 'ServiceImport',
  name: si.metadata.name,
  uid: si.metadata.uid as string,
  controller: false,
  blockOwnerDeletion: false,
});

const managedLabels = (name: string) => ({ [LABEL_APP_MANAGED_BY]: MANAGED_BY, [LABEL_SERVICE_NAME]: name });

export function desiredServiceImport(imp: McsImport, derived: string): KubeObject {
  const spec: Record<string, unknown> = {
    type: imp.type,
    ports: imp.ports.map((p) => ({ name: p.name || undefined, protocol: p.protocol, port: p.port, ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}) })),
    sessionAffinity: imp.sessionAffinity,
  };
  if (imp.sessionAffinityConfig) spec.sessionAffinityConfig = imp.sessionAffinityConfig;
  if (imp.internalTrafficPolicy) spec.internalTrafficPolicy = imp.internalTrafficPolicy;
  if (imp.trafficDistribution) spec.trafficDistribution = imp.trafficDistribution;
  return {
    apiVersion: `${MCS_GROUP}/v1beta1`,
    kind: 'ServiceImport',
    metadata: {
      name: imp.name,
      namespace: imp.namespace,
      labels: { ...imp.labels, ...managedLabels(imp.name) },
      annotations: { ...imp.annotations, [ANNOTATION_DERIVED_SERVICE]: derived },
    },
    spec,
  };
}

export function desiredDerivedService(imp: McsImport, derived: string, si: KubeObject): KubeObject {
  const spec: Record<string, unknown> = {
    type: 'ClusterIP',
    ports: imp.ports.map((p) => ({
      name: p.name || undefined,
      protocol: p.protocol,
      port: p.port,
      targetPort: p.port,
      ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}),
    })),
    sessionAffinity: imp.type === 'Headless' ? 'None' : imp.sessionAffinity,
  };
  if (imp.type === 'Headless') spec.clusterIP = 'None';
  if (imp.type !== 'Headless' && imp.sessionAffinity === 'ClientIP' && imp.sessionAffinityConfig) spec.sessionAffinityConfig = imp.sessionAffinityConfig;
  if (imp.internalTrafficPolicy) spec.internalTrafficPolicy = imp.internalTrafficPolicy;
  if (imp.trafficDistribution) spec.trafficDistribution = imp.trafficDistribution;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: derived, namespace: imp.namespace, labels: managedLabels(imp.name), ownerReferences: [ownerRef(si)] },
    spec,
  };
}

export interface SliceEndpoint {
  address: string;
  ready: boolean;
}

export interface SlicePort {
  name: string;
  protocol: string;
  port: number;
}

/** One MCS EndpointSlice for one source cluster. */
export function desiredSlice(
  imp: McsImport,
  derived: string,
  si: KubeObject,
  cluster: string,
  suffix: string,
  addressType: 'IPv4' | 'IPv6' | 'FQDN',
  endpoints: readonly SliceEndpoint[],
  ports: readonly SlicePort[],
): KubeObject {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: sliceName(derived, cluster, suffix),
      namespace: imp.namespace,
      labels: {
        [LABEL_SERVICE_NAME]: imp.name,
        [LABEL_SOURCE_CLUSTER]: cluster,
        [LABEL_K8S_SERVICE_NAME]: derived,
        [LABEL_MANAGED_BY]: MANAGED_BY,
      },
      ownerReferences: [ownerRef(si)],
    },
    addressType,
    endpoints: endpoints.map((e) => ({ addresses: [e.address], conditions: { ready: e.ready, serving: e.ready, terminating: false } })),
    ports: ports.map((p) => ({ name: p.name, protocol: p.protocol, port: p.port })),
  };
}

export function sliceName(derived: string, cluster: string, suffix = ''): string {
  const plain = `${derived}-${cluster}${suffix}`;
  if (plain.length <= 253 && /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(plain)) return plain;
  return `${derived}-${createHash('sha256').update(cluster).digest('hex').slice(0, 16)}${suffix}`;
}

export const addressTypeOf = (address: string): 'IPv4' | 'IPv6' => (isIPv6(address) ? 'IPv6' : 'IPv4');

/** Does `actual` already hold everything in `desired`? Objects: every key of
 * desired matches; arrays: same length, element-wise. Undefined in desired is
 * ignored (the server may default it). */
export function covers(desired: unknown, actual: unknown): boolean {
  if (desired === undefined) return true;
  if (desired === null || typeof desired !== 'object') return desired === actual || String(desired) === String(actual);
  if (Array.isArray(desired)) {
    if (!Array.isArray(actual) || actual.length !== desired.length) return false;
    return desired.every((d, i) => covers(d, actual[i]));
  }
  if (!actual || typeof actual !== 'object' || Array.isArray(actual)) return false;
  const a = actual as Record<string, unknown>;
  return Object.entries(desired as Record<string, unknown>).every(([k, v]) => covers(v, a[k]));
}
