/**
 * `ztm-hub`: parses, loads config, creates, starts, waits for a signal, stops.
 * The only place that calls process.exit.
 */
import { writeFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import {
  AdminPaths,
  ConfigError,
  type EndpointInfo,
  ErrorCodes,
  type Permit,
  adminRequest,
  isZtmError,
  parseDurationMs,
  printTable,
  reportCliError,
} from '@ztm/proto';
import { loadHubConfig } from '../config/hub-config.js';
import { defaultHubDataDir, hubPaths } from '../data-paths.js';

// The CA, the registry, the relay and the logger are loaded by the commands
// that use them: a command for a running hub (status, a permit over the admin
// socket) starts in about half the time without them.
const dataDirModule = () => import('../data-dir.js');
const operations = () => import('../admin/operations.js');

const dataOption = () => new Option('--data <dir>', 'hub data directory (env ZTM_DATA)').default(undefined);
const dataDir = (o: { data?: string }) => o.data ?? defaultHubDataDir();

function out(json: boolean, value: unknown, human: () => void): void {
  if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else human();
}

/** Use the running hub's admin socket; when it is not running, work on the
 * data directory directly. */
async function viaAdminOr<T>(dir: string, req: { method: 'GET' | 'POST'; path: string; body?: unknown }, offline: () => Promise<T>): Promise<T> {
  try {
    return await adminRequest<T>({ socketPath: hubPaths(dir).adminSocket, ...req });
  } catch (err) {
    if (isZtmError(err, ErrorCodes.NOT_RUNNING)) return offline();
    throw err;
  }
}

async function offlineCtx(dir: string) {
  const d = (await dataDirModule()).loadHubData(dir);
  return { ctx: { ca: d.ca, registry: d.registry, names: d.names }, close: () => d.registry.close() };
}

export function buildProgram(): Command {
  const program = new Command('ztm-hub')
    .description('ztm hub: the mesh CA, registry and relay that agents dial out to')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('init')
    .description('create the mesh CA, the hub certificate and the registry')
    .addOption(dataOption())
    .requiredOption('--names <host:port...>', 'addresses agents use to reach this hub (comma-separated or repeated)')
    .option('--mesh <name>', 'mesh name', 'default')
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; names: string[]; mesh: string; json?: boolean }) => {
      const names = o.names
        .flatMap((n) => n.split(','))
        .map((n) => n.trim())
        .filter(Boolean);
      const d = await (await dataDirModule()).initHubData(dataDir(o), o.mesh, names);
      d.registry.close();
      out(!!o.json, { mesh: d.mesh, names: d.names, data: d.paths.dir }, () =>
        console.log(`hub initialised: mesh ${d.mesh}, names ${d.names.join(', ')}, data ${d.paths.dir}\nnext: ztm-hub serve --data ${d.paths.dir}`),
      );
    });

  program
    .command('serve')
    .description('run the hub (foreground; logs JSON on stdout)')
    .addOption(dataOption())
    .option('--config <file>', 'YAML config file')
    .option('--listen <host:port>', 'listen address (default 0.0.0.0:8888)')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent')
    .option('--keepalive-interval <duration>', 'how often agents PING the hub, told them in the welcome (default 15s)')
    .option('--keepalive-timeout <duration>', 'an agent is offline after this long without a word from it (default 30s)')
    .option('--cert-lifetime <duration>', 'lifetime of endpoint certificates (default 30d)')
    .option('--metrics <host:port>', 'serve /metrics (Prometheus), /healthz and /readyz here (off by default)')
    .option('--shutdown-grace <duration>', 'on SIGTERM, how long relayed streams may finish (default 10s)')
    .option('--mcs-lease-ttl <duration>', 'multicluster services: withdraw a cluster offline this long (default 30s)')
    .action(async (o: Record<string, string | undefined>) => {
      const config = loadHubConfig(o.config, {
        listen: o.listen,
        logLevel: o.logLevel as never,
        keepaliveInterval: o.keepaliveInterval,
        keepaliveTimeout: o.keepaliveTimeout,
        certLifetime: o.certLifetime,
        metrics: o.metrics,
        shutdownGrace: o.shutdownGrace,
        mcsLeaseTtl: o.mcsLeaseTtl,
      });
      const [{ loadHubData }, { createLogger }, { createHub }] = await Promise.all([dataDirModule(), import('../log.js'), import('../hub.js')]);
      const d = loadHubData(dataDir(o));
      const logger = createLogger(config.logLevel);
      d.registry.onWriteError = (err) => logger.error({ code: err.code, reason: err.message, ...err.details }, 'registry write refused by the disk');
      const hub = createHub(config, {
        ca: d.ca,
        serverCert: d.serverCert,
        registry: d.registry,
        names: d.names,
        logger,
        adminSocket: d.paths.adminSocket,
        contentDir: d.paths.content,
      });
      await hub.start();
      await new Promise<void>((resolve) => {
        const stop = (signal: string) => {
          logger.info({ signal }, 'shutting down');
          resolve();
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
      await hub.close();
      d.registry.close();
      logger.flush();
    });

  const permit = program.command('permit').description('permits for new endpoints');
  permit
    .command('create <name>')
    .description('write a one-time permit for endpoint NAME')
    .addOption(dataOption())
    .option('--ttl <duration>', 'how long the permit stays valid', '1h')
    .option('--out <file>', 'write the permit here (0600) instead of stdout')
    .option('--user <user>', 'the user this endpoint acts for (tunnel allow-lists name users); default: the endpoint name')
    .action(async (name: string, o: { data?: string; ttl: string; out?: string; user?: string }) => {
      const ttlMs = parseDurationMs(o.ttl);
      if (ttlMs === null || ttlMs <= 0) throw new Error(`--ttl ${o.ttl} is not a duration (like 30m, 1h, 7d)`);
      const dir = dataDir(o);
      const p = await viaAdminOr<Permit>(dir, { method: 'POST', path: AdminPaths.permits, body: { name, ttl: o.ttl, user: o.user } }, async () => {
        const { ctx, close } = await offlineCtx(dir);
        try {
          return (await operations()).createPermit(ctx, name, ttlMs, o.user ?? name);
        } finally {
          close();
        }
      });
      const text = `${JSON.stringify(p, null, 2)}\n`;
      if (o.out) {
        writeFileSync(o.out, text, { mode: 0o600 });
        console.error(`permit for ${name} written to ${o.out} (valid until ${p.expires}, one use)`);
      } else process.stdout.write(text);
    });

  program
    .command('endpoints')
    .description('list endpoints: online/offline, last seen, address, certificate expiry')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; json?: boolean }) => {
      const dir = dataDir(o);
      const list = await viaAdminOr<EndpointInfo[]>(dir, { method: 'GET', path: AdminPaths.endpoints }, async () => {
        const { ctx, close } = await offlineCtx(dir);
        try {
          return (await operations()).listEndpoints(ctx);
        } finally {
          close();
        }
      });
      out(!!o.json, list, () => printEndpoints(list));
    });

  program
    .command('revoke <name>')
    .description("revoke an endpoint's certificates and drop its session now")
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (name: string, o: { data?: string; json?: boolean }) => {
      const dir = dataDir(o);
      const r = await viaAdminOr(dir, { method: 'POST', path: AdminPaths.revoke, body: { name } }, async () => {
        const { ctx, close } = await offlineCtx(dir);
        try {
          return (await operations()).revokeEndpoint(ctx, name);
        } finally {
          close();
        }
      });
      out(!!o.json, r, () => console.log(`revoked ${r.endpoint}: ${r.certificates} certificate(s)${r.disconnected ? ', session closed' : ''}`));
    });

  program
    .command('ping <name>')
    .description('open a stream to an endpoint over its reverse session and time the answer')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (name: string, o: { data?: string; json?: boolean }) => {
      const r = await adminRequest<{ endpoint: string; rttMs: number }>({
        socketPath: hubPaths(dataDir(o)).adminSocket,
        method: 'POST',
        path: AdminPaths.ping,
        body: { name },
      });
      out(!!o.json, r, () => console.log(`${r.endpoint}: ${r.rttMs.toFixed(2)} ms`));
    });

  program
    .command('status')
    .description('mesh summary from the running hub')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; json?: boolean }) => {
      const s = await adminRequest<HubStatus>({ socketPath: hubPaths(dataDir(o)).adminSocket, method: 'GET', path: AdminPaths.status });
      out(!!o.json, s, () => {
        console.log(`mesh       ${s.mesh} (hub names ${s.names.join(', ')}, listening ${s.listen.address}:${s.listen.port}, up ${s.uptimeSec}s)`);
        console.log(`endpoints  ${s.endpoints} enrolled, ${s.online} online, ${s.revoked} revoked`);
        console.log(`sessions   ${s.online} agent sessions (${s.sessionsWithReverse} with reverse session), ${s.unauthenticated} unauthenticated`);
        console.log(`streams    ${s.streamsOpen} open; ${formatBytes(s.bytesRelayed)} relayed; ${formatBytes(s.throughputBytesPerSec)}/s now`);
        if (s.mcs?.clusters.length) {
          const cl = s.mcs.clusters.map((c) => `${c.cluster} (${c.exports} exports, ${c.online ? 'online' : `offline, lease until ${c.leaseExpiresAt}`})`);
          console.log(`clusters   ${cl.join('; ')}; ${s.mcs.imports} imports`);
        }
        const rows = Object.entries(s.tunnels).map(([tunnel, c]) => ({
          TUNNEL: tunnel,
          OPEN: String(c.open),
          TOTAL: String(c.total),
          'BYTES IN/OUT': `${formatBytes(c.bytesIn)}/${formatBytes(c.bytesOut)}`,
          REFUSALS:
            Object.entries(c.refusals)
              .map(([k, n]) => `${k.replace('ZTM_ERR_', '')}:${n}`)
              .join(',') || '-',
        }));
        if (rows.length) {
          console.log('');
          printTable(rows);
        }
      });
    });

  const config = program.command('config').description('configuration files');
  config
    .command('check')
    .description('validate a config file; prints every problem as "path: message"')
    .requiredOption('--config <file>', 'YAML config file')
    .action((o: { config: string }) => {
      loadHubConfig(o.config);
      console.log(`${o.config}: ok`);
    });

  return program;
}

interface HubStatus {
  mesh: string;
  names: string[];
  listen: { address: string; port: number };
  endpoints: number;
  online: number;
  revoked: number;
  unauthenticated: number;
  sessionsWithReverse: number;
  streamsOpen: number;
  bytesRelayed: number;
  throughputBytesPerSec: number;
  uptimeSec: number;
  tunnels: Record<string, { open: number; total: number; bytesIn: number; bytesOut: number; refusals: Record<string, number> }>;
  mcs?: { clusters: { cluster: string; online: boolean; leaseExpiresAt: string | null; exports: number }[]; imports: number };
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function printEndpoints(list: EndpointInfo[]): void {
  printTable(
    list.map((e) => ({
      NAME: e.name,
      STATE: e.revoked ? 'revoked' : e.online ? 'online' : 'offline',
      'LAST SEEN': e.lastSeen ?? '-',
      ADDRESS: e.address ?? '-',
      'CERT EXPIRES': e.certExpires ?? '-',
    })),
  );
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    process.exit(0);
  } catch (err) {
    process.exitCode = reportCliError('ztm-hub', err, err instanceof ConfigError ? err.problems : undefined);
    process.exit(process.exitCode);
  }
}
