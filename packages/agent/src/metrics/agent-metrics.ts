/**
 * The agent's Prometheus metrics (prom-client, one registry per agent), read
 * from live state at scrape time: nothing is added to the data path.
 */
import { backloggedDirections, dataHighWaterMark, narrowedSessions } from '@ztm/proto';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { FileSync } from '../files/file-sync.js';
import type { HubClient } from '../session/hub-client.js';
import type { TunnelManager } from '../tunnel/tunnel-manager.js';

export class AgentMetrics {
  readonly registry = new Registry();
  readonly reconnects: Counter;

  constructor(client: HubClient, tunnels: TunnelManager, files?: FileSync) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'ztm_agent_process_' });
    this.reconnects = new Counter({ name: 'ztm_agent_hub_sessions_lost_total', help: 'Hub sessions lost (each is followed by a re-dial)', registers });
    new Gauge({
      name: 'ztm_agent_hub_online',
      help: '1 while a session with the hub is up',
      registers,
      collect() {
        this.set(client.state === 'online' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'ztm_agent_hub_rtt_seconds',
      help: 'Last HTTP/2 PING round trip to the hub',
      registers,
      collect() {
        const rtt = client.snapshot().rttMs;
        if (rtt !== null) this.set(rtt / 1000);
      },
    });
    new Counter({
      name: 'ztm_agent_hub_read_resumes_total',
      help: 'Times the agent started reading its hub connections again while a write to the hub waited (bulk both ways over full TCP buffers)',
      registers,
      collect() {
        this.reset();
        this.inc(client.snapshot().readResumes);
      },
    });
    new Gauge({
      name: 'ztm_agent_relay_backlogged_directions',
      help: 'Directions of tunnelled connections waiting on a full destination now; past 8 they share one buffer budget',
      registers,
      collect() {
        this.set(backloggedDirections());
      },
    });
    new Gauge({
      name: 'ztm_agent_relay_buffer_mark_bytes',
      help: 'High-water mark a backed-up connection gets now (1 MiB, less when many back up)',
      registers,
      collect() {
        this.set(dataHighWaterMark());
      },
    });
    new Gauge({
      name: 'ztm_agent_relay_narrowed_sessions',
      help: 'HTTP/2 sessions that asked their peer for a smaller stream window because more than 16 of their streams are backed up',
      registers,
      collect() {
        this.set(narrowedSessions());
      },
    });
    new Gauge({
      name: 'ztm_agent_tunnel_streams_open',
      help: 'Tunnelled connections (UDP: flows) open now',
      labelNames: ['tunnel', 'direction'],
      registers,
      collect() {
        for (const v of tunnels.list()) this.set({ tunnel: v.tunnel, direction: v.direction }, v.stats.open);
      },
    });
    new Counter({
      name: 'ztm_agent_tunnel_streams_total',
      help: 'Tunnelled connections finished, by how they ended',
      labelNames: ['tunnel', 'direction', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const v of tunnels.list())
          for (const [reason, n] of Object.entries(v.stats.closes)) this.inc({ tunnel: v.tunnel, direction: v.direction, reason }, n);
      },
    });
    new Counter({
      name: 'ztm_agent_tunnel_failures_total',
      help: 'Tunnelled connections refused or failed, by error code',
      labelNames: ['tunnel', 'direction', 'code'],
      registers,
      collect() {
        this.reset();
        for (const v of tunnels.list())
          for (const [code, n] of Object.entries(v.stats.failures)) this.inc({ tunnel: v.tunnel, direction: v.direction, code }, n);
      },
    });
    new Counter({
      name: 'ztm_agent_tunnel_bytes_total',
      help: 'Bytes carried by finished tunnelled connections (in: from the local side)',
      labelNames: ['tunnel', 'direction', 'flow'],
      registers,
      collect() {
        this.reset();
        for (const v of tunnels.list()) {
          this.inc({ tunnel: v.tunnel, direction: v.direction, flow: 'in' }, v.stats.bytesIn);
          this.inc({ tunnel: v.tunnel, direction: v.direction, flow: 'out' }, v.stats.bytesOut);
        }
      },
    });
    new Counter({
      name: 'ztm_agent_udp_dropped_total',
      help: 'UDP datagrams dropped (backlog full, flow not ready, no session)',
      labelNames: ['tunnel', 'direction'],
      registers,
      collect() {
        this.reset();
        for (const v of tunnels.list()) if (v.tunnel.startsWith('udp/')) this.inc({ tunnel: v.tunnel, direction: v.direction }, v.stats.dropped);
      },
    });
    new Gauge({
      name: 'ztm_agent_files',
      help: 'Mesh files in the catalogue by local state (present, fetching, pending, retrying)',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const f of files?.list() ?? []) this.inc({ state: f.local.split(':')[0] ?? f.local });
      },
    });
    new Counter({
      name: 'ztm_agent_file_verify_failures_total',
      help: 'Received file contents that did not match their SHA-256 and were discarded',
      registers,
      collect() {
        this.reset();
        this.inc(files?.verifyFailures ?? 0);
      },
    });
    client.on('offline', () => this.reconnects.inc());
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
