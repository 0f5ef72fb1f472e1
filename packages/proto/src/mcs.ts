/**
 * Multicluster services (MCS, KEP-1645) on the control stream.
 *
 * A cluster agent (one whose certificate names a cluster: SAN URI
 * `ztm://<mesh>/cluster/<id>`, bound at enrolment) reports the Services its
 * cluster exports (`ServiceExport`) and serves each exported port as an
 * outbound end of the tunnel `mcsTunnelName(...)`. The hub merges the exports
 * of all clusters into one import per namespace/name and pushes the imports to
 * every cluster agent, which writes the `ServiceImport`, a derived Service and
 * one EndpointSlice per source cluster pointing at its own inbound ends
 * (pinned to that cluster's exit endpoint).
 *
 *   agent ── mcs-exports (full set on every online, then deltas) ──▶ hub
 *   hub   ── mcs-imports (full set to a new participant, then deltas) ──▶ every cluster agent
 *   hub   ── mcs-status (per export of that cluster: accepted, conflicts) ──▶ the exporting agent
 *
 * A set too large for one frame is split: the first frame says `full: true`,
 * every frame but the last says `more: true`. The receiver replaces its view
 * only when the last frame of a full set has arrived.
 *
 * Leases: the hub withdraws a cluster's exports when none of its sessions has
 * been online for the lease TTL (hub config `mcsLeaseTtl`, default 30 s).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { MAX_CONTROL_FRAME_BYTES } from './limits.js';

/** DNS-1123 label: namespace and Service names. */
export const K8S_NAME_PATTERN = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** Cluster id: a DNS-1123 label, or `name.<extra-label>` (KEP-2149), at most 63
 * characters so it fits the `multicluster.kubernetes.io/source-cluster` label. */
export const CLUSTER_ID_PATTERN = /^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/;
/** Service port names: DNS-1123 label, or empty for a single unnamed port. */
const PORT_NAME_PATTERN = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$/;

export const ClusterId = z.string().regex(CLUSTER_ID_PATTERN, 'must be a DNS label of at most 63 characters');
const K8sName = z.string().regex(K8S_NAME_PATTERN);

export const McsPort = z.strictObject({
  name: z.string().regex(PORT_NAME_PATTERN).default(''),
  protocol: z.enum(['TCP', 'UDP', 'SCTP']).default('TCP'),
  appProtocol: z.string().max(256).optional(),
  port: z.number().int().min(1).max(65535),
});

const SessionAffinityConfig = z.strictObject({
  clientIP: z.strictObject({ timeoutSeconds: z.number().int().min(0).max(86_400).optional() }).optional(),
});

const StringMap = z.record(z.string().max(317), z.string().max(4096));

/** One exported Service as its cluster sees it. */
export const McsExport = z.strictObject({
  namespace: K8sName,
  name: K8sName,
  /** `ClusterSetIP` for ClusterIP/NodePort/LoadBalancer, `Headless` for clusterIP None. */
  type: z.enum(['ClusterSetIP', 'Headless']),
  ports: z.array(McsPort).max(256),
  sessionAffinity: z.enum(['None', 'ClientIP']).default('None'),
  sessionAffinityConfig: SessionAffinityConfig.optional(),
  ipFamilies: z
    .array(z.enum(['IPv4', 'IPv6']))
    .max(2)
    .default([]),
  internalTrafficPolicy: z.enum(['Cluster', 'Local']).optional(),
  trafficDistribution: z.string().max(64).optional(),
  /** `spec.exportedLabels` / `spec.exportedAnnotations` of the ServiceExport. */
  labels: StringMap.default({}),
  annotations: StringMap.default({}),
  /** creationTimestamp of the ServiceExport: the oldest export wins conflicts. */
  createdAt: z.string().max(64),
  /** Ready endpoints behind the Service in its cluster. */
  readyEndpoints: z.number().int().min(0),
});

const NamespacedName = z.strictObject({ namespace: K8sName, name: K8sName });

/** agent → hub, once the agent's Kubernetes informers have synced and after
 * every `welcome` (full set), then on each change (upserts and withdrawals).
 * `cluster` must be the cluster in the session's certificate; otherwise the hub
 * answers `mcs-status` with `refused` and ignores the message. The first
 * `mcs-exports` also subscribes the session to `mcs-imports`. */
export const McsExports = z.strictObject({
  type: z.literal('mcs-exports'),
  cluster: ClusterId,
  full: z.boolean(),
  more: z.boolean().default(false),
  exports: z.array(McsExport).max(4096),
  withdrawn: z.array(NamespacedName).max(4096).default([]),
});

/** One source cluster of an import, as the importing agent needs it. */
export const McsImportCluster = z.strictObject({
  cluster: ClusterId,
  /** The endpoint serving this cluster's exports: inbound ends pin it as exit. */
  endpoint: z.string().max(63),
  /** false while the cluster's agent is offline (its lease still runs). */
  online: z.boolean(),
  readyEndpoints: z.number().int().min(0),
  /** The cluster's ports that made it into the import: `name`/`protocol`/`port`
   * are the import's port, `tunnel` the tunnel this cluster serves it on. */
  ports: z
    .array(
      z.strictObject({
        name: z.string().max(63),
        protocol: z.enum(['TCP', 'UDP', 'SCTP']),
        port: z.number().int().min(1).max(65535),
        tunnel: z.string().max(63),
      }),
    )
    .max(256),
});

/** The merged view of one namespace/name across the clusters that export it. */
export const McsImport = z.strictObject({
  namespace: K8sName,
  name: K8sName,
  type: z.enum(['ClusterSetIP', 'Headless']),
  ports: z.array(McsPort).max(256),
  sessionAffinity: z.enum(['None', 'ClientIP']),
  sessionAffinityConfig: SessionAffinityConfig.optional(),
  ipFamilies: z.array(z.enum(['IPv4', 'IPv6'])).max(2),
  internalTrafficPolicy: z.enum(['Cluster', 'Local']).optional(),
  trafficDistribution: z.string().max(64).optional(),
  labels: StringMap.default({}),
  annotations: StringMap.default({}),
  clusters: z.array(McsImportCluster).max(1024),
});

/** hub → every cluster agent that sent `mcs-exports`: the whole import set
 * when it subscribes, then the imports that changed and those withdrawn
 * (last export gone, or every exporting cluster's lease expired). No answer. */
export const McsImports = z.strictObject({
  type: z.literal('mcs-imports'),
  full: z.boolean(),
  more: z.boolean().default(false),
  imports: z.array(McsImport).max(4096),
  withdrawn: z.array(NamespacedName).max(4096).default([]),
});

/** Conflict reasons of the ServiceExport `Conflict` condition (mcs-api constants). */
export const McsConflictReason = z.enum([
  'PortConflict',
  'TypeConflict',
  'SessionAffinityConflict',
  'SessionAffinityConfigConflict',
  'LabelsConflict',
  'AnnotationsConflict',
  'InternalTrafficPolicyConflict',
  'TrafficDistributionConflict',
  'IPFamilyConflict',
]);

export const McsExportStatus = z.strictObject({
  namespace: K8sName,
  name: K8sName,
  /** Empty when the export agrees with every other constituent export. */
  conflicts: z.array(McsConflictReason).max(16),
  /** KEP-style: the contested fields, the winning cluster and why. */
  message: z.string().max(2048),
  /** Clusters exporting this name (this one included). */
  clusters: z.number().int().min(0),
});

/** hub → the exporting cluster's agents, after each `mcs-exports` and when a
 * merge involving the cluster's exports changes: the status of the exports
 * named (all of them when `full`). `refused` instead says why the hub ignored
 * the cluster's exports (cluster not in the certificate). No answer. */
export const McsStatus = z.strictObject({
  type: z.literal('mcs-status'),
  cluster: z.string().max(63),
  full: z.boolean(),
  more: z.boolean().default(false),
  refused: z.string().max(1024).optional(),
  exports: z.array(McsExportStatus).max(4096),
});

export type McsPort = z.infer<typeof McsPort>;
export type McsExport = z.infer<typeof McsExport>;
export type McsExports = z.infer<typeof McsExports>;
export type McsImportCluster = z.infer<typeof McsImportCluster>;
export type McsImport = z.infer<typeof McsImport>;
export type McsImports = z.infer<typeof McsImports>;
export type McsConflictReason = z.infer<typeof McsConflictReason>;
export type McsExportStatus = z.infer<typeof McsExportStatus>;
export type McsStatus = z.infer<typeof McsStatus>;

/** `ztm://<mesh>/cluster/<id>`: third SAN URI of a cluster agent's certificate. */
export function clusterUri(mesh: string, cluster: string): string {
  return `ztm://${mesh}/cluster/${cluster}`;
}

export function parseClusterUri(uri: string): { mesh: string; cluster: string } | null {
  const m = /^ztm:\/\/([^/]+)\/cluster\/([^/]+)$/.exec(uri);
  if (!m || !m[1] || !m[2] || !CLUSTER_ID_PATTERN.test(m[2])) return null;
  return { mesh: m[1], cluster: m[2] };
}

/** The cluster named in a certificate's subjectAltName text (node:crypto's
 * `X509Certificate.subjectAltName`), or null. */
export function clusterFromSubjectAltName(san: string | undefined, mesh?: string): string | null {
  for (const m of (san ?? '').matchAll(/URI:([^,\s]+)/g)) {
    const c = parseClusterUri(m[1] as string);
    if (c && (mesh === undefined || c.mesh === mesh)) return c.cluster;
  }
  return null;
}

export const mcsKey = (x: { namespace: string; name: string }): string => `${x.namespace}/${x.name}`;

const TUNNEL_NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;

/** Tunnel names starting with this are reserved for multicluster services:
 * the hub relays them only from cluster agents. */
export const MCS_TUNNEL_PREFIX = 'mcs.';

/** The tunnel an exporting cluster serves one Service port on:
 * `mcs.<ns>.<svc>.<port name | protocol-port>`, or `mcs.<hash>` when that is
 * longer than a tunnel name may be. Both ends compute it from the exporter's
 * own port, so a port that lost a conflict still maps to its own target. */
export function mcsTunnelName(namespace: string, name: string, port: { name?: string; protocol?: string; port: number }): string {
  const id = port.name ? port.name : `${(port.protocol ?? 'TCP').toLowerCase()}-${port.port}`;
  const plain = `${MCS_TUNNEL_PREFIX}${namespace}.${name}.${id}`;
  if (plain.length <= 63 && TUNNEL_NAME.test(plain)) return plain;
  return `${MCS_TUNNEL_PREFIX}${createHash('sha256').update(`${namespace}/${name}/${id}`).digest('hex').slice(0, 32)}`;
}

/** The tunnel protocol of a Service port (SCTP is not tunnelled). */
export function mcsTunnelProtocol(protocol: string): 'tcp' | 'udp' | null {
  return protocol === 'TCP' ? 'tcp' : protocol === 'UDP' ? 'udp' : null;
}

/** Split items into chunks whose JSON stays well under the frame limit. */
export function chunkForFrames<T>(items: readonly T[], budgetBytes = Math.floor(MAX_CONTROL_FRAME_BYTES / 2)): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let size = 0;
  for (const it of items) {
    const n = JSON.stringify(it).length + 1;
    if (cur.length > 0 && (size + n > budgetBytes || cur.length >= 4096)) {
      out.push(cur);
      cur = [];
      size = 0;
    }
    cur.push(it);
    size += n;
  }
  if (cur.length > 0 || out.length === 0) out.push(cur);
  return out;
}
