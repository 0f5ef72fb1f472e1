/**
 * The hub's Prometheus metrics (prom-client, one registry per hub). Event
 * counters are incremented where things happen (handshakes, enrolments,
 * control messages: never per data chunk); gauges and relay totals are read
 * from the live state at scrape time.
 */
import { backloggedDirections, dataHighWaterMark, narrowedSessions } from '@ztm/proto';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { RelayStats } from '../relay/relay-stats.js';
import type { SessionManager } from '../session/session-manager.js';

export class HubMetrics {
  readonly registry = new Registry();
  readonly handshakeFailures: Counter<'reason'>;
  readonly enrolments: Counter<'result'>;
  readonly sessionsRefused: Counter<'reason'>;
  readonly controlMessages: Counter<'type'>;
  readonly sessionsClosed: Counter<'reason'>;

  constructor(sessions: SessionManager, relay: RelayStats, unauthenticated: () => number) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'ztm_hub_process_' });
    this.handshakeFailures = new Counter({
      name: 'ztm_hub_handshake_failures_total',
      help: 'TLS handshakes that failed, by reason',
      labelNames: ['reason'],
      registers,
    });
    this.enrolments = new Counter({
      name: 'ztm_hub_enrolments_total',
      help: 'Enrolment attempts by result (ok or error code)',
      labelNames: ['result'],
      registers,
    });
    this.sessionsRefused = new Counter({
      name: 'ztm_hub_sessions_refused_total',
      help: 'Authenticated TLS sessions refused, by error code',
      labelNames: ['reason'],
      registers,
    });
    this.controlMessages = new Counter({
      name: 'ztm_hub_control_messages_total',
      help: 'Control messages received from agents, by type',
      labelNames: ['type'],
      registers,
    });
    this.sessionsClosed = new Counter({ name: 'ztm_hub_sessions_closed_total', help: 'Agent sessions closed, by cause', labelNames: ['reason'], registers });
    new Gauge({
      name: 'ztm_hub_sessions',
      help: 'Agent sessions by state',
      labelNames: ['state'],
      registers,
      collect() {
        let online = 0;
        let reverse = 0;
        for (const s of sessions.all()) {
          if (s.state === 'online') online++;
          if (s.hasReverse) reverse++;
        }
        this.set({ state: 'online' }, online);
        this.set({ state: 'with_reverse' }, reverse);
        this.set({ state: 'unauthenticated' }, unauthenticated());
      },
    });
    new Gauge({
      name: 'ztm_hub_endpoints_online',
      help: 'Endpoints with a live session',
      registers,
      collect() {
        this.set(sessions.size);
      },
    });
    new Gauge({
      name: 'ztm_hub_relay_backlogged_directions',
      help: 'Directions of relayed streams waiting on a full destination now; past 8 they share one buffer budget',
      registers,
      collect() {
        this.set(backloggedDirections());
      },
    });
    new Gauge({
      name: 'ztm_hub_relay_buffer_mark_bytes',
      help: 'High-water mark a backed-up stream gets now (1 MiB, less when many back up)',
      registers,
      collect() {
        this.set(dataHighWaterMark());
      },
    });
    new Gauge({
      name: 'ztm_hub_relay_narrowed_sessions',
      help: 'HTTP/2 sessions that asked their peer for a smaller stream window because more than 16 of their streams are backed up',
      registers,
      collect() {
        this.set(narrowedSessions());
      },
    });
    new Gauge({
      name: 'ztm_hub_streams_open',
      help: 'Relayed streams open now, by tunnel',
      labelNames: ['tunnel'],
      registers,
      collect() {
        for (const [tunnel, c] of relay.byTunnel) this.set({ tunnel }, c.open);
      },
    });
    new Counter({
      name: 'ztm_hub_keepalive_pings_total',
      help: 'HTTP/2 PINGs the hub sent: probes of agents silent for two keepalive intervals on main sessions (agents PING the hub, which answers them natively), and on reverse sessions',
      labelNames: ['direction'],
      registers,
      collect() {
        this.reset();
        this.inc({ direction: 'sent' }, sessions.pings.sent);
        this.inc({ direction: 'sent_reverse' }, sessions.pings.reverse);
      },
    });
    new Counter({
      name: 'ztm_hub_streams_total',
      help: 'Relayed streams finished, by tunnel and how they ended (closed, reset)',
      labelNames: ['tunnel', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const [tunnel, c] of relay.byTunnel) for (const [reason, n] of Object.entries(c.closes)) this.inc({ tunnel, reason }, n);
      },
    });
    new Counter({
      name: 'ztm_hub_relay_refusals_total',
      help: 'Relayed connections refused, by tunnel and error code',
      labelNames: ['tunnel', 'code'],
      registers,
      collect() {
        this.reset();
        for (const [tunnel, c] of relay.byTunnel) for (const [code, n] of Object.entries(c.refusals)) this.inc({ tunnel, code }, n);
      },
    });
    new Counter({
      name: 'ztm_hub_relay_bytes_total',
      help: 'Bytes relayed by finished streams, by tunnel and direction (in: entrance to exit)',
      labelNames: ['tunnel', 'direction'],
      registers,
      collect() {
        this.reset();
        for (const [tunnel, c] of relay.byTunnel) {
          this.inc({ tunnel, direction: 'in' }, c.bytesIn);
          this.inc({ tunnel, direction: 'out' }, c.bytesOut);
        }
      },
    });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
