/**
 * The live sessions, one per endpoint, and the one sweep timer that drives
 * keepalive for all of them (a timer per session cost twice the idle CPU).
 */
import { ErrorCodes, type OutboundEnds, ZtmError } from '@ztm/proto';
import type { Logger } from '../log.js';
import type { Registry } from '../registry/registry.js';
import type { AgentSession } from './agent-session.js';

/** Bytes from an agent within half an interval that make it busy (heartbeat
 * PINGs): far above its keepalive PING and control messages. */
const BUSY_BYTES = 16 * 1024;

export interface SessionManagerOptions {
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  registry: Registry;
  log: Logger;
  now?: () => number;
}

export class SessionManager {
  readonly #byEndpoint = new Map<string, AgentSession>();
  /** Tunnel key → sessions holding an outbound end of it: exit lookup is
   * O(exits of that tunnel), not O(sessions). */
  readonly #exits = new Map<string, Set<AgentSession>>();
  readonly #rr = new Map<string, number>();
  readonly #opts: SessionManagerOptions;
  readonly #timer: NodeJS.Timeout;
  /** Keepalive PINGs the hub sent since start (metrics): probes of silent
   * agents on main sessions, and on reverse sessions. */
  readonly pings = { sent: 0, reverse: 0 };
  readonly #countReversePing = () => {
    this.pings.reverse++;
  };

  /** Sessions in the order of their next keepalive visit. Every visit
   * re-queues a session with the same offset (half an interval), so a FIFO
   * stays sorted and a sweep touches only the sessions that are due: visiting
   * all of them every second was the largest part of an idle hub's CPU at
   * 5,000 agents (docs/performance.md). */
  readonly #due: AgentSession[] = [];
  #dueHead = 0;
  readonly #step: number;

  constructor(opts: SessionManagerOptions) {
    this.#opts = opts;
    this.#step = Math.max(50, Math.floor(opts.keepaliveIntervalMs / 2));
    const sweepMs = Math.max(100, Math.min(1000, Math.floor(opts.keepaliveIntervalMs / 2)));
    this.#timer = setInterval(() => this.#sweep(), sweepMs);
    this.#timer.unref();
  }

  get size(): number {
    return this.#byEndpoint.size;
  }

  get(endpoint: string): AgentSession | undefined {
    return this.#byEndpoint.get(endpoint);
  }

  all(): IterableIterator<AgentSession> {
    return this.#byEndpoint.values();
  }

  /** Register an online session. A newer session of the same endpoint replaces
   * the older one, which drains gracefully (renewal, reconnect after a drop
   * the hub has not noticed yet). */
  add(session: AgentSession): void {
    const old = this.#byEndpoint.get(session.endpoint);
    this.#byEndpoint.set(session.endpoint, session);
    session.lastAckAt = this.#now();
    session.keepaliveDue = session.lastAckAt + this.#step;
    this.#due.push(session);
    // No 'ping' listener: the agent's PINGs are answered inside nghttp2, and
    // the sweep sees them as bytes read (a listener is a JS call per PING).
    this.#opts.registry.touch(session.endpoint, this.#now(), session.address);
    session.once('close', () => {
      this.setOutbound(session, []);
      if (this.#byEndpoint.get(session.endpoint) === session) {
        this.#byEndpoint.delete(session.endpoint);
        this.#opts.registry.touch(session.endpoint, this.#now(), null);
      }
    });
    if (old && old !== session) old.close('replaced by a newer session');
  }

  /** Replace a session's outbound ends (from its `outbound-ends` message). */
  setOutbound(session: AgentSession, ends: OutboundEnds['ends']): void {
    for (const key of session.outbound.keys()) {
      const set = this.#exits.get(key);
      set?.delete(session);
      if (set?.size === 0) this.#exits.delete(key);
    }
    session.outbound.clear();
    if (session.closed) return;
    for (const e of ends) {
      const key = `${e.protocol}/${e.name}`;
      session.outbound.set(key, { allowEndpoints: new Set(e.allowEndpoints), allowUsers: new Set(e.allowUsers) });
      let set = this.#exits.get(key);
      if (!set) {
        set = new Set();
        this.#exits.set(key, set);
      }
      set.add(session);
    }
  }

  /** Exits for a relayed connection from `source`: online sessions holding an
   * outbound end of `key` whose allow-lists accept the source's certificate
   * identity. Pinned exits restrict the choice and keep their order; otherwise
   * round-robin. `refused` counts holders whose allow-list said no. */
  exitsFor(key: string, source: AgentSession, pinned: readonly string[]): { exits: AgentSession[]; refused: number } {
    let holders: AgentSession[];
    if (pinned.length > 0) {
      holders = pinned.map((p) => this.#byEndpoint.get(p)).filter((s): s is AgentSession => !!s && s.outbound.has(key));
    } else {
      holders = [...(this.#exits.get(key) ?? [])];
      const start = this.#rr.get(key) ?? 0;
      this.#rr.set(key, start + 1);
      if (holders.length > 1) {
        const k = start % holders.length;
        holders = [...holders.slice(k), ...holders.slice(0, k)];
      }
    }
    const exits = holders.filter((s) => {
      if (s.closed || s.state !== 'online') return false;
      const p = s.outbound.get(key);
      if (!p) return false;
      return (p.allowEndpoints.size === 0 || p.allowEndpoints.has(source.endpoint)) && (p.allowUsers.size === 0 || p.allowUsers.has(source.user));
    });
    return { exits, refused: holders.length - exits.length };
  }

  /** Revoke: tell the agent why, then drop the session at once. */
  revoke(endpoint: string, reason: string): boolean {
    const s = this.#byEndpoint.get(endpoint);
    if (!s) return false;
    s.sendControl({ type: 'revoked', reason });
    // Let the frame leave before the socket goes.
    setImmediate(() => s.destroy(new ZtmError(ErrorCodes.REVOKED, reason)));
    return true;
  }

  #now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  #sweep(): void {
    const now = this.#now();
    const { keepaliveIntervalMs: interval, keepaliveTimeoutMs: timeout } = this.#opts;
    const step = this.#step;
    // The agent PINGs every interval (proto limits.ts); PING it ourselves
    // only when it has been silent for two, or half an interval before the
    // timeout if that comes first; the same for the reverse sessions, which
    // agents PING as they do their main session.
    const probeAfter = Math.min(2 * interval, timeout - step);
    const q = this.#due;
    const end = q.length; // sessions re-queued by this sweep wait for the next one
    let i = this.#dueHead;
    for (; i < end; i++) {
      const s = q[i] as AgentSession;
      if (s.keepaliveDue > now) break;
      if (s.closed || this.#byEndpoint.get(s.endpoint) !== s) continue;
      const fresh = s.readSinceLastVisit();
      if (s.tookFromUsSinceLastVisit() || fresh > 0) s.lastHeardAt = now;
      // Alive: any bytes from it (its PINGs among them), an answer to ours, or
      // its taking a good deal of our data (agent-session.ts).
      const silent = now - Math.max(s.lastAckAt, s.lastHeardAt);
      if (silent > timeout) {
        s.destroy(new ZtmError(ErrorCodes.TIMEOUT, `keepalive timeout (${timeout} ms)`));
        continue;
      }
      if (s.identity.certNotAfter <= now) {
        s.close('certificate expired');
        continue;
      }
      s.sweepReverse(now, probeAfter, timeout, this.#countReversePing);
      // A silent agent gets a PING; its answer ends the silence. (An agent
      // that sends anything is not silent, so no answer of its queues behind
      // its data: one PING at a time is enough.)
      if (silent >= probeAfter && !s.pingOutstanding) {
        s.pingOutstanding = true;
        this.pings.sent++;
        try {
          s.main.ping((err) => {
            s.pingOutstanding = false;
            if (!err) s.lastAckAt = this.#now();
          });
        } catch {
          s.pingOutstanding = false;
        }
      }
      // An agent sending us data gets a PING every interval as well. Its own
      // PINGs, and so our answers, queue behind its uploads (on a slow uplink,
      // seconds of them in its socket buffers), and our WINDOW_UPDATEs come
      // only every half window it sends: without these it could hear nothing
      // from us for longer than its timeout. Idle agents (a PING an interval)
      // are not busy and cost nothing more.
      else if (fresh >= BUSY_BYTES && s.beat(now, interval)) this.pings.sent++;
      s.keepaliveDue = now + step;
      q.push(s);
    }
    this.#dueHead = i;
    if (i > 1024 && i * 2 > q.length) {
      q.splice(0, i);
      this.#dueHead = 0;
    }
  }

  close(reason: string): void {
    clearInterval(this.#timer);
    for (const s of [...this.#byEndpoint.values()]) s.close(reason);
  }

  destroyAll(): void {
    clearInterval(this.#timer);
    for (const s of [...this.#byEndpoint.values()]) s.destroy();
  }
}
