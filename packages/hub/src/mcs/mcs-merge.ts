/**
 * The merge of one namespace/name exported by several clusters into one
 * import (KEP-1645 "Constraints and conflict resolution"):
 *
 * - ports are the union, merged by name first, then by protocol+port; a
 *   duplicate is resolved in favour of the oldest export;
 * - type, session affinity (+config), internalTrafficPolicy,
 *   trafficDistribution, IP families, exported labels and annotations come from
 *   the export with the oldest ServiceExport creationTimestamp (ties: cluster
 *   name);
 * - any disagreement raises `Conflict` on every constituent export, with a
 *   message naming the contested fields, the winning cluster and why.
 *
 * Pure: no I/O, no clock.
 */
import { McsConflictReason, type McsExport, type McsExportStatus, type McsImport, type McsPort, mcsTunnelName } from '@ztm/proto';

export interface ClusterExport {
  cluster: string;
  /** Endpoint that serves the cluster's tunnels (exit to pin). */
  endpoint: string;
  online: boolean;
  export: McsExport;
}

export interface MergeResult {
  import: McsImport;
  /** Status of each constituent export, by cluster. */
  statuses: Map<string, McsExportStatus>;
}

const FIELD_NAMES: Record<McsConflictReason, string> = {
  PortConflict: 'ports',
  TypeConflict: 'type',
  SessionAffinityConflict: 'sessionAffinity',
  SessionAffinityConfigConflict: 'sessionAffinityConfig',
  LabelsConflict: 'exportedLabels',
  AnnotationsConflict: 'exportedAnnotations',
  InternalTrafficPolicyConflict: 'internalTrafficPolicy',
  TrafficDistributionConflict: 'trafficDistribution',
  IPFamilyConflict: 'ipFamilies',
};

const portId = (p: McsPort) => `${p.name}|${p.protocol}|${p.port}`;
const portSet = (ports: readonly McsPort[]) => [...new Set(ports.map(portId))].sort().join(',');
const canon = (v: unknown): string => JSON.stringify(v, (_k, x) => (x && typeof x === 'object' && !Array.isArray(x) ? sortKeys(x) : x)) ?? '';
const sortKeys = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));

/** Oldest first; the cluster name breaks ties so every hub picks the same winner. */
export function byAge(a: ClusterExport, b: ClusterExport): number {
  const ta = Date.parse(a.export.createdAt);
  const tb = Date.parse(b.export.createdAt);
  const d = (Number.isNaN(ta) ? Number.MAX_SAFE_INTEGER : ta) - (Number.isNaN(tb) ? Number.MAX_SAFE_INTEGER : tb);
  if (d !== 0) return d;
  return a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0;
}

/** Union of ports, oldest export first; a later port that reuses a name or a
 * protocol+port with different values loses. */
export function unionPorts(sorted: readonly ClusterExport[]): McsPort[] {
  const out: McsPort[] = [];
  for (const e of sorted) {
    for (const p of e.export.ports) {
      const sameName = out.find((q) => q.name === p.name);
      if (sameName) continue; // same or conflicting: the older one stays
      if (out.some((q) => q.protocol === p.protocol && q.port === p.port)) continue;
      out.push(p.appProtocol === undefined ? { name: p.name, protocol: p.protocol, port: p.port } : { ...p });
    }
  }
  // A Service with several ports needs every port named: if the union broke
  // that, keep the oldest export's ports only (still a Conflict).
  if (out.length > 1 && out.some((p) => p.name === '')) return [...(sorted[0]?.export.ports ?? [])];
  return out;
}

/** The import port a cluster's own port serves, or undefined if it lost. */
function importPortFor(union: readonly McsPort[], p: McsPort): McsPort | undefined {
  if (p.name) return union.find((u) => u.name === p.name && u.protocol === p.protocol);
  return union.find((u) => u.name === '' && u.protocol === p.protocol) ?? union.find((u) => u.protocol === p.protocol && u.port === p.port);
}

export function mergeExports(namespace: string, name: string, exports: readonly ClusterExport[]): MergeResult | null {
  if (exports.length === 0) return null;
  const sorted = [...exports].sort(byAge);
  const oldest = sorted[0] as ClusterExport;
  const o = oldest.export;
  const ports = unionPorts(sorted);
  const unionKey = portSet(ports);

  // Per export: the fields where it disagrees with the winner (ports: with the union).
  const differs = new Map<string, Set<McsConflictReason>>();
  for (const e of sorted) {
    const x = e.export;
    const d = new Set<McsConflictReason>();
    if (portSet(x.ports) !== unionKey) d.add('PortConflict');
    if (x.type !== o.type) d.add('TypeConflict');
    if (x.sessionAffinity !== o.sessionAffinity) d.add('SessionAffinityConflict');
    if (canon(x.sessionAffinityConfig ?? null) !== canon(o.sessionAffinityConfig ?? null)) d.add('SessionAffinityConfigConflict');
    if (canon(x.labels) !== canon(o.labels)) d.add('LabelsConflict');
    if (canon(x.annotations) !== canon(o.annotations)) d.add('AnnotationsConflict');
    if ((x.internalTrafficPolicy ?? 'Cluster') !== (o.internalTrafficPolicy ?? 'Cluster')) d.add('InternalTrafficPolicyConflict');
    if ((x.trafficDistribution ?? '') !== (o.trafficDistribution ?? '')) d.add('TrafficDistributionConflict');
    if (canon(x.ipFamilies) !== canon(o.ipFamilies)) d.add('IPFamilyConflict');
    differs.set(e.cluster, d);
  }
  const all = new Set<McsConflictReason>();
  for (const d of differs.values()) for (const r of d) all.add(r);
  // With a single export there is nothing to disagree with.
  if (sorted.length === 1) all.clear();
  const reasons = McsReasonOrder.filter((r) => all.has(r));
  // Clusters that disagree with the winner (its ports included): the oldest never does.
  const oldestPorts = portSet(o.ports);
  const disagree = sorted.filter((e) => e !== oldest && ((differs.get(e.cluster)?.size ?? 0) > 0 || portSet(e.export.ports) !== oldestPorts)).length;
  const message =
    reasons.length === 0
      ? sorted.length === 1
        ? 'Only this cluster exports this service.'
        : `All ${sorted.length} clusters agree.`
      : `Conflicting ${reasons.map((r) => FIELD_NAMES[r]).join(', ')}. Using ${
          reasons.includes('PortConflict') ? 'the union of ports (duplicates resolved by age) and the other values' : 'the values'
        } from the oldest service export in cluster ${oldest.cluster} (created ${o.createdAt}). ${disagree}/${sorted.length} clusters disagree.`;

  const statuses = new Map<string, McsExportStatus>();
  for (const e of sorted) statuses.set(e.cluster, { namespace, name, conflicts: [...reasons], message, clusters: sorted.length });

  const clusters = [...sorted]
    .sort((a, b) => (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0))
    .map((e) => ({
      cluster: e.cluster,
      endpoint: e.endpoint,
      online: e.online,
      readyEndpoints: e.export.readyEndpoints,
      ports: e.export.ports.flatMap((p) => {
        const u = importPortFor(ports, p);
        return u ? [{ name: u.name, protocol: u.protocol, port: u.port, tunnel: mcsTunnelName(namespace, name, p) }] : [];
      }),
    }));

  const imp: McsImport = {
    namespace,
    name,
    type: o.type,
    ports,
    sessionAffinity: o.sessionAffinity,
    ipFamilies: [...o.ipFamilies],
    labels: { ...o.labels },
    annotations: { ...o.annotations },
    clusters,
  };
  if (o.sessionAffinityConfig) imp.sessionAffinityConfig = o.sessionAffinityConfig;
  if (o.internalTrafficPolicy) imp.internalTrafficPolicy = o.internalTrafficPolicy;
  if (o.trafficDistribution) imp.trafficDistribution = o.trafficDistribution;
  return { import: imp, statuses };
}

/** The mcs-api order of conflict reasons (the schema's own list). */
const McsReasonOrder: readonly McsConflictReason[] = McsConflictReason.options;

export const sameJson = (a: unknown, b: unknown): boolean => canon(a) === canon(b);
