/**
 * The tunnel ends of multicluster services, managed by the Kubernetes
 * controllers and never persisted:
 *
 * - outbound ends, one per exported Service port (`mcs.<ns>.<svc>.<port>`),
 *   whose targets are the Service's ready endpoints;
 * - inbound ends, one listener per (import port, source cluster), pinned to
 *   that cluster's exit endpoint: the imported EndpointSlice of that cluster
 *   names this listener.
 *
 * The TunnelManager announces them to the hub with its own ends and hands it
 * the relayed connections for them.
 */
import * as dgram from 'node:dgram';
import { existsSync, readFileSync } from 'node:fs';
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import type { AddressInfo, Server } from 'node:net';
import { ErrorCodes, type HostPort, type InboundEnds, type OutboundEnds, ZtmError, formatHostPort, respondError, tunnelFromPath, tunnelKey } from '@ztm/proto';
import { writeFileAtomic } from '../identity/identity-store.js';
import type { Logger } from '../log.js';
import type { HubClient } from '../session/hub-client.js';
import { type EndStats, newEndStats } from '../tunnel/end-stats.js';
import { listenTcp, serveTcpExit } from '../tunnel/tcp.js';
import type { ManagedEnds, TunnelView } from '../tunnel/tunnel-manager.js';
import type { InboundEnd, OutboundEnd } from '../tunnel/tunnel-spec.js';
import { type UdpListener, listenUdp, serveUdpExit } from '../tunnel/udp.js';

interface Outbound {
  end: OutboundEnd;
  stats: EndStats;
  rr: number;
}

interface Inbound {
  end: InboundEnd;
  stats: EndStats;
  listener: Server | UdpListener;
  port: number;
}

export interface McsEndsOptions {
  client: HubClient;
  log: Logger;
  /** Address the inbound listeners bind (the agent's pod IP). */
  listenHost: string;
  udpIdleMs?: number;
  /** Called when the set of ends changed and the hub must be told. */
  onChange: () => void;
  /** Where listener ports are remembered across restarts, so that imported
   * EndpointSlices stay valid while the agent restarts. */
  portsFile?: string;
}

export interface InboundWant {
  protocol: 'tcp' | 'udp';
  tunnel: string;
  /** The exit endpoint: the source cluster's agent. */
  exit: string;
}

export class McsEnds implements ManagedEnds {
  readonly #o: McsEndsOptions;
  readonly #outbound = new Map<string, Outbound>();
  /** By listener key `<exit>|<protocol>/<tunnel>`. */
  readonly #inbound = new Map<string, Inbound>();
  /** Ports used before for a listener key: reused so slices stay put. */
  readonly #lastPort = new Map<string, number>();

  constructor(o: McsEndsOptions) {
    this.#o = o;
    if (o.portsFile && existsSync(o.portsFile)) {
      try {
        const saved = JSON.parse(readFileSync(o.portsFile, 'utf8')) as Record<string, unknown>;
        for (const [k, v] of Object.entries(saved)) if (typeof v === 'number' && v > 0 && v < 65536) this.#lastPort.set(k, v);
      } catch (err) {
        o.log.warn({ file: o.portsFile, reason: (err as Error).message }, 'mcs listener ports not restored');
      }
    }
  }

  /** Replace the exported outbound ends (tunnel name → targets). */
  setOutbound(ends: readonly { protocol: 'tcp' | 'udp'; tunnel: string; targets: HostPort[] }[]): void {
    const next = new Map<string, OutboundEnd>();
    for (const e of ends) {
      const id = { protocol: e.protocol, name: e.tunnel };
      next.set(tunnelKey(id), { id, key: tunnelKey(id), targets: e.targets, allowEndpoints: [], allowUsers: [] });
    }
    let changed = next.size !== this.#outbound.size;
    for (const [k, end] of next) {
      const old = this.#outbound.get(k);
      if (!old) {
        changed = true;
        this.#outbound.set(k, { end, stats: newEndStats(), rr: 0 });
      } else old.end = end; // targets only: the hub need not hear of it
    }
    for (const k of [...this.#outbound.keys()]) if (!next.has(k)) this.#outbound.delete(k);
    if (changed) this.#o.onChange();
  }

  static listenerKey(w: InboundWant): string {
    return `${w.exit}|${w.protocol}/${w.tunnel}`;
  }

  /** Make the inbound listeners exactly `wants`; resolves with the port of each
   * (by listener key). A listener that fails is logged and left out. */
  async setInbound(wants: readonly InboundWant[]): Promise<Map<string, number>> {
    const want = new Map(wants.map((w) => [McsEnds.listenerKey(w), w]));
    let changed = false;
    for (const [k, s] of [...this.#inbound]) {
      if (want.has(k)) continue;
      s.listener.close();
      this.#inbound.delete(k);
      changed = true;
    }
    for (const [k, w] of want) {
      if (this.#inbound.has(k)) continue;
      const id = { protocol: w.protocol, name: w.tunnel };
      const stats = newEndStats();
      const tried = this.#lastPort.get(k);
      try {
        const { listener, port } = await this.#listen(id, w.exit, stats, tried);
        this.#inbound.set(k, { end: { id, key: tunnelKey(id), listen: [{ host: this.#o.listenHost, port }], exits: [w.exit] }, stats, listener, port });
        this.#lastPort.set(k, port);
        changed = true;
      } catch (err) {
        this.#o.log.error({ tunnel: tunnelKey(id), exit: w.exit, reason: (err as Error).message }, 'mcs listener failed');
      }
    }
    if (changed) {
      this.#o.onChange();
      if (this.#o.portsFile) {
        const keep = Object.fromEntries([...this.#inbound].map(([k, s]) => [k, s.port]));
        try {
          writeFileAtomic(this.#o.portsFile, `${JSON.stringify(keep, null, 2)}\n`, 0o600);
        } catch (err) {
          this.#o.log.warn({ file: this.#o.portsFile, reason: (err as Error).message }, 'mcs listener ports not saved');
        }
      }
    }
    return new Map([...this.#inbound].map(([k, s]) => [k, s.port]));
  }

  async #listen(id: InboundEnd['id'], exit: string, stats: EndStats, preferred: number | undefined): Promise<{ listener: Server | UdpListener; port: number }> {
    const host = this.#o.listenHost;
    for (const port of preferred ? [preferred, 0] : [0]) {
      const end: InboundEnd = { id, key: tunnelKey(id), listen: [], exits: [exit] };
      try {
        if (id.protocol === 'tcp') {
          const server = await listenTcp(end, { host, port }, this.#o.client, stats, this.#o.log);
          return { listener: server, port: (server.address() as AddressInfo).port };
        }
        const p = port || (await freeUdpPort(host));
        return { listener: await listenUdp(end, { host, port: p }, this.#o.client, stats, this.#o.log, this.#o.udpIdleMs), port: p };
      } catch (err) {
        if (port === 0) throw err;
      }
    }
    throw new ZtmError(ErrorCodes.LISTEN_FAILED, `cannot listen for ${tunnelKey(id)}`);
  }

  outbound(): OutboundEnds['ends'] {
    return [...this.#outbound.values()].map(({ end }) => ({ protocol: end.id.protocol, name: end.id.name, allowEndpoints: [], allowUsers: [] }));
  }

  inbound(): InboundEnds['ends'] {
    return [...this.#inbound.values()].map(({ end, port }) => ({
      protocol: end.id.protocol,
      name: end.id.name,
      listen: [formatHostPort({ host: this.#o.listenHost, port })],
      exits: end.exits,
    }));
  }

  serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean {
    const id = tunnelFromPath(headers[':path']);
    if (!id) return false;
    const s = this.#outbound.get(tunnelKey(id));
    if (!s) return false;
    if (s.end.targets.length === 0) {
      respondError(stream, new ZtmError(ErrorCodes.TARGET_UNREACHABLE, `${s.end.key}: the exported Service has no ready endpoint`));
      return true;
    }
    const rr = s.rr++;
    if (id.protocol === 'tcp') serveTcpExit(s.end, stream, headers, rr, s.stats, this.#o.log);
    else serveUdpExit(s.end, stream, headers, rr, s.stats, this.#o.log, this.#o.udpIdleMs);
    return true;
  }

  views(): TunnelView[] {
    return [
      ...[...this.#inbound.values()].map((s) => ({
        direction: 'inbound' as const,
        tunnel: s.end.key,
        listen: [formatHostPort({ host: this.#o.listenHost, port: s.port })],
        exits: s.end.exits,
        state: 'listening (mcs import)',
        stats: s.stats,
      })),
      ...[...this.#outbound.values()].map((s) => ({
        direction: 'outbound' as const,
        tunnel: s.end.key,
        targets: s.end.targets.map(formatHostPort),
        allowEndpoints: [],
        allowUsers: [],
        state: s.end.targets.length ? 'ready (mcs export)' : 'no ready endpoint (mcs export)',
        stats: s.stats,
      })),
    ];
  }

  openStreams(): number {
    let n = 0;
    for (const s of this.#inbound.values()) n += s.stats.open;
    for (const s of this.#outbound.values()) n += s.stats.open;
    return n;
  }

  /** Stats of the outbound end of a tunnel (status view). */
  outboundStats(tunnel: string, protocol: 'tcp' | 'udp'): EndStats | undefined {
    return this.#outbound.get(`${protocol}/${tunnel}`)?.stats;
  }

  close(): void {
    for (const s of this.#inbound.values()) s.listener.close();
    this.#inbound.clear();
    this.#outbound.clear();
  }
}

/** A UDP port free right now on `host` (bound and released). */
function freeUdpPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    s.once('error', reject);
    s.bind(0, host, () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}
