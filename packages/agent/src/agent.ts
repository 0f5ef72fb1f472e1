/**
 * The agent's composition root: hub session, reverse-stream routes, renewal,
 * local admin API.
 */
import type { Server } from 'node:http';
import { join } from 'node:path';
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { pipeline } from 'node:stream';
import {
  AdminPaths,
  type AdminRoutes,
  type EndpointInfo,
  ErrorCodes,
  Paths,
  ZtmError,
  errorHttpStatus,
  startAdminServer,
  startMetricsServer,
  Headers,
  readJsonBody,
  respondJson,
  respondError,
  installLeanAsyncResourceBind,
} from '@ztm/proto';
import type { AgentConfig } from './config/agent-config.js';
import { type AgentIdentity, certificateTimes } from './identity/identity-store.js';
import { CertificateRenewer } from './identity/renewal.js';
import type { Logger } from './log.js';
import { requestJson } from './session/h2-json.js';
import { HubClient } from './session/hub-client.js';
import { FileSync } from './files/file-sync.js';
import { TunnelManager } from './tunnel/tunnel-manager.js';
import type { KubernetesMode } from './k8s/kubernetes-mode.js';
import { AgentMetrics } from './metrics/agent-metrics.js';

export interface AgentDeps {
  identity: AgentIdentity;
  logger: Logger;
  /** Where renewed certificates are saved; none in library use. */
  dataDir?: string;
  adminSocket?: string;
}

export interface Agent {
  readonly client: HubClient;
  readonly tunnels: TunnelManager;
  start(): Promise<void>;
  /** Rejects when the hub refuses this agent for good (revoked, unknown). */
  readonly done: Promise<void>;
  status(): Record<string, unknown>;
  endpoints(): Promise<EndpointInfo[]>;
  close(): Promise<void>;
}

export function createAgent(config: AgentConfig, deps: AgentDeps): Agent {
  // Every tunnelled connection opens HTTP/2 streams: drop Node 20's
  // per-stream deprecation wrappers (proto node-compat.ts).
  installLeanAsyncResourceBind();
  const base = deps.logger.child({ endpoint: deps.identity.endpoint });
  const log = base.child({ component: 'agent' });
  const identity = config.hubs ? { ...deps.identity, hubs: [...config.hubs] } : deps.identity;
  let admin: Server | undefined;
  /** Kubernetes mode (multicluster services): loaded only when configured. */
  let kube: KubernetesMode | undefined;
  let resolveDone!: () => void;
  let rejectDone!: (err: ZtmError) => void;
  const done = new Promise<void>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  done.catch(() => {});

  const client = new HubClient({
    identity,
    log: base.child({ component: 'session' }),
    labels: config.labels,
    keepaliveIntervalMs: config.keepaliveInterval,
    keepaliveTimeoutMs: config.keepaliveTimeout,
    reconnectBaseMs: config.reconnectBase,
    reconnectMaxMs: config.reconnectMax,
    onReverseStream,
  });
  const tunnels = new TunnelManager({
    client,
    log: base.child({ component: 'tunnel' }),
    dataDir: deps.dataDir,
    declared: config.tunnels,
    udpIdleMs: config.udpIdleTimeout,
  });
  client.on('online', () => tunnels.announce());
  const filesDir = config.filesDir ?? (deps.dataDir ? join(deps.dataDir, 'files') : undefined);
  const files = filesDir
    ? new FileSync({ client, filesDir, indexFile: deps.dataDir ? join(deps.dataDir, 'files-index.json') : undefined, log: base.child({ component: 'files' }) })
    : undefined;
  const metrics = new AgentMetrics(client, tunnels, files);
  let metricsServer: Server | undefined;
  const renewer = new CertificateRenewer(identity, client, deps.dataDir, base.child({ component: 'renewal' }));
  client.on('fatal', (err) => rejectDone(err));

  /** Streams the hub opens to us over the reverse session. */
  function onReverseStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    const path = headers[':path'];
    if (headers[':method'] === 'POST' && tunnels.serve(stream, headers)) return;
    if (headers[':method'] === 'POST' && path === '/v1/manage/tunnels') {
      // The hub authorised the caller (same user or admin) and stamped it.
      const by = String(headers[Headers.sourceEndpoint] ?? '?');
      readJsonBody(stream)
        .then(async (body) => {
          const b = (body ?? {}) as Record<string, unknown>;
          log.info({ by, action: b.action, tunnel: b.tunnel }, 'tunnel managed remotely');
          return applyTunnelAction(b);
        })
        .then(
          (out) => respondJson(stream, 200, out),
          (err) => respondError(stream, err),
        );
      return;
    }
    if (headers[':method'] === 'POST' && path === Paths.ping) {
      stream.respond({ ':status': 200 });
      pipeline(stream, stream, () => {});
      return;
    }
    const e = new ZtmError(ErrorCodes.NOT_FOUND, `no route ${headers[':method']} ${path}`);
    stream.respond({ ':status': errorHttpStatus[e.code], 'content-type': 'application/json' });
    stream.end(JSON.stringify(e.toWire()));
  }

  /** open / close / list, from the local CLI or (authorised by the hub) a remote manager. */
  function applyTunnelAction(b: Record<string, unknown>): unknown {
    if (b.action === 'list') return tunnels.list();
    if (b.action === 'open' && b.direction === 'inbound') return tunnels.openInbound(b);
    if (b.action === 'open' && b.direction === 'outbound') return tunnels.openOutbound(b);
    if (b.action === 'close' && (b.direction === 'inbound' || b.direction === 'outbound')) return tunnels.close(b.direction, String(b.tunnel ?? ''));
    throw new ZtmError(ErrorCodes.BAD_REQUEST, 'action must be open, close or list, with direction inbound or outbound');
  }

  function filesOrThrow(): FileSync {
    if (!files) throw new ZtmError(ErrorCodes.CONFIG, 'file sharing needs a data directory or filesDir');
    return files;
  }

  function status(): Record<string, unknown> {
    const cert = certificateTimes(renewer.identity.certPem);
    return {
      endpoint: identity.endpoint,
      mesh: identity.mesh,
      hubs: identity.hubs,
      hub: client.snapshot(),
      certificate: {
        serial: cert.serial,
        expires: new Date(cert.notAfter).toISOString(),
        renewAt: new Date(CertificateRenewer.dueAt(renewer.identity.certPem)).toISOString(),
      },
      tunnels: tunnels.list(),
      ...(kube ? { kubernetes: kube.status() } : {}),
      pid: process.pid,
      uptimeSec: Math.round(process.uptime()),
    };
  }

  async function endpoints(): Promise<EndpointInfo[]> {
    const s = client.session;
    if (!s || client.state !== 'online') throw new ZtmError(ErrorCodes.OFFLINE, `not connected to the hub (${client.snapshot().lastError ?? client.state})`);
    return requestJson<EndpointInfo[]>(s, 'GET', Paths.endpoints);
  }

  const adminRoutes: AdminRoutes = {
    [`GET ${AdminPaths.status}`]: () => status(),
    [`GET ${AdminPaths.endpoints}`]: () => endpoints(),
    [`GET ${AdminPaths.tunnels}`]: () => tunnels.list(),
    [`GET ${AdminPaths.files}`]: () => filesOrThrow().list(),
    [`POST ${AdminPaths.filePublish}`]: (body) => {
      const b = (body ?? {}) as { path?: unknown; name?: unknown };
      if (typeof b.path !== 'string' || typeof b.name !== 'string') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'path and name are required');
      return filesOrThrow().publish(b.path, b.name);
    },
    [`POST ${AdminPaths.fileUnpublish}`]: (body) => {
      const b = (body ?? {}) as { name?: unknown };
      if (typeof b.name !== 'string') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'name is required');
      return filesOrThrow().unpublish(b.name);
    },
    [`POST ${AdminPaths.tunnelRemote}`]: (body) => {
      const b = (body ?? {}) as { endpoint?: unknown };
      if (typeof b.endpoint !== 'string') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'endpoint is required');
      const s = client.session;
      if (!s || client.state !== 'online') throw new ZtmError(ErrorCodes.OFFLINE, 'not connected to the hub');
      return requestJson(s, 'POST', `/v1/manage/${encodeURIComponent(b.endpoint)}/tunnels`, body);
    },
    [`POST ${AdminPaths.tunnelOpen}`]: (body) => {
      const b = (body ?? {}) as Record<string, unknown>;
      if (b.direction === 'inbound') return tunnels.openInbound(b);
      if (b.direction === 'outbound') return tunnels.openOutbound(b);
      throw new ZtmError(ErrorCodes.BAD_REQUEST, 'direction must be inbound or outbound');
    },
    [`POST ${AdminPaths.tunnelClose}`]: (body) => {
      const b = (body ?? {}) as { direction?: unknown; tunnel?: unknown };
      if (b.direction !== 'inbound' && b.direction !== 'outbound') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'direction must be inbound or outbound');
      return tunnels.close(b.direction, String(b.tunnel ?? ''));
    },
  };

  return {
    client,
    tunnels,
    done,
    status,
    endpoints,
    async start() {
      if (deps.adminSocket) admin = await startAdminServer(deps.adminSocket, adminRoutes, log);
      if (config.metrics) {
        metricsServer = await startMetricsServer(config.metrics, {
          metrics: () => metrics.render(),
          ready: () => (client.state === 'online' ? { ok: true, detail: 'ready: hub session online' } : { ok: false, detail: `hub session ${client.state}` }),
        });
      }
      await tunnels.start();
      await files?.start();
      client.start();
      renewer.start();
      // After the hub session is on its way: loading the Kubernetes client takes a moment.
      if (config.kubeconfig || config.kubernetesInCluster) {
        const { startKubernetesMode } = await import('./k8s/kubernetes-mode.js');
        kube = await startKubernetesMode({
          kubeconfig: config.kubeconfig,
          clusterId: config.clusterId,
          certPem: identity.certPem,
          mesh: identity.mesh,
          advertiseAddress: config.advertiseAddress,
          client,
          tunnels,
          log: base.child({ component: 'k8s' }),
          udpIdleMs: config.udpIdleTimeout,
          dataDir: deps.dataDir,
        });
      }
    },
    async close() {
      renewer.stop();
      await kube?.close();
      admin?.close();
      // Drain: no new local connections; live ones get up to shutdownGrace.
      tunnels.stopListening();
      files?.stop();
      const deadline = Date.now() + config.shutdownGrace;
      while (tunnels.openStreams() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (tunnels.openStreams() > 0) log.warn({ streams: tunnels.openStreams() }, 'grace period over; dropping connections still open');
      metricsServer?.close();
      await client.stop();
      resolveDone();
    },
  };
}
