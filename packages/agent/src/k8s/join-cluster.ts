/**
 * The cluster id a cluster agent binds at enrolment (`ztm-agent join
 * --kubeconfig FILE [--cluster-id ID]`): asked of the cluster's API server.
 */
import { type ClusterIdSource, resolveClusterId } from './cluster-id.js';
import { KubeApi } from './kube-api.js';

export async function clusterForJoin(o: { kubeconfig?: string; clusterId?: string }): Promise<ClusterIdSource> {
  const api = await KubeApi.create({ kubeconfig: o.kubeconfig });
  try {
    return await resolveClusterId(api, o.clusterId);
  } finally {
    api.close();
  }
}
