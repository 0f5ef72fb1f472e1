/**
 * `ztm-agent status`, Kubernetes part: exports with their conditions and
 * imports with their per-cluster endpoints. No Kubernetes client here: the CLI
 * loads this statically.
 */
import { X509Certificate } from 'node:crypto';
import { clusterFromSubjectAltName, printTable } from '@ztm/proto';
import type { AgentIdentity } from '../identity/identity-store.js';
import type { ExportView } from './export-controller.js';
import type { ImportView } from './import-controller.js';

export interface KubernetesStatus {
  state: string;
  cluster: string | null;
  clusterSource: string | null;
  server: string;
  advertiseAddress: string | null;
  lastError: string | null;
  exports: ExportView[];
  imports: ImportView[];
}

/** The cluster this agent's certificate is bound to, or null. */
export function certificateCluster(identity: Pick<AgentIdentity, 'certPem' | 'mesh'>): string | null {
  return clusterFromSubjectAltName(new X509Certificate(identity.certPem).subjectAltName, identity.mesh);
}

export function printKubernetesStatus(k: KubernetesStatus): void {
  console.log(
    `cluster   ${k.cluster ?? '?'}${k.clusterSource ? ` (from ${k.clusterSource})` : ''}, kubernetes ${k.state} at ${k.server}` +
      `${k.advertiseAddress ? `, advertises ${k.advertiseAddress}` : ''}${k.lastError ? ` (${k.lastError})` : ''}`,
  );
  console.log('\nexports');
  printTable(
    k.exports.map((e) => ({
      EXPORT: `${e.namespace}/${e.name}`,
      TYPE: e.type ?? '-',
      PORTS: e.ports?.join(',') || '-',
      READY: e.readyEndpoints === undefined ? '-' : String(e.readyEndpoints),
      CONDITIONS: e.conditions.map((c) => `${c.type}=${c.status}(${c.reason})`).join(' ') || '-',
    })),
  );
  const conflicts = k.exports.flatMap((e) =>
    e.conditions.filter((c) => c.type === 'Conflict' && c.status === 'True').map((c) => `${e.namespace}/${e.name}: ${c.message}`),
  );
  for (const c of conflicts) console.log(`  conflict ${c}`);
  console.log('\nimports');
  printTable(
    k.imports.map((i) => ({
      IMPORT: `${i.namespace}/${i.name}`,
      TYPE: i.type,
      IPS: i.ips.join(',') || '-',
      PORTS: i.ports.join(',') || '-',
      'CLUSTERS (ready endpoints)': i.clusters.map((c) => `${c.cluster}${c.online ? '' : '(offline)'}:${c.readyEndpoints}`).join(' '),
      STATE: i.state,
    })),
  );
}
