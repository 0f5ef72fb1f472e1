/** Counters of the hub's relay, per tunnel: for status views and metrics. */
export interface TunnelCounters {
  open: number;
  total: number;
  bytesIn: number;
  bytesOut: number;
  closes: Record<string, number>;
  refusals: Record<string, number>;
}

export class RelayStats {
  readonly byTunnel = new Map<string, TunnelCounters>();

  #get(key: string): TunnelCounters {
    let c = this.byTunnel.get(key);
    if (!c) {
      c = { open: 0, total: 0, bytesIn: 0, bytesOut: 0, closes: {}, refusals: {} };
      this.byTunnel.set(key, c);
    }
    return c;
  }

  /** A stream starts; returns the counters its splice adds bytes to. */
  opened(key: string): TunnelCounters {
    const c = this.#get(key);
    c.open++;
    c.total++;
    return c;
  }

  closed(key: string, reason: string): void {
    const c = this.#get(key);
    c.open--;
    c.closes[reason] = (c.closes[reason] ?? 0) + 1;
  }

  /** Relayed streams open now, all tunnels. */
  openStreams(): number {
    let n = 0;
    for (const c of this.byTunnel.values()) n += c.open;
    return n;
  }

  /** Bytes relayed so far, both directions, all tunnels. */
  bytesTotal(): number {
    let n = 0;
    for (const c of this.byTunnel.values()) n += c.bytesIn + c.bytesOut;
    return n;
  }

  refused(key: string, code: string): void {
    const c = this.#get(key);
    c.refusals[code] = (c.refusals[code] ?? 0) + 1;
  }

  snapshot(): Record<string, TunnelCounters> {
    return Object.fromEntries(this.byTunnel);
  }
}
