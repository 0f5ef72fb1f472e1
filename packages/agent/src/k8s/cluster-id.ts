/**
 * The cluster id (KEP-2149, the MCS DNS spec): the ClusterProperty
 * `cluster.clusterset.k8s.io` if the cluster has one, else the id the operator
 * configured, else the UID of the `kube-system` namespace (stable for the
 * cluster's life, the fallback the DNS spec recommends).
 */
import { CLUSTER_ID_PATTERN, ErrorCodes, ZtmError } from '@ztm/proto';
import { KubeError, type KubeApi, type KubeObject } from './kube-api.js';

export const CLUSTER_PROPERTY = 'cluster.clusterset.k8s.io';

export interface ClusterIdSource {
  id: string;
  source: 'ClusterProperty' | 'configured' | 'kube-system';
}

/** The ClusterProperty's value, or null when the cluster has none (or the
 * about.k8s.io API is not installed / not readable). */
export async function readClusterProperty(api: KubeApi): Promise<string | null> {
  for (const version of ['v1beta1', 'v1alpha1']) {
    try {
      const cp = await api.get<KubeObject>(`/apis/about.k8s.io/${version}/clusterproperties/${CLUSTER_PROPERTY}`);
      const value = cp.spec?.value;
      if (typeof value === 'string' && value) return value;
      return null;
    } catch (err) {
      if (err instanceof KubeError && (err.status === 404 || err.status === 403)) continue;
      throw err;
    }
  }
  return null;
}

export async function resolveClusterId(api: KubeApi, configured?: string): Promise<ClusterIdSource> {
  const fromProperty = await readClusterProperty(api);
  if (fromProperty !== null) return { id: checkId(fromProperty, `ClusterProperty ${CLUSTER_PROPERTY}`), source: 'ClusterProperty' };
  if (configured) return { id: checkId(configured, '--cluster-id'), source: 'configured' };
  const ns = await api.get<KubeObject>('/api/v1/namespaces/kube-system');
  if (!ns.metadata.uid) throw new ZtmError(ErrorCodes.INTERNAL, 'kube-system namespace has no uid');
  return { id: checkId(ns.metadata.uid, 'kube-system namespace UID'), source: 'kube-system' };
}

function checkId(id: string, from: string): string {
  if (!CLUSTER_ID_PATTERN.test(id)) {
    throw new ZtmError(ErrorCodes.CONFIG, `cluster id ${JSON.stringify(id)} (from ${from}) must be a DNS label of at most 63 lowercase characters`);
  }
  return id;
}
