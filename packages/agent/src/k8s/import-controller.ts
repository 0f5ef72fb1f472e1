/**
 * Import side of multicluster services. For every import the hub pushes, in
 * every namespace that exists here, the agent keeps:
 *
 * - the `ServiceImport` (type, ports, affinity, policies; `spec.ips` = the
 *   ClusterIP(s) of the derived Service; `status.clusters`);
 * - the derived selector-less Service `derived-<hash>` (annotation
 *   `multicluster.kubernetes.io/derived-service` on the import), owned by the
 *   ServiceImport;
 * - one EndpointSlice per source cluster (MCS labels, our managed-by): for a
 *   remote cluster it names this agent's listener, an inbound end pinned to
 *   that cluster's exit; for this cluster it copies the Service's own ready
 *   endpoints (no detour through the hub).
 *
 * It never writes a Service of the imported name: clients use the clusterset
 * name or the derived Service; `<svc>.<ns>.svc.cluster.local` stays local.
 * Objects are written with server-side apply only when they differ from what
 * the informers show, and garbage-collected once the hub's full set says an
 * import is gone.
 */
import { createHash } from 'node:crypto';
import { type McsImport, type McsImportCluster, type McsImports, mcsKey, mcsTunnelName, mcsTunnelProtocol } from '@ztm/proto';
import type { Logger } from '../log.js';
import { objectKey, type Informer } from './informer.js';
import type { KubeApi, KubeObject } from './kube-api.js';
import { type InboundWant, McsEnds } from './mcs-ends.js';
import {
  LABEL_APP_MANAGED_BY,
  LABEL_MANAGED_BY,
  LABEL_SERVICE_NAME,
  LABEL_SOURCE_CLUSTER,
  MANAGED_BY,
  MCS_GROUP,
  type SliceEndpoint,
  type SlicePort,
  addressTypeOf,
  covers,
  derivedServiceName,
  desiredDerivedService,
  desiredServiceImport,
  desiredSlice,
  mergeConditions,
  slicesOf,
} from './mcs-objects.js';

export interface ImportControllerOptions {
  api: KubeApi;
  cluster: string;
  ends: McsEnds;
  log: Logger;
  namespaces: Informer;
  serviceImports: Informer;
  services: Informer;
  slices: Informer;
  /** The address other pods reach this agent's listeners on (pod IP). */
  advertiseAddress?: string;
  importVersion: string;
  /** How long an import missing from a full set is kept (hub restarted). */
  graceMs: number;
  /** Ask for a reconcile after a delay (grace periods ending). */
  wakeIn?: (delayMs: number) => void;
}

export interface ImportView {
  namespace: string;
  name: string;
  type: string;
  ips: string[];
  ports: string[];
  derivedService: string;
  clusters: { cluster: string; online: boolean; readyEndpoints: number; endpoints: string[] }[];
  state: string;
}

const isOurs = (o: KubeObject | undefined) => o?.metadata.labels?.[LABEL_APP_MANAGED_BY] === MANAGED_BY;
const isOurSlice = (o: KubeObject) => o.metadata.labels?.[LABEL_MANAGED_BY] === MANAGED_BY && !!o.metadata.labels?.[LABEL_SERVICE_NAME];

export class ImportController {
  readonly #o: ImportControllerOptions;
  #imports = new Map<string, McsImport>();
  #staging: Map<string, McsImport> | null = null;
  #lingering = new Map<string, { base: McsImport; clusters: Map<string, { cluster: McsImportCluster; until: number }> }>();
  /** A complete set has arrived since start: garbage collection is safe. */
  #haveFull = false;
  #problems = new Map<string, string>();
  #listenerPorts = new Map<string, number>();

  constructor(o: ImportControllerOptions) {
    this.#o = o;
  }

  onImports(msg: McsImports): void {
    if (msg.full) this.#staging = new Map();
    const target = this.#staging ?? this.#imports;
    for (const imp of msg.imports) {
      target.set(mcsKey(imp), imp);
      const l = this.#lingering.get(mcsKey(imp));
      for (const c of imp.clusters) l?.clusters.delete(c.cluster);
      if (l && l.clusters.size === 0) this.#lingering.delete(mcsKey(imp));
    }
    for (const w of msg.withdrawn) {
      target.delete(mcsKey(w));
      this.#lingering.delete(mcsKey(w)); // withdrawn on purpose: no grace
    }
    if (this.#staging && !msg.more) {
      // Missing from a full set is not a withdrawal: after a hub restart the
      // other clusters' exports come back as their agents reconnect. Keep
      // the source clusters a full set left out (endpoints not ready) for a
      // grace period, so that imports and their ClusterSetIPs stay put.
      const until = Date.now() + this.#o.graceMs;
      for (const [k, old] of this.#imports) {
        const now = this.#staging.get(k);
        for (const c of old.clusters) {
          if (now?.clusters.some((x) => x.cluster === c.cluster)) continue;
          let l = this.#lingering.get(k);
          if (!l) {
            l = { base: old, clusters: new Map() };
            this.#lingering.set(k, l);
          }
          if (!l.clusters.has(c.cluster)) l.clusters.set(c.cluster, { cluster: { ...c, online: false }, until });
        }
      }
      this.#imports = this.#staging;
      this.#staging = null;
      this.#haveFull = true;
    }
  }

  /** Imports from the hub, with the source clusters in their grace period. */
  #current(): McsImport[] {
    const now = Date.now();
    for (const [k, l] of this.#lingering) {
      for (const [c, e] of l.clusters) if (e.until <= now) l.clusters.delete(c);
      if (l.clusters.size === 0) this.#lingering.delete(k);
    }
    const out: McsImport[] = [];
    for (const key of new Set([...this.#imports.keys(), ...this.#lingering.keys()])) {
      const imp = this.#imports.get(key);
      const l = this.#lingering.get(key);
      if (!l) {
        out.push(imp as McsImport);
        continue;
      }
      const base = imp ?? { ...l.base, clusters: [] };
      const extra = [...l.clusters.values()].map((e) => e.cluster).filter((c) => !base.clusters.some((x) => x.cluster === c.cluster));
      out.push({ ...base, clusters: [...base.clusters, ...extra].sort((a, b) => (a.cluster < b.cluster ? -1 : a.cluster > b.cluster ? 1 : 0)) });
    }
    return out;
  }

  #namespaceReady(ns: string): boolean {
    const n = this.#o.namespaces.get(ns);
    return !!n && !n.metadata.deletionTimestamp && n.status?.phase !== 'Terminating';
  }

  async reconcile(): Promise<void> {
    const { namespaces, serviceImports, services, slices } = this.#o;
    if (!namespaces.synced || !serviceImports.synced || !services.synced || !slices.synced) return;
    const active = this.#current().filter((imp) => this.#namespaceReady(imp.namespace));

    // Listeners first: the slices name their ports.
    const wants: InboundWant[] = [];
    if (this.#o.advertiseAddress) {
      for (const imp of active) {
        for (const c of imp.clusters) {
          if (c.cluster === this.#o.cluster) continue;
          for (const p of c.ports) {
            const protocol = mcsTunnelProtocol(p.protocol);
            if (protocol) wants.push({ protocol, tunnel: p.tunnel, exit: c.endpoint });
          }
        }
      }
    }
    this.#listenerPorts = await this.#o.ends.setInbound(wants);

    let firstError: unknown;
    const problems = new Map<string, string>();
    for (const imp of active) {
      try {
        const problem = await this.#ensure(imp);
        if (problem) problems.set(mcsKey(imp), problem);
      } catch (err) {
        problems.set(mcsKey(imp), (err as Error).message);
        firstError ??= err;
      }
    }
    this.#problems = problems;
    if (this.#haveFull) {
      try {
        await this.#collectGarbage(new Set(active.map(mcsKey)));
      } catch (err) {
        firstError ??= err;
      }
    }
    if (this.#lingering.size > 0) {
      const next = Math.min(...[...this.#lingering.values()].flatMap((l) => [...l.clusters.values()].map((e) => e.until)));
      this.#o.wakeIn?.(Math.max(0, next - Date.now()) + 100);
    }
    if (firstError) throw firstError;
  }

  /** Make one import's objects right; returns a problem to show, if any. */
  async #ensure(imp: McsImport): Promise<string | undefined> {
    const { api, serviceImports, services, slices, importVersion } = this.#o;
    const ns = imp.namespace;
    const key = mcsKey(imp);
    const derived = derivedServiceName(ns, imp.name);
    const siPath = `/apis/${MCS_GROUP}/${importVersion}/namespaces/${ns}/serviceimports/${imp.name}`;
    const svcPath = `/api/v1/namespaces/${ns}/services/${derived}`;
    let svc = services.get(`${ns}/${derived}`);
    const taken = svc && !isOurs(svc);

    const withIps = (si: KubeObject): KubeObject => {
      if (!svc || taken) return si;
      const ips = ((svc.spec?.clusterIPs ?? []) as string[]).filter((ip) => ip && ip !== 'None');
      if (imp.type === 'ClusterSetIP' && ips.length > 0) si.spec.ips = ips;
      if (Array.isArray(svc.spec?.ipFamilies) && svc.spec.ipFamilies.length > 0) si.spec.ipFamilies = svc.spec.ipFamilies;
      return si;
    };
    let si = serviceImports.get(key);
    let want = withIps(desiredServiceImport(imp, derived));
    if (!si || !covers(want, si)) si = await this.#apply(serviceImports, siPath, want);
    if (taken) {
      await this.#status(imp, si, 'False', 'Pending', `Service ${ns}/${derived} exists and is not managed by ztm; cannot derive the import`);
      return `Service ${ns}/${derived} exists and is not ours`;
    }

    const svcWant = desiredDerivedService(imp, derived, si);
    if (svc && (svc.spec?.clusterIP === 'None') !== (imp.type === 'Headless')) {
      // clusterIP is immutable: a type change means a new derived Service.
      await api.delete(svcPath);
      services.forget(`${ns}/${derived}`);
      svc = undefined;
    }
    if (!svc || !covers(svcWant, svc)) svc = await this.#apply(services, svcPath, svcWant);
    want = withIps(desiredServiceImport(imp, derived));
    if (!covers(want, si)) si = await this.#apply(serviceImports, siPath, want);

    // EndpointSlices, one set per source cluster.
    const desired: KubeObject[] = [];
    let problem: string | undefined;
    for (const c of imp.clusters) {
      if (c.cluster === this.#o.cluster) {
        desired.push(...this.#localSlices(imp, derived, si));
        continue;
      }
      const addr = this.#o.advertiseAddress;
      if (!addr) {
        problem = 'no advertise address (--advertise-address or POD_IP): remote endpoints cannot be imported';
        continue;
      }
      const ports: SlicePort[] = [];
      for (const p of c.ports) {
        const protocol = mcsTunnelProtocol(p.protocol);
        const port = protocol ? this.#listenerPorts.get(McsEnds.listenerKey({ protocol, tunnel: p.tunnel, exit: c.endpoint })) : undefined;
        if (port) ports.push({ name: p.name, protocol: p.protocol, port });
      }
      if (ports.length === 0) continue;
      desired.push(desiredSlice(imp, derived, si, c.cluster, '', addressTypeOf(addr), [{ address: addr, ready: c.online && c.readyEndpoints > 0 }], ports));
    }
    const keep = new Set<string>();
    for (const d of desired) {
      const k = objectKey(d);
      keep.add(k);
      const cur = slices.get(k);
      if (!cur || !covers(d, cur)) {
        await this.#apply(slices, `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices/${d.metadata.name}`, d);
      }
    }
    for (const s of [...slices.list()]) {
      if (s.metadata.namespace !== ns || !isOurSlice(s) || s.metadata.labels?.[LABEL_SERVICE_NAME] !== imp.name || keep.has(objectKey(s))) continue;
      await this.#deleteSlice(s);
    }
    await this.#status(imp, si, 'True', 'Ready', `imported from ${imp.clusters.map((c) => c.cluster).join(', ')}`);
    return problem;
  }

  /** This cluster's own endpoints, copied from the Service's slices. */
  #localSlices(imp: McsImport, derived: string, si: KubeObject): KubeObject[] {
    const svc = this.#o.services.get(`${imp.namespace}/${imp.name}`);
    const mine = imp.clusters.find((c) => c.cluster === this.#o.cluster);
    if (!svc || !mine) return [];
    const myPorts = (svc.spec?.ports ?? []) as { name?: string; protocol?: string; port: number }[];
    const out: KubeObject[] = [];
    for (const orig of slicesOf(this.#o.slices.list(), imp.namespace, imp.name)) {
      const ports: SlicePort[] = [];
      for (const q of myPorts) {
        const entry = mine.ports.find(
          (e) => e.tunnel === mcsTunnelName(imp.namespace, imp.name, { name: q.name ?? '', protocol: q.protocol ?? 'TCP', port: q.port }),
        );
        const sp = ((orig.ports ?? []) as { name?: string; protocol?: string; port?: number }[]).find(
          (x) => (x.name ?? '') === (q.name ?? '') && (x.protocol ?? 'TCP') === (q.protocol ?? 'TCP'),
        );
        if (entry && sp?.port) ports.push({ name: entry.name, protocol: entry.protocol, port: sp.port });
      }
      const endpoints: SliceEndpoint[] = ((orig.endpoints ?? []) as { addresses?: string[]; conditions?: { ready?: boolean } }[]).flatMap((e) =>
        e.addresses?.[0] ? [{ address: e.addresses[0], ready: e.conditions?.ready !== false }] : [],
      );
      if (ports.length === 0 || endpoints.length === 0) continue;
      const suffix = `-${createHash('sha256').update(orig.metadata.name).digest('hex').slice(0, 10)}`;
      out.push(desiredSlice(imp, derived, si, this.#o.cluster, suffix, orig.addressType ?? 'IPv4', endpoints, ports));
    }
    return out;
  }

  async #status(imp: McsImport, si: KubeObject, status: 'True' | 'False', reason: string, message: string): Promise<void> {
    const clusters = imp.clusters.map((c) => ({ cluster: c.cluster }));
    const { conditions, changed } = mergeConditions(
      si.status?.conditions,
      [{ type: 'Ready', status, reason, message }],
      new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    );
    if (!changed && covers(clusters, si.status?.clusters ?? [])) return;
    const out = await this.#o.api.apply<KubeObject>(
      `/apis/${MCS_GROUP}/${this.#o.importVersion}/namespaces/${imp.namespace}/serviceimports/${imp.name}/status`,
      {
        apiVersion: `${MCS_GROUP}/${this.#o.importVersion}`,
        kind: 'ServiceImport',
        metadata: { name: imp.name, namespace: imp.namespace },
        status: { clusters, conditions, endpointSliceObjects: 'Present' },
      },
    );
    this.#observe(this.#o.serviceImports, out);
  }

  /** Remove imports the hub no longer has (and any object of ours left over). */
  async #collectGarbage(active: Set<string>): Promise<void> {
    const { api, serviceImports, services, slices, importVersion } = this.#o;
    for (const s of [...slices.list()]) {
      if (!isOurSlice(s)) continue;
      if (active.has(`${s.metadata.namespace}/${s.metadata.labels?.[LABEL_SERVICE_NAME]}`)) continue;
      await this.#deleteSlice(s);
    }
    for (const svc of [...services.list()]) {
      if (!isOurs(svc) || active.has(`${svc.metadata.namespace}/${svc.metadata.labels?.[LABEL_SERVICE_NAME]}`)) continue;
      await api.delete(`/api/v1/namespaces/${svc.metadata.namespace}/services/${svc.metadata.name}`);
      services.forget(objectKey(svc));
    }
    for (const si of [...serviceImports.list()]) {
      const key = objectKey(si);
      if (active.has(key) || !isOurs(si)) continue;
      await api.delete(`/apis/${MCS_GROUP}/${importVersion}/namespaces/${si.metadata.namespace}/serviceimports/${si.metadata.name}`);
      serviceImports.forget(key);
      this.#o.log.info({ serviceImport: key }, 'service import removed');
    }
  }

  async #deleteSlice(s: KubeObject): Promise<void> {
    await this.#o.api.delete(`/apis/discovery.k8s.io/v1/namespaces/${s.metadata.namespace}/endpointslices/${s.metadata.name}`);
    this.#o.slices.forget(objectKey(s));
    this.#o.log.info({ endpointSlice: objectKey(s), cluster: s.metadata.labels?.[LABEL_SOURCE_CLUSTER] }, 'mcs endpoint slice removed');
  }

  /** Server-side apply, then into the cache at once. */
  async #apply(informer: Informer, path: string, obj: KubeObject): Promise<KubeObject> {
    const out = await this.#o.api.apply<KubeObject>(path, obj);
    this.#o.log.debug({ kind: obj.kind, object: objectKey(obj), resourceVersion: out.metadata.resourceVersion }, 'mcs object applied');
    return this.#observe(informer, out);
  }

  #observe(informer: Informer, obj: KubeObject): KubeObject {
    informer.observe(obj);
    return obj;
  }

  views(): ImportView[] {
    return this.#current().map((imp) => {
      const si = this.#o.serviceImports.get(mcsKey(imp));
      const derived = derivedServiceName(imp.namespace, imp.name);
      const ours = [...this.#o.slices.list()].filter(
        (s) => s.metadata.namespace === imp.namespace && isOurSlice(s) && s.metadata.labels?.[LABEL_SERVICE_NAME] === imp.name,
      );
      return {
        namespace: imp.namespace,
        name: imp.name,
        type: imp.type,
        ips: (si?.spec?.ips ?? []) as string[],
        ports: imp.ports.map((p) => `${p.name ? `${p.name}:` : ''}${p.port}/${p.protocol}`),
        derivedService: derived,
        clusters: imp.clusters.map((c) => ({
          cluster: c.cluster,
          online: c.online,
          readyEndpoints: c.readyEndpoints,
          endpoints: ours
            .filter((s) => s.metadata.labels?.[LABEL_SOURCE_CLUSTER] === c.cluster)
            .flatMap((s) =>
              ((s.endpoints ?? []) as { addresses: string[] }[]).flatMap((e) =>
                ((s.ports ?? []) as { port: number }[]).map((p) => `${e.addresses[0]}:${p.port}`),
              ),
            ),
        })),
        state: !this.#namespaceReady(imp.namespace) ? `namespace ${imp.namespace} does not exist here` : (this.#problems.get(mcsKey(imp)) ?? 'ok'),
      };
    });
  }
}
