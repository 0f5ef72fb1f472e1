/**
 * Export side of multicluster services: every ServiceExport is validated
 * against its Service, reported to the hub (full set after each `welcome`,
 * then changes), served as outbound ends whose targets are the Service's
 * ready endpoints, and given the conditions `Valid`, `Ready` and `Conflict`
 * on its status subresource.
 */
import { type McsExport, type McsExportStatus, type McsStatus, chunkForFrames, mcsKey } from '@ztm/proto';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { objectKey, type Informer } from './informer.js';
import { type KubeApi, KubeError, type KubeObject } from './kube-api.js';
import type { McsEnds } from './mcs-ends.js';
import {
  ANNOTATION_EXPORT,
  type Condition,
  type ExportEvaluation,
  LABEL_APP_MANAGED_BY,
  MANAGED_BY,
  MCS_GROUP,
  evaluateExport,
  exportConditions,
  mergeConditions,
  slicesOf,
} from './mcs-objects.js';
import { sameJsonValue } from './reconcile-loop.js';

export interface ExportControllerOptions {
  api: KubeApi;
  cluster: string;
  client: HubClient;
  ends: McsEnds;
  log: Logger;
  serviceExports: Informer;
  services: Informer;
  slices: Informer;
  /** Version of the ServiceExport API served (v1beta1, or v1alpha1 on old CRDs). */
  exportVersion: string;
}

export interface ExportView {
  namespace: string;
  name: string;
  valid: boolean;
  conditions: Condition[];
  type?: string;
  ports?: string[];
  readyEndpoints?: number;
  targets: string[];
}

export class ExportController {
  readonly #o: ExportControllerOptions;
  /** Valid exports now. */
  #exports = new Map<string, McsExport>();
  #evaluations = new Map<string, ExportEvaluation>();
  /** What the hub was told since the last full set. */
  #sent = new Map<string, McsExport>();
  #needFull = true;
  #hubStatus = new Map<string, McsExportStatus>();
  #refused: string | undefined;

  constructor(o: ExportControllerOptions) {
    this.#o = o;
  }

  /** The hub session is (again) online: it gets the full set. */
  onHubOnline(): void {
    this.#needFull = true;
  }

  onStatus(msg: McsStatus): void {
    if (msg.refused) {
      this.#refused = msg.refused;
      this.#hubStatus.clear();
      this.#o.log.error({ cluster: this.#o.cluster, reason: msg.refused }, 'hub refused our exports');
      return;
    }
    this.#refused = undefined;
    if (msg.full) this.#hubStatus.clear();
    for (const s of msg.exports) this.#hubStatus.set(mcsKey(s), s);
  }

  /** One pass: evaluate, serve, report, write conditions. Throws on API
   * errors (the loop retries). */
  async reconcile(): Promise<void> {
    const { serviceExports, services, slices } = this.#o;
    if (!serviceExports.synced || !services.synced || !slices.synced) return;
    await this.#autoExports();
    const exports = new Map<string, McsExport>();
    const evaluations = new Map<string, ExportEvaluation>();
    const ends: ExportEvaluation['ends'] = [];
    for (const se of serviceExports.list()) {
      if (se.metadata.deletionTimestamp) continue;
      const key = objectKey(se);
      const ev = evaluateExport(se, services.get(key), slicesOf(slices.list(), se.metadata.namespace ?? '', se.metadata.name));
      evaluations.set(key, ev);
      if (ev.export) {
        exports.set(key, ev.export);
        ends.push(...ev.ends);
      }
    }
    this.#exports = exports;
    this.#evaluations = evaluations;
    this.#o.ends.setOutbound(ends);
    this.#report();
    await this.#writeConditions();
  }

  /** Services annotated `ztm.flomesh.io/export: "true"` get a ServiceExport
   * made by us; ours go when the annotation (or the Service) does. A
   * ServiceExport someone else made is never touched. */
  async #autoExports(): Promise<void> {
    const { api, services, serviceExports, exportVersion } = this.#o;
    const path = (ns: string, name: string) => `/apis/${MCS_GROUP}/${exportVersion}/namespaces/${ns}/serviceexports/${name}`;
    for (const svc of services.list()) {
      if (svc.metadata.annotations?.[ANNOTATION_EXPORT] !== 'true' || svc.metadata.deletionTimestamp) continue;
      if (serviceExports.get(objectKey(svc))) continue;
      const { name, namespace = '' } = svc.metadata;
      const out = await api.apply<KubeObject>(path(namespace, name), {
        apiVersion: `${MCS_GROUP}/${exportVersion}`,
        kind: 'ServiceExport',
        metadata: { name, namespace, labels: { [LABEL_APP_MANAGED_BY]: MANAGED_BY } },
      });
      serviceExports.observe(out);
      this.#o.log.info({ serviceExport: objectKey(svc) }, 'service export created for an annotated Service');
    }
    for (const se of [...serviceExports.list()]) {
      if (se.metadata.labels?.[LABEL_APP_MANAGED_BY] !== MANAGED_BY) continue;
      if (services.get(objectKey(se))?.metadata.annotations?.[ANNOTATION_EXPORT] === 'true') continue;
      await api.delete(path(se.metadata.namespace ?? '', se.metadata.name));
      serviceExports.forget(objectKey(se));
      this.#o.log.info({ serviceExport: objectKey(se) }, 'service export removed: its Service is no longer annotated');
    }
  }

  /** Tell the hub what changed (everything after a reconnect). */
  #report(): void {
    const { client, cluster } = this.#o;
    if (client.state !== 'online') return;
    if (this.#needFull) {
      const chunks = chunkForFrames([...this.#exports.values()]);
      chunks.forEach((chunk, i) => {
        client.sendControl({ type: 'mcs-exports', cluster, full: i === 0, more: i < chunks.length - 1, exports: chunk, withdrawn: [] });
      });
      this.#sent = new Map(this.#exports);
      this.#needFull = false;
      return;
    }
    const upserts = [...this.#exports].filter(([k, e]) => !sameJsonValue(this.#sent.get(k), e)).map(([, e]) => e);
    const withdrawn = [...this.#sent.keys()].filter((k) => !this.#exports.has(k)).map((k) => splitKey(k));
    if (upserts.length === 0 && withdrawn.length === 0) return;
    const items: ({ e: McsExport } | { w: { namespace: string; name: string } })[] = [...upserts.map((e) => ({ e })), ...withdrawn.map((w) => ({ w }))];
    for (const chunk of chunkForFrames(items)) {
      client.sendControl({
        type: 'mcs-exports',
        cluster,
        full: false,
        more: false,
        exports: chunk.flatMap((x) => ('e' in x ? [x.e] : [])),
        withdrawn: chunk.flatMap((x) => ('w' in x ? [x.w] : [])),
      });
    }
    this.#sent = new Map(this.#exports);
    this.#o.log.debug({ upserts: upserts.length, withdrawn: withdrawn.length }, 'mcs exports sent');
  }

  async #writeConditions(): Promise<void> {
    const { serviceExports, api, exportVersion } = this.#o;
    const online = this.#o.client.state === 'online';
    let failed: unknown;
    for (const [key, ev] of this.#evaluations) {
      const se = serviceExports.get(key);
      if (!se) continue;
      const desired = exportConditions(ev.valid, { status: this.#hubStatus.get(key), refused: this.#refused, online }, se.metadata.generation);
      const { conditions, changed } = mergeConditions(se.status?.conditions, desired, new Date().toISOString().replace(/\.\d+Z$/, 'Z'));
      if (!changed) continue;
      const path = `/apis/${MCS_GROUP}/${exportVersion}/namespaces/${se.metadata.namespace}/serviceexports/${se.metadata.name}/status`;
      try {
        const out = await api.apply<KubeObject>(path, {
          apiVersion: `${MCS_GROUP}/${exportVersion}`,
          kind: 'ServiceExport',
          metadata: { name: se.metadata.name, namespace: se.metadata.namespace },
          status: { conditions },
        });
        serviceExports.observe(out);
        this.#o.log.info(
          { serviceExport: key, conditions: conditions.map((c) => `${c.type}=${c.status}(${c.reason})`).join(' ') },
          'service export conditions updated',
        );
      } catch (err) {
        if (err instanceof KubeError && err.status === 404) continue; // deleted meanwhile
        failed ??= err;
      }
    }
    if (failed) throw failed;
  }

  views(): ExportView[] {
    return [...this.#evaluations].map(([key, ev]) => {
      const se = this.#o.serviceExports.get(key);
      const { namespace, name } = splitKey(key);
      return {
        namespace,
        name,
        valid: ev.valid.status === 'True',
        conditions: ((se?.status?.conditions ?? []) as Condition[]).map((c) => ({ type: c.type, status: c.status, reason: c.reason, message: c.message })),
        ...(ev.export
          ? {
              type: ev.export.type,
              ports: ev.export.ports.map((p) => `${p.name ? `${p.name}:` : ''}${p.port}/${p.protocol}`),
              readyEndpoints: ev.export.readyEndpoints,
            }
          : {}),
        targets: ev.ends.flatMap((e) => e.targets.map((t) => `${e.protocol}/${e.tunnel}→${t.host}:${t.port}`)),
      };
    });
  }
}

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}
