/** Counters of one tunnel end, for status views, logs and metrics. */
export interface EndStats {
  open: number;
  total: number;
  bytesIn: number;
  bytesOut: number;
  closes: Record<string, number>;
  failures: Record<string, number>;
  /** UDP only: datagrams dropped (backlog full, oversized, flow not ready). */
  dropped: number;
}

export const newEndStats = (): EndStats => ({ open: 0, total: 0, bytesIn: 0, bytesOut: 0, closes: {}, failures: {}, dropped: 0 });

export function countFailure(s: EndStats, code: string): void {
  s.failures[code] = (s.failures[code] ?? 0) + 1;
}

/** Bytes are counted live (splice adds to the stats as data moves); this
 * records the end. */
export function countClose(s: EndStats, reason: string): void {
  s.open--;
  s.closes[reason] = (s.closes[reason] ?? 0) + 1;
}
