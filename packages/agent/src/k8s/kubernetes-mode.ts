/**
 * Kubernetes mode: the agent of a cluster exports its Services and imports
 * the clusterset's through the MCS API (see proto mcs.ts for the protocol).
 * Loaded by agent.ts with `await import()` only when Kubernetes mode is on.
 *
 * Start-up never fails on an API server that is down: the cluster id is
 * resolved, and the informers sync, in the background with retries. The
 * cluster id must match the one bound into the agent's certificate at
 * enrolment; otherwise nothing is exported or imported and the status says
 * why.
 */
import { X509Certificate } from 'node:crypto';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, type McsImports, type McsStatus, ZtmError, clusterFromSubjectAltName } from '@ztm/proto';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import type { TunnelManager } from '../tunnel/tunnel-manager.js';
import { resolveClusterId } from './cluster-id.js';
import { ExportController } from './export-controller.js';
import { ImportController } from './import-controller.js';
import { Informer } from './informer.js';
import { KubeApi, KubeError } from './kube-api.js';
import { McsEnds } from './mcs-ends.js';
import { LABEL_MANAGED_BY, MANAGED_BY, MCS_GROUP } from './mcs-objects.js';
import { ReconcileLoop } from './reconcile-loop.js';

export interface KubernetesModeOptions {
  /** kubeconfig file; none: the in-cluster service account. */
  kubeconfig?: string;
  /** Cluster id configured by the operator (the certificate's wins). */
  clusterId?: string;
  /** This agent's certificate: the cluster it names was bound at enrolment. */
  certPem: string;
  mesh: string;
  /** Address pods reach this agent on (pod IP): the imported slices name it
   * and the import listeners bind it. */
  advertiseAddress?: string;
  client: HubClient;
  tunnels: TunnelManager;
  log: Logger;
  udpIdleMs?: number;
  importGraceMs?: number;
  /** The agent's data directory (listener ports survive restarts there). */
  dataDir?: string;
}

export interface KubernetesMode {
  status(): Record<string, unknown>;
  close(): Promise<void>;
}

const STARTUP_RETRY_MAX_MS = 15_000;
/** Imports missing from a full set (the hub restarted and has not heard from
 * every cluster yet) are kept this long before they are removed. */
export const IMPORT_GRACE_MS = 30_000;

export async function startKubernetesMode(o: KubernetesModeOptions): Promise<KubernetesMode> {
  const log = o.log;
  const advertiseAddress = o.advertiseAddress ?? firstHostAddress();
  if (!o.advertiseAddress) {
    log.warn({ advertiseAddress: advertiseAddress ?? null }, 'no --advertise-address (or POD_IP): imported EndpointSlices name this address instead');
  }
  const certCluster = clusterFromSubjectAltName(new X509Certificate(o.certPem).subjectAltName, o.mesh);
  const api = await KubeApi.create({ kubeconfig: o.kubeconfig });
  let state = 'starting';
  let lastError: string | null = null;
  let cluster: string | null = null;
  let clusterSource: string | null = null;
  let stopped = false;
  const informers: Informer[] = [];
  const loops: ReconcileLoop[] = [];
  let exports: ExportController | undefined;
  let imports: ImportController | undefined;
  const ends = new McsEnds({
    client: o.client,
    log,
    listenHost: advertiseAddress ?? '0.0.0.0',
    udpIdleMs: o.udpIdleMs,
    onChange: () => o.tunnels.announce(),
    portsFile: o.dataDir ? join(o.dataDir, 'mcs-ports.json') : undefined,
  });
  o.tunnels.attachManaged(ends);

  const onOnline = () => {
    exports?.onHubOnline();
    for (const l of loops) l.trigger();
  };
  const onMcs = (msg: McsImports | McsStatus) => {
    if (msg.type === 'mcs-imports' && imports) {
      imports.onImports(msg);
      importLoop?.trigger();
    } else if (msg.type === 'mcs-status' && exports) {
      exports.onStatus(msg);
      exportLoop?.trigger();
    }
  };
  let exportLoop: ReconcileLoop | undefined;
  let importLoop: ReconcileLoop | undefined;

  async function begin(): Promise<void> {
    for (let attempt = 0; !stopped; attempt++) {
      try {
        if (!certCluster) {
          throw new ZtmError(
            ErrorCodes.NOT_ENROLLED,
            "this agent's certificate names no cluster: enrol it as a cluster agent (ztm-agent join --permit FILE --kubeconfig FILE) to use Kubernetes mode",
          );
        }
        const id = await resolveClusterId(api, o.clusterId ?? certCluster);
        if (id.id !== certCluster) {
          throw new ZtmError(
            ErrorCodes.FORBIDDEN,
            `cluster id ${id.id} (from ${id.source}) is not the cluster ${certCluster} bound into this agent's certificate: enrol again with a new permit`,
          );
        }
        cluster = id.id;
        clusterSource = id.source === 'configured' && !o.clusterId ? 'certificate' : id.source;
        const exportVersion = await servedVersion(api);
        await run(cluster, exportVersion);
        return;
      } catch (err) {
        lastError = (err as Error).message;
        if (err instanceof ZtmError && !(err instanceof KubeError) && (err.code === ErrorCodes.FORBIDDEN || err.code === ErrorCodes.NOT_ENROLLED)) {
          state = 'refused';
          log.error({ reason: lastError }, 'kubernetes mode off');
          return;
        }
        state = 'waiting for the API server';
        log.warn({ reason: lastError, attempt }, 'kubernetes mode: cannot start yet; retrying');
        await new Promise((r) => setTimeout(r, Math.min(STARTUP_RETRY_MAX_MS, 500 * 2 ** Math.min(attempt, 5))).unref());
      }
    }
  }

  async function run(clusterId: string, mcsVersion: string): Promise<void> {
    const inf = (path: string, labelSelector?: string) => {
      const i = new Informer({ api, path, labelSelector, log });
      informers.push(i);
      return i;
    };
    const serviceExports = inf(`/apis/${MCS_GROUP}/${mcsVersion}/serviceexports`);
    const serviceImports = inf(`/apis/${MCS_GROUP}/${mcsVersion}/serviceimports`);
    const services = inf('/api/v1/services');
    const slices = inf('/apis/discovery.k8s.io/v1/endpointslices');
    const namespaces = inf('/api/v1/namespaces');
    exports = new ExportController({
      api,
      cluster: clusterId,
      client: o.client,
      ends,
      log,
      serviceExports,
      services,
      slices,
      exportVersion: mcsVersion,
    });
    imports = new ImportController({
      api,
      cluster: clusterId,
      ends,
      log,
      namespaces,
      serviceImports,
      services,
      slices,
      advertiseAddress,
      importVersion: mcsVersion,
      graceMs: o.importGraceMs ?? IMPORT_GRACE_MS,
      wakeIn: (ms) => importLoop?.wakeIn(ms),
    });
    const ex = exports;
    const im = imports;
    exportLoop = new ReconcileLoop('mcs-export', () => ex.reconcile(), log);
    importLoop = new ReconcileLoop('mcs-import', () => im.reconcile(), log);
    loops.push(exportLoop, importLoop);
    const both = () => {
      for (const l of loops) l.trigger();
    };
    serviceExports.on('event', () => exportLoop?.trigger());
    services.on('event', both);
    slices.on('event', (_t, s) => {
      if (s.metadata.labels?.[LABEL_MANAGED_BY] === MANAGED_BY) importLoop?.trigger();
      else both();
    });
    namespaces.on('event', () => importLoop?.trigger());
    serviceImports.on('event', () => importLoop?.trigger());
    for (const i of informers) {
      i.on('synced', both);
      i.start();
    }
    o.client.on('online', onOnline);
    o.client.on('mcs', onMcs);
    if (o.client.state === 'online') onOnline();
    state = 'running';
    lastError = null;
    log.info({ cluster: clusterId, server: api.server, mcsVersion, advertiseAddress: advertiseAddress ?? null }, 'kubernetes mode on');
  }

  void begin();

  return {
    status() {
      return {
        state,
        cluster,
        clusterSource,
        server: api.server,
        advertiseAddress: advertiseAddress ?? null,
        lastError: lastError ?? exportLoop?.lastError ?? importLoop?.lastError ?? informers.find((i) => i.lastError)?.lastError ?? null,
        informers: informers.map((i) => ({ path: i.path, synced: i.synced, objects: i.size, relists: i.relists, lastError: i.lastError })),
        exports: exports?.views() ?? [],
        imports: imports?.views() ?? [],
      };
    },
    async close() {
      stopped = true;
      for (const l of loops) l.stop();
      for (const i of informers) i.stop();
      o.client.off('online', onOnline);
      o.client.off('mcs', onMcs);
      ends.close();
      api.close();
    },
  };
}

/** v1beta1 where served, else v1alpha1 (older CRDs); objects of either
 * version are the same objects (conversion None, same schema). */
async function servedVersion(api: KubeApi): Promise<string> {
  const g = await api.get<{ versions?: { version: string }[] }>(`/apis/${MCS_GROUP}`).catch((err) => {
    if (err instanceof KubeError && err.status === 404) {
      throw new KubeError(404, 'NotFound', `the MCS API (${MCS_GROUP}) is not installed: apply the ServiceExport and ServiceImport CRDs`);
    }
    throw err;
  });
  const versions = (g.versions ?? []).map((v) => v.version);
  if (versions.includes('v1beta1')) return 'v1beta1';
  if (versions.includes('v1alpha1')) return 'v1alpha1';
  throw new KubeError(404, 'NotFound', `${MCS_GROUP} serves neither v1beta1 nor v1alpha1 (${versions.join(', ')})`);
}

/** The first non-loopback IPv4 address of this host (outside a pod, without
 * --advertise-address), or undefined. */
function firstHostAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}
