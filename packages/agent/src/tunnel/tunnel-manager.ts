/**
 * The agent's tunnel ends: opens and closes listeners, serves exits for the
 * hub, persists what was opened at run time (tunnels.json) and restores it at
 * start, and tells the hub its ends on every (re)connection.
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { Server } from 'node:net';
import {
  ErrorCodes,
  Headers,
  type InboundEnds,
  type OutboundEnds,
  type TunnelDirection,
  ZtmError,
  formatHostPort,
  parseTunnelId,
  respondError,
  tunnelFromPath,
  tunnelKey,
} from '@ztm/proto';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { type EndStats, newEndStats } from './end-stats.js';
import { listenTcp, serveTcpExit } from './tcp.js';
import { readTunnelFile, writeTunnelFile } from './tunnel-store.js';
import { type InboundEnd, type InboundSpec, type OutboundEnd, type OutboundSpec, inboundSpec, outboundSpec, toInbound, toOutbound } from './tunnel-spec.js';
import { type UdpListener, listenUdp, serveUdpExit } from './udp.js';

interface InboundState {
  end: InboundEnd;
  stats: EndStats;
  listeners: (Server | UdpListener)[];
  error?: string;
  persist: boolean;
}

interface OutboundState {
  end: OutboundEnd;
  stats: EndStats;
  rr: number;
  persist: boolean;
}

export interface TunnelView {
  direction: TunnelDirection;
  tunnel: string;
  listen?: string[];
  exits?: string[];
  targets?: string[];
  allowEndpoints?: string[];
  allowUsers?: string[];
  state: string;
  stats: EndStats;
}

export interface TunnelManagerOptions {
  client: HubClient;
  log: Logger;
  /** Where run-time changes persist; none in library use. */
  dataDir?: string;
  /** Ends declared in the YAML config: applied at start, not persisted. */
  declared?: { inbound?: InboundSpec[]; outbound?: OutboundSpec[] };
  udpIdleMs?: number;
}

/** Ends another module manages (Kubernetes mode, k8s/mcs-ends.ts): announced
 * and served with ours, listed, never persisted. */
export interface ManagedEnds {
  outbound(): OutboundEnds['ends'];
  inbound(): InboundEnds['ends'];
  /** Serve a relayed connection if the tunnel is one of its outbound ends. */
  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean;
  views(): TunnelView[];
  openStreams(): number;
}

export class TunnelManager {
  readonly #o: TunnelManagerOptions;
  readonly #inbound = new Map<string, InboundState>();
  readonly #outbound = new Map<string, OutboundState>();
  #managed: ManagedEnds | undefined;

  constructor(o: TunnelManagerOptions) {
    this.#o = o;
  }

  /** Restore persisted and declared ends. One that fails (port in use) is kept
   * with its error and does not stop the others. */
  async start(): Promise<void> {
    const file = this.#o.dataDir ? readTunnelFile(this.#o.dataDir) : { inbound: [], outbound: [] };
    const sources: [InboundSpec[], OutboundSpec[], boolean][] = [
      [this.#o.declared?.inbound ?? [], this.#o.declared?.outbound ?? [], false],
      [file.inbound, file.outbound, true],
    ];
    for (const [inbound, outbound, persist] of sources) {
      for (const spec of outbound) {
        try {
          this.#setOutbound(toOutbound(spec), persist);
        } catch (err) {
          this.#o.log.error({ tunnel: spec.tunnel, reason: (err as Error).message }, 'outbound end not restored');
        }
      }
      for (const spec of inbound) {
        let end: InboundEnd;
        try {
          end = toInbound(spec);
        } catch (err) {
          this.#o.log.error({ tunnel: spec.tunnel, reason: (err as Error).message }, 'inbound end not restored');
          continue;
        }
        try {
          await this.#openInbound(end, persist);
        } catch (err) {
          this.#inbound.set(end.key, { end, stats: newEndStats(), listeners: [], error: (err as Error).message, persist });
          this.#o.log.error({ tunnel: end.key, reason: (err as Error).message }, 'inbound end failed');
        }
      }
    }
    this.#syncReverse();
  }

  async openInbound(spec: Partial<InboundSpec>): Promise<TunnelView> {
    const end = toInbound(spec);
    await this.#openInbound(end, true);
    this.#save();
    this.announce();
    return this.#view('inbound', end.key);
  }

  openOutbound(spec: Partial<OutboundSpec>): TunnelView {
    const end = toOutbound(spec);
    this.#setOutbound(end, true);
    this.#save();
    this.announce();
    this.#o.client.wantReverse(true);
    return this.#view('outbound', end.key);
  }

  async close(direction: TunnelDirection, tunnel: string): Promise<{ closed: boolean }> {
    const key = tunnelKey(parseTunnelId(tunnel));
    if (direction === 'inbound') {
      const s = this.#inbound.get(key);
      if (!s) throw new ZtmError(ErrorCodes.NOT_FOUND, `no inbound end ${key} here (see ztm-agent tunnel list)`);
      this.#inbound.delete(key);
      for (const l of s.listeners) l.close();
    } else {
      if (!this.#outbound.delete(key)) throw new ZtmError(ErrorCodes.NOT_FOUND, `no outbound end ${key} here (see ztm-agent tunnel list)`);
      this.#syncReverse();
    }
    this.#save();
    this.announce();
    return { closed: true };
  }

  list(): TunnelView[] {
    return [
      ...[...this.#inbound.keys()].map((k) => this.#view('inbound', k)),
      ...[...this.#outbound.keys()].map((k) => this.#view('outbound', k)),
      ...(this.#managed?.views() ?? []),
    ];
  }

  /** Let another module's ends travel with ours; call `announce()` when they change. */
  attachManaged(m: ManagedEnds): void {
    this.#managed = m;
  }

  /** Keep the reverse session while any outbound end (ours or managed) needs it. */
  #syncReverse(): void {
    this.#o.client.wantReverse(this.#outbound.size > 0 || (this.#managed?.outbound().length ?? 0) > 0);
  }

  /** Tell the hub our ends (on every online, and after each change). */
  announce(): void {
    this.#o.client.sendControl({
      type: 'outbound-ends',
      ends: [...this.#outbound.values()]
        .map(({ end }) => ({
          protocol: end.id.protocol,
          name: end.id.name,
          allowEndpoints: end.allowEndpoints,
          allowUsers: end.allowUsers,
        }))
        .concat(this.#managed?.outbound() ?? []),
    });
    this.#o.client.sendControl({
      type: 'inbound-ends',
      ends: [...this.#inbound.values()]
        .map(({ end }) => ({
          protocol: end.id.protocol,
          name: end.id.name,
          listen: end.listen.map(formatHostPort),
          exits: end.exits,
        }))
        .concat(this.#managed?.inbound() ?? []),
    });
    if (this.#managed) this.#syncReverse();
  }

  /** A relayed connection from the hub for one of our outbound ends. */
  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean {
    const id = tunnelFromPath(headers[':path']);
    if (!id) return false;
    const key = tunnelKey(id);
    const s = this.#outbound.get(key);
    if (!s && this.#managed?.serve(stream, headers)) return true;
    if (!s) {
      respondError(stream, new ZtmError(ErrorCodes.NO_EXIT, `${key}: this endpoint holds no outbound end`));
      return true;
    }
    // The hub checked the allow-lists; check again with what it stamped.
    const source = String(headers[Headers.sourceEndpoint] ?? '');
    const user = String(headers[Headers.sourceUser] ?? '');
    const { allowEndpoints, allowUsers } = s.end;
    if ((allowEndpoints.length && !allowEndpoints.includes(source)) || (allowUsers.length && !allowUsers.includes(user))) {
      respondError(stream, new ZtmError(ErrorCodes.FORBIDDEN, `${key}: endpoint ${source} is not allowed`));
      return true;
    }
    const rr = s.rr++;
    if (id.protocol === 'tcp') serveTcpExit(s.end, stream, headers, rr, s.stats, this.#o.log);
    else serveUdpExit(s.end, stream, headers, rr, s.stats, this.#o.log, this.#o.udpIdleMs);
    return true;
  }

  /** Stop accepting new local connections; live ones go on. */
  stopListening(): void {
    for (const s of this.#inbound.values()) {
      for (const l of s.listeners) l.close();
      s.listeners = [];
    }
  }

  /** Tunnelled connections (and UDP flows) open now, both directions. */
  openStreams(): number {
    let n = 0;
    for (const s of this.#inbound.values()) n += s.stats.open;
    for (const s of this.#outbound.values()) n += s.stats.open;
    return n + (this.#managed?.openStreams() ?? 0);
  }

  async #openInbound(end: InboundEnd, persist: boolean): Promise<void> {
    const old = this.#inbound.get(end.key);
    if (old) {
      for (const l of old.listeners) l.close();
      this.#inbound.delete(end.key);
    }
    const stats = old?.stats ?? newEndStats();
    const listeners: (Server | UdpListener)[] = [];
    try {
      for (const at of end.listen) {
        listeners.push(
          end.id.protocol === 'tcp'
            ? await listenTcp(end, at, this.#o.client, stats, this.#o.log)
            : await listenUdp(end, at, this.#o.client, stats, this.#o.log, this.#o.udpIdleMs),
        );
      }
    } catch (err) {
      for (const l of listeners) l.close();
      throw err;
    }
    this.#inbound.set(end.key, { end, stats, listeners, persist });
    this.#o.log.info({ tunnel: end.key, listen: end.listen.map(formatHostPort) }, 'inbound end open');
  }

  #setOutbound(end: OutboundEnd, persist: boolean): void {
    const old = this.#outbound.get(end.key);
    this.#outbound.set(end.key, { end, stats: old?.stats ?? newEndStats(), rr: old?.rr ?? 0, persist });
    this.#o.log.info({ tunnel: end.key, targets: end.targets.map(formatHostPort) }, 'outbound end open');
  }

  #save(): void {
    if (!this.#o.dataDir) return;
    writeTunnelFile(this.#o.dataDir, {
      version: 1,
      inbound: [...this.#inbound.values()].filter((s) => s.persist).map((s) => inboundSpec(s.end)),
      outbound: [...this.#outbound.values()].filter((s) => s.persist).map((s) => outboundSpec(s.end)),
    });
  }

  #view(direction: TunnelDirection, key: string): TunnelView {
    if (direction === 'inbound') {
      const s = this.#inbound.get(key) as InboundState;
      return {
        direction,
        tunnel: key,
        listen: s.end.listen.map(formatHostPort),
        exits: s.end.exits,
        state: s.error ? `failed: ${s.error}` : 'listening',
        stats: s.stats,
      };
    }
    const s = this.#outbound.get(key) as OutboundState;
    return {
      direction,
      tunnel: key,
      targets: s.end.targets.map(formatHostPort),
      allowEndpoints: s.end.allowEndpoints,
      allowUsers: s.end.allowUsers,
      state: 'ready',
      stats: s.stats,
    };
  }
}
