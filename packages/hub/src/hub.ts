/**
 * The hub's composition root: TLS listener shared by the main session (ALPN h2)
 * and the reverse session (ALPN ztm-rev/1), enrolment, sessions, admin API.
 */
import { constants } from 'node:crypto';
import type { Server as HttpServer } from 'node:http';
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import {
  ALPN_REVERSE,
  ALPN_SESSION,
  AdminPaths,
  type AdminRoutes,
  startAdminServer,
  startMetricsServer,
  ENROL_SESSION_TIMEOUT_MS,
  EnrolRequest,
  ErrorCodes,
  HTTP2_SESSION_WINDOW_BYTES,
  Headers,
  Paths,
  SUPPORTED_VERSIONS,
  ZtmError,
  certChainPem,
  http2SessionOptions,
  isValidName,
  parseDurationMs,
  parseMessage,
  readStreamJson,
  respondError,
  respondJson,
  installLeanAsyncResourceBind,
} from '@ztm/proto';
import { type OperationsContext, createPermit, listEndpoints, revokeEndpoint } from './admin/operations.js';
import type { CertificateAuthority, KeyAndCert } from './ca/certificate-authority.js';
import type { HubConfig } from './config/hub-config.js';
import { type EnrolDeps, enrol } from './enrol/enrolment.js';
import type { Logger } from './log.js';
import type { Registry } from './registry/registry.js';
import { ContentStore } from './files/content-store.js';
import { FileService } from './files/file-service.js';
import { HubMetrics } from './metrics/hub-metrics.js';
import { FileCatalogue } from './registry/file-catalogue.js';
import { McsHub } from './mcs/mcs-hub.js';
import { RelayStats } from './relay/relay-stats.js';
import { AgentSession } from './session/agent-session.js';
import { handleMainStream, type MainRouteDeps } from './session/main-routes.js';
import { identifyPeer } from './session/peer-identity.js';
import { SessionManager } from './session/session-manager.js';

export interface HubDeps {
  ca: CertificateAuthority;
  serverCert: KeyAndCert;
  registry: Registry;
  names: readonly string[];
  logger: Logger;
  /** Directory of the file content store; none: file sharing disabled. */
  contentDir?: string;
  /** Unix socket path for the admin API; none in library use. */
  adminSocket?: string;
}

export interface Hub {
  readonly mesh: string;
  readonly sessions: SessionManager;
  readonly ops: OperationsContext;
  readonly metrics: HubMetrics;
  start(): Promise<AddressInfo>;
  address(): AddressInfo | null;
  /** Ping an endpoint over its reverse session; resolves with the round trip. */
  ping(endpoint: string): Promise<{ endpoint: string; rttMs: number }>;
  close(): Promise<void>;
}

export function createHub(config: HubConfig, deps: HubDeps): Hub {
  // Every tunnelled connection opens HTTP/2 streams: drop Node 20's
  // per-stream deprecation wrappers (proto node-compat.ts).
  installLeanAsyncResourceBind();
  const log = deps.logger.child({ component: 'hub' });
  const mesh = deps.ca.mesh;
  const sessions = new SessionManager({
    keepaliveIntervalMs: config.keepaliveInterval,
    keepaliveTimeoutMs: config.keepaliveTimeout,
    registry: deps.registry,
    log,
  });
  const stats = new RelayStats();
  const mcs = new McsHub({ leaseTtlMs: config.mcsLeaseTtl, log: log.child({ component: 'mcs' }) });
  const metrics = new HubMetrics(sessions, stats, () => anonymous);
  let metricsServer: HttpServer | undefined;
  // Throughput for the status view: bytes relayed over the last sample period.
  const rate = { at: Date.now(), bytes: 0, bytesPerSec: 0 };
  const sampler = setInterval(() => {
    const now = Date.now();
    const bytes = stats.bytesTotal();
    rate.bytesPerSec = Math.round(((bytes - rate.bytes) * 1000) / Math.max(1, now - rate.at));
    rate.at = now;
    rate.bytes = bytes;
  }, 5_000);
  sampler.unref();
  const ops: OperationsContext = { ca: deps.ca, registry: deps.registry, names: deps.names, sessions };
  const enrolDeps: EnrolDeps = { ca: deps.ca, registry: deps.registry, certLifetimeMs: config.certLifetime };
  const routeDeps: MainRouteDeps = {
    enrol: enrolDeps,
    ops,
    sessions,
    mesh,
    keepaliveIntervalMs: config.keepaliveInterval,
    keepaliveTimeoutMs: config.keepaliveTimeout,
    relay: { sessions, stats, log: log.child({ component: 'relay' }) },
    mcs,
    countControl: (type) => metrics.controlMessages.inc({ type }),
    admins: config.admins,
    files: deps.contentDir
      ? new FileService({
          catalogue: new FileCatalogue(deps.registry),
          store: new ContentStore(deps.contentDir),
          sessions,
          log: log.child({ component: 'files' }),
          maxFileBytes: config.maxFileSize,
          maxTransfers: config.maxTransfers,
        })
      : undefined,
  };
  let anonymous = 0;
  // Enrolment attempts per address in the current minute.
  const enrolAttempts = new Map<string, number>();
  const enrolWindow = setInterval(() => enrolAttempts.clear(), 60_000);
  enrolWindow.unref();
  let closing = false;
  let adminServer: HttpServer | undefined;
  const h2Options: http2.ServerOptions = {
    ...http2SessionOptions,
    settings: { ...http2SessionOptions.settings, maxConcurrentStreams: config.maxStreamsPerSession },
  };

  const server = tls.createServer({
    key: deps.serverCert.keyPem,
    // With its issuer, so that OpenSSL does not build the chain on every handshake.
    cert: certChainPem(deps.serverCert.certPem, deps.ca.certPem),
    ca: [deps.ca.certPem],
    requestCert: true,
    // Unauthenticated clients may complete TLS only to enrol; every other route
    // checks the verified identity. See peer-identity.ts.
    rejectUnauthorized: false,
    minVersion: 'TLSv1.3',
    ALPNProtocols: [ALPN_SESSION, ALPN_REVERSE],
    handshakeTimeout: config.handshakeTimeout,
    // Agents never resume a session. Stateless tickets cost ≈ 4.5 KiB per idle
    // connection and ≈ 0.3 ms of each handshake (OpenSSL copies the session,
    // client certificate included, through DER for each one); TLS 1.3 still
    // sends stateful ones, which nothing stores.
    secureOptions: constants.SSL_OP_NO_TICKET,
    sessionTimeout: 0,
  });

  server.maxConnections = config.maxConnections;
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: tls.TLSSocket) => {
    // With a listener here Node leaves the socket open: close it, or a client
    // that never finishes its handshake holds it forever (slowloris).
    socket.destroy();
    metrics.handshakeFailures.inc({ reason: err.code ?? 'error' });
    log.debug({ reason: err.message }, 'TLS handshake failed');
  });
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.on('error', () => {});
    socket.setNoDelay(true);
    const address = `${socket.remoteAddress}:${socket.remotePort}`;
    const who = identifyPeer(socket, deps.registry, mesh, Date.now());
    if (socket.alpnProtocol === ALPN_REVERSE) {
      const live = who.kind === 'endpoint' ? sessions.get(who.identity.endpoint) : undefined;
      if (who.kind !== 'endpoint' || !live || live.closed || live.identity.serial !== who.identity.serial) {
        socket.destroy();
        return;
      }
      const reverse = http2.connect(`https://${live.endpoint}.reverse`, { createConnection: () => socket, ...http2SessionOptions });
      reverse.on('connect', () => reverse.setLocalWindowSize(HTTP2_SESSION_WINDOW_BYTES));
      live.attachReverse(reverse);
      return;
    }
    if (socket.alpnProtocol !== ALPN_SESSION) {
      socket.destroy();
      return;
    }
    const session = http2.performServerHandshake(socket, h2Options);
    session.on('error', () => {});
    session.setLocalWindowSize(HTTP2_SESSION_WINDOW_BYTES);

    if (who.kind === 'endpoint' && sessions.size >= config.maxAgents && !sessions.get(who.identity.endpoint)) {
      const err = new ZtmError(ErrorCodes.TOO_MANY, `hub holds its limit of ${config.maxAgents} agent sessions; retrying later`);
      metrics.sessionsRefused.inc({ reason: err.code });
      log.warn({ address, endpoint: who.identity.endpoint, limit: config.maxAgents }, 'session refused: agent limit');
      refuse(session, err);
      return;
    }
    if (who.kind === 'endpoint') {
      const agent = new AgentSession(session, who.identity, address, log, config.keepaliveTimeout);
      agent.once('close', (reason) => metrics.sessionsClosed.inc({ reason: reason.split(/[:(]/)[0]?.trim() || 'unknown' }));
      session.on('stream', (stream, headers) => {
        if (!versionOk(stream, headers)) return;
        handleMainStream(routeDeps, agent, stream, headers);
      });
      return;
    }
    if (who.kind === 'refused') {
      metrics.sessionsRefused.inc({ reason: who.error.code });
      log.warn({ address, code: who.error.code, reason: who.error.message }, 'session refused');
      refuse(session, who.error);
      return;
    }
    // Anonymous: enrolment only, bounded in number and time.
    if (anonymous >= config.maxUnauthenticated) {
      session.destroy();
      return;
    }
    anonymous++;
    session.once('close', () => anonymous--);
    session.setTimeout(ENROL_SESSION_TIMEOUT_MS, () => session.destroy());
    session.on('stream', (stream, headers) => {
      stream.on('error', () => {});
      if (!versionOk(stream, headers)) return;
      if (headers[':method'] === 'POST' && headers[':path'] === Paths.enrol) {
        const ip = socket.remoteAddress ?? '?';
        const tries = (enrolAttempts.get(ip) ?? 0) + 1;
        enrolAttempts.set(ip, tries);
        if (tries > config.enrolPerMinute) {
          metrics.enrolments.inc({ result: ErrorCodes.TOO_MANY });
          log.warn({ address, limit: config.enrolPerMinute }, 'enrolment refused: too many attempts from this address');
          respondError(stream, new ZtmError(ErrorCodes.TOO_MANY, `more than ${config.enrolPerMinute} enrolment attempts a minute from ${ip}; wait a minute`));
          return;
        }
        void (async () => {
          try {
            const body = parseMessage(EnrolRequest, await readStreamJson(stream));
            const out = await enrol(enrolDeps, body.permit, body.csr, body.cluster);
            metrics.enrolments.inc({ result: 'ok' });
            log.info({ endpoint: out.endpoint, address }, 'endpoint enrolled');
            respondJson(stream, 200, out);
          } catch (err) {
            const e = err instanceof ZtmError ? err : new ZtmError(ErrorCodes.INTERNAL, 'enrolment failed', { cause: err });
            metrics.enrolments.inc({ result: e.code });
            log.warn({ address, code: e.code, reason: e.message }, 'enrolment refused');
            respondError(stream, e);
          }
        })();
        return;
      }
      respondError(stream, who.error);
    });
  });

  function versionOk(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): boolean {
    const v = headers[Headers.version];
    if (v === undefined || SUPPORTED_VERSIONS.includes(Number(v))) return true;
    respondError(stream, new ZtmError(ErrorCodes.UNSUPPORTED_VERSION, `protocol version ${v} not supported (hub speaks ${SUPPORTED_VERSIONS.join(', ')})`));
    return false;
  }

  function refuse(session: http2.ServerHttp2Session, err: ZtmError): void {
    session.on('stream', (stream) => {
      stream.on('error', () => {});
      respondError(stream, err);
      setTimeout(() => session.close(), 100).unref();
    });
    setTimeout(() => session.destroy(), 5_000).unref();
  }

  async function ping(endpoint: string): Promise<{ endpoint: string; rttMs: number }> {
    const s = sessions.get(endpoint);
    if (!s) throw new ZtmError(ErrorCodes.OFFLINE, `endpoint ${endpoint} is not online`);
    const started = process.hrtime.bigint();
    const stream = await s.openStream(Paths.ping);
    const echoed = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new ZtmError(ErrorCodes.TIMEOUT, `endpoint ${endpoint} did not answer the ping`));
      }, 10_000);
      stream.on('response', (h) => {
        if (h[':status'] !== 200) reject(new ZtmError(ErrorCodes.INTERNAL, `ping answered ${h[':status']}`));
      });
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        clearTimeout(timer);
        resolve(Buffer.concat(chunks));
      });
      stream.on('error', (err) => {
        clearTimeout(timer);
        reject(new ZtmError(ErrorCodes.OFFLINE, `ping failed: ${err.message}`));
      });
      stream.end(Buffer.from(String(started)));
    });
    if (echoed.toString() !== String(started)) throw new ZtmError(ErrorCodes.INTERNAL, 'ping echo did not match');
    const rttMs = Number(process.hrtime.bigint() - started) / 1e6;
    return { endpoint, rttMs };
  }

  const adminRoutes: AdminRoutes = {
    [`GET ${AdminPaths.status}`]: () => status(),
    [`GET ${AdminPaths.endpoints}`]: () => listEndpoints(ops),
    [`POST ${AdminPaths.permits}`]: (body) => {
      const b = (body ?? {}) as { name?: unknown; ttl?: unknown; user?: unknown };
      const ttlMs = b.ttl === undefined ? config.permitTtl : parseDurationMs(b.ttl as string);
      if (typeof b.name !== 'string') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'name is required');
      if (ttlMs === null) throw new ZtmError(ErrorCodes.BAD_REQUEST, `ttl ${JSON.stringify(b.ttl)} is not a duration (like 1h)`);
      if (b.user !== undefined && typeof b.user !== 'string') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'user must be a string');
      return createPermit(ops, b.name, ttlMs, (b.user as string | undefined) ?? b.name);
    },
    [`POST ${AdminPaths.revoke}`]: (body) => {
      const name = (body as { name?: unknown } | undefined)?.name;
      if (typeof name !== 'string' || !isValidName(name)) throw new ZtmError(ErrorCodes.BAD_REQUEST, 'name is required');
      const out = revokeEndpoint(ops, name);
      log.info(out, 'endpoint revoked');
      return out;
    },
    [`POST ${AdminPaths.ping}`]: (body) => {
      const name = (body as { name?: unknown } | undefined)?.name;
      if (typeof name !== 'string') throw new ZtmError(ErrorCodes.BAD_REQUEST, 'name is required');
      return ping(name);
    },
  };

  function status() {
    const endpoints = deps.registry.listEndpoints();
    return {
      mesh,
      names: deps.names,
      listen: server.address(),
      endpoints: endpoints.length,
      online: sessions.size,
      revoked: endpoints.filter((e) => e.revoked_at !== null).length,
      unauthenticated: anonymous,
      sessionsWithReverse: [...sessions.all()].filter((x) => x.hasReverse).length,
      streamsOpen: stats.openStreams(),
      bytesRelayed: stats.bytesTotal(),
      throughputBytesPerSec: rate.bytesPerSec,
      tunnels: stats.snapshot(),
      mcs: { clusters: mcs.clusters(), imports: mcs.imports().length },
      uptimeSec: Math.round(process.uptime()),
    };
  }

  return {
    mesh,
    sessions,
    ops,
    async start() {
      const [host, portText] = splitHostPort(config.listen);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(Number(portText), host, () => {
          server.off('error', reject);
          resolve();
        });
      }).catch((err: NodeJS.ErrnoException) => {
        throw new ZtmError(
          ErrorCodes.CONFIG,
          `cannot listen on ${config.listen}: ${err.code ?? err.message}${err.code === 'EADDRINUSE' ? ' (another process holds the port; pick another with --listen)' : ''}`,
        );
      });
      if (deps.adminSocket) adminServer = await startAdminServer(deps.adminSocket, adminRoutes, log);
      if (config.metrics) {
        metricsServer = await startMetricsServer(config.metrics, {
          metrics: () => metrics.render(),
          ready: () =>
            server.listening && !closing ? { ok: true, detail: `ready: ${sessions.size} endpoints online` } : { ok: false, detail: 'not listening' },
        });
      }
      const addr = server.address() as AddressInfo;
      log.info({ mesh, listen: `${addr.address}:${addr.port}` }, 'hub listening');
      return addr;
    },
    address: () => (server.address() as AddressInfo | null) ?? null,
    ping,
    metrics,
    /** Stop accepting, send GOAWAY to every session, let relayed streams
     * finish for up to `shutdownGrace`, then drop what is left. */
    async close() {
      closing = true;
      mcs.close();
      clearInterval(sampler);
      clearInterval(enrolWindow);
      server.close();
      adminServer?.close();
      sessions.close('hub shutting down');
      const deadline = Date.now() + config.shutdownGrace;
      while (stats.openStreams() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      if (stats.openStreams() > 0) log.warn({ streams: stats.openStreams() }, 'grace period over; dropping streams still open');
      sessions.destroyAll();
      metricsServer?.close();
    },
  };
}

export function splitHostPort(hostPort: string): [string, string] {
  const m = /^\[(.+)\]:(\d+)$/.exec(hostPort) ?? /^(.+):(\d+)$/.exec(hostPort);
  if (!m) throw new ZtmError(ErrorCodes.CONFIG, `${hostPort} is not host:port`);
  return [m[1] as string, m[2] as string];
}
