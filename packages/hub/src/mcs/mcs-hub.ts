/**
 * The hub's side of multicluster services (proto mcs.ts): the exports of each
 * cluster, kept under a lease; their merge into imports (mcs-merge.ts); and the
 * pushes: `mcs-imports` to every cluster agent that takes part, `mcs-status`
 * (conflicts) to the exporting clusters. Everything is pushed on change; there
 * is one sweep timer, for lease expiry only.
 *
 * Identity: the cluster an export belongs to is the cluster in the session's
 * certificate. A message that claims another cluster, or comes from a session
 * whose certificate names none, is refused (and the agent told why).
 */
import { type HubMessage, type McsExport, type McsExportStatus, type McsExports, type McsImport, chunkForFrames, mcsKey } from '@ztm/proto';
import type { Logger } from '../log.js';
import { type ClusterExport, mergeExports, sameJson } from './mcs-merge.js';

/** What the MCS module needs of a session (AgentSession satisfies it). */
export interface McsSession {
  readonly endpoint: string;
  readonly identity: { cluster: string | null };
  readonly closed: boolean;
  sendControl(message: HubMessage): void;
  once(event: 'close', fn: (reason: string) => void): unknown;
}

export interface McsHubOptions {
  /** How long a cluster with no online session keeps its exports. */
  leaseTtlMs: number;
  log: Logger;
  now?: () => number;
}

interface ClusterState {
  cluster: string;
  exports: Map<string, McsExport>;
  /** Endpoint of the session that reported last: the exit importers pin. */
  endpoint: string;
  sessions: Set<McsSession>;
  /** When the last session went away (lease running), or null while online. */
  offlineSince: number | null;
  /** A full set arriving in several frames. */
  staging: Map<string, McsExport> | null;
}

export interface McsClusterView {
  cluster: string;
  endpoint: string;
  online: boolean;
  leaseExpiresAt: string | null;
  exports: number;
}

export class McsHub {
  readonly #o: McsHubOptions;
  readonly #clusters = new Map<string, ClusterState>();
  /** Sessions that take part (sent `mcs-exports`) and get `mcs-imports`. */
  readonly #subscribers = new Set<McsSession>();
  readonly #imports = new Map<string, McsImport>();
  /** Last status sent per cluster and export key. */
  readonly #statuses = new Map<string, Map<string, McsExportStatus>>();
  readonly #timer: NodeJS.Timeout;

  constructor(o: McsHubOptions) {
    this.#o = o;
    this.#timer = setInterval(() => this.#sweep(), Math.max(100, Math.min(1000, Math.floor(o.leaseTtlMs / 4))));
    this.#timer.unref();
  }

  /** An `mcs-exports` message from a session. */
  onExports(session: McsSession, msg: McsExports): void {
    const certCluster = session.identity.cluster;
    if (certCluster !== msg.cluster) {
      const refused = certCluster
        ? `this endpoint's certificate is bound to cluster ${certCluster}, not ${msg.cluster}`
        : `this endpoint's certificate names no cluster; enrol it with ztm-agent join --kubeconfig to export cluster ${msg.cluster}`;
      this.#o.log.warn({ endpoint: session.endpoint, cluster: msg.cluster, certCluster }, 'mcs exports refused');
      session.sendControl({ type: 'mcs-status', cluster: msg.cluster, full: true, more: false, refused, exports: [] });
      return;
    }
    const cs = this.#cluster(msg.cluster, session.endpoint);
    const changed = new Set<string>();
    if (!cs.sessions.has(session)) {
      cs.sessions.add(session);
      session.once('close', () => this.#onSessionClosed(session, cs));
    }
    if (cs.offlineSince !== null || cs.endpoint !== session.endpoint) {
      // Back online (or served by another endpoint now): importers must learn it.
      for (const k of cs.exports.keys()) changed.add(k);
    }
    cs.offlineSince = null;
    cs.endpoint = session.endpoint;

    let fullApplied = false;
    if (msg.full) cs.staging = new Map();
    if (cs.staging) {
      for (const e of msg.exports) cs.staging.set(mcsKey(e), e);
      for (const w of msg.withdrawn) cs.staging.delete(mcsKey(w));
      if (!msg.more) {
        for (const k of cs.exports.keys()) if (!cs.staging.has(k)) changed.add(k);
        for (const [k, e] of cs.staging) if (!sameJson(cs.exports.get(k), e)) changed.add(k);
        cs.exports = cs.staging;
        cs.staging = null;
        fullApplied = true;
      }
    } else {
      for (const e of msg.exports) {
        const k = mcsKey(e);
        if (!sameJson(cs.exports.get(k), e)) changed.add(k);
        cs.exports.set(k, e);
      }
      for (const w of msg.withdrawn) {
        const k = mcsKey(w);
        if (cs.exports.delete(k)) changed.add(k);
      }
    }
    if (!this.#subscribers.has(session)) {
      this.#subscribers.add(session);
      this.#sendFullImports(session);
    }
    this.#recompute(changed);
    if (fullApplied) this.#sendFullStatus(cs);
    if (fullApplied || changed.size > 0) {
      this.#o.log.info({ cluster: cs.cluster, endpoint: session.endpoint, exports: cs.exports.size, changed: changed.size }, 'mcs exports updated');
    }
  }

  clusters(): McsClusterView[] {
    return [...this.#clusters.values()].map((c) => ({
      cluster: c.cluster,
      endpoint: c.endpoint,
      online: c.offlineSince === null,
      leaseExpiresAt: c.offlineSince === null ? null : new Date(c.offlineSince + this.#o.leaseTtlMs).toISOString(),
      exports: c.exports.size,
    }));
  }

  imports(): McsImport[] {
    return [...this.#imports.values()];
  }

  close(): void {
    clearInterval(this.#timer);
  }

  #cluster(cluster: string, endpoint: string): ClusterState {
    let cs = this.#clusters.get(cluster);
    if (!cs) {
      cs = { cluster, exports: new Map(), endpoint, sessions: new Set(), offlineSince: null, staging: null };
      this.#clusters.set(cluster, cs);
    }
    return cs;
  }

  #onSessionClosed(session: McsSession, cs: ClusterState): void {
    this.#subscribers.delete(session);
    if (!cs.sessions.delete(session) || cs.sessions.size > 0) return;
    if (this.#clusters.get(cs.cluster) !== cs) return;
    cs.offlineSince = this.#now();
    cs.staging = null;
    this.#o.log.info({ cluster: cs.cluster, leaseTtlMs: this.#o.leaseTtlMs }, 'mcs cluster offline; lease running');
    this.#recompute(new Set(cs.exports.keys()));
  }

  #sweep(): void {
    const now = this.#now();
    for (const cs of [...this.#clusters.values()]) {
      if (cs.offlineSince === null || now - cs.offlineSince < this.#o.leaseTtlMs) continue;
      this.#clusters.delete(cs.cluster);
      this.#statuses.delete(cs.cluster);
      this.#o.log.info({ cluster: cs.cluster, exports: cs.exports.size }, 'mcs cluster lease expired; exports withdrawn');
      this.#recompute(new Set(cs.exports.keys()));
    }
  }

  /** Re-merge the given keys; push what changed. */
  #recompute(keys: Set<string>): void {
    if (keys.size === 0) return;
    const changed: McsImport[] = [];
    const withdrawn: { namespace: string; name: string }[] = [];
    const statusByCluster = new Map<string, McsExportStatus[]>();
    for (const key of keys) {
      const [namespace, name] = key.split('/') as [string, string];
      const parts: ClusterExport[] = [];
      for (const cs of this.#clusters.values()) {
        const e = cs.exports.get(key);
        if (e) parts.push({ cluster: cs.cluster, endpoint: cs.endpoint, online: cs.offlineSince === null, export: e });
      }
      const merged = mergeExports(namespace, name, parts);
      // Statuses: the clusters that no longer export this key forget it.
      for (const [cluster, m] of this.#statuses) if (!merged?.statuses.has(cluster)) m.delete(key);
      if (!merged) {
        if (this.#imports.delete(key)) withdrawn.push({ namespace, name });
        continue;
      }
      if (!sameJson(this.#imports.get(key), merged.import)) {
        this.#imports.set(key, merged.import);
        changed.push(merged.import);
      }
      for (const [cluster, st] of merged.statuses) {
        let m = this.#statuses.get(cluster);
        if (!m) {
          m = new Map();
          this.#statuses.set(cluster, m);
        }
        if (sameJson(m.get(key), st)) continue;
        m.set(key, st);
        statusByCluster.set(cluster, [...(statusByCluster.get(cluster) ?? []), st]);
      }
    }
    if (changed.length > 0 || withdrawn.length > 0) {
      for (const s of this.#subscribers) this.#send(s, 'mcs-imports', false, changed, withdrawn);
      this.#o.log.debug({ changed: changed.length, withdrawn: withdrawn.length, subscribers: this.#subscribers.size }, 'mcs imports pushed');
    }
    for (const [cluster, list] of statusByCluster) {
      const cs = this.#clusters.get(cluster);
      if (!cs) continue;
      for (const s of cs.sessions) this.#sendStatus(s, cluster, false, list);
    }
  }

  /** A new participant gets every import; what this message changes follows
   * as a delta. */
  #sendFullImports(session: McsSession): void {
    this.#send(session, 'mcs-imports', true, [...this.#imports.values()], []);
  }

  #sendFullStatus(cs: ClusterState): void {
    const m = this.#statuses.get(cs.cluster);
    const list = [...cs.exports.keys()].flatMap((k) => {
      const st = m?.get(k);
      return st ? [st] : [];
    });
    for (const s of cs.sessions) this.#sendStatus(s, cs.cluster, true, list);
  }

  #send(session: McsSession, type: 'mcs-imports', full: boolean, imports: McsImport[], withdrawn: { namespace: string; name: string }[]): void {
    if (session.closed) return;
    const chunks = chunkForFrames<McsImport | { withdrawn: { namespace: string; name: string } }>([...imports, ...withdrawn.map((w) => ({ withdrawn: w }))]);
    chunks.forEach((chunk, i) => {
      session.sendControl({
        type,
        full: full && i === 0,
        more: i < chunks.length - 1,
        imports: chunk.filter((c): c is McsImport => !('withdrawn' in c)),
        withdrawn: chunk.flatMap((c) => ('withdrawn' in c ? [c.withdrawn] : [])),
      });
    });
  }

  #sendStatus(session: McsSession, cluster: string, full: boolean, list: McsExportStatus[]): void {
    if (session.closed) return;
    const chunks = chunkForFrames(list);
    chunks.forEach((chunk, i) => {
      session.sendControl({ type: 'mcs-status', cluster, full: full && i === 0, more: i < chunks.length - 1, exports: chunk });
    });
  }

  #now(): number {
    return this.#o.now?.() ?? Date.now();
  }
}
