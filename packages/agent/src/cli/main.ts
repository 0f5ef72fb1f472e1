/**
 * `ztm-agent`: parses, loads config, creates, starts, waits for a signal or a
 * refusal, stops. The only place that calls process.exit.
 */
import { readFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { Command, Option } from 'commander';
import {
  AdminPaths,
  CLUSTER_ID_PATTERN,
  ConfigError,
  type EndpointInfo,
  ErrorCodes,
  adminRequest,
  isZtmError,
  parseTunnelId,
  printTable,
  reportCliError,
  tunnelKey,
  type FileEntry,
} from '@ztm/proto';
import { newEndStats } from '../tunnel/end-stats.js';
import type { TunnelView } from '../tunnel/tunnel-manager.js';
import { inboundSpec, outboundSpec, toInbound, toOutbound } from '../tunnel/tunnel-spec.js';
import { readTunnelFile, writeTunnelFile } from '../tunnel/tunnel-store.js';
import { loadAgentConfig } from '../config/agent-config.js';
import { agentPaths, defaultAgentDataDir, loadIdentity } from '../identity/identity-store.js';
import { type KubernetesStatus, certificateCluster, printKubernetesStatus } from '../k8s/status-view.js';

const dataOption = () => new Option('--data <dir>', 'agent data directory (env ZTM_DATA)');
const dataDir = (o: { data?: string }) => o.data ?? defaultAgentDataDir();

function out(json: boolean, value: unknown, human: () => void): void {
  if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else human();
}

function admin<T>(o: { data?: string }, method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  return adminRequest<T>({ socketPath: agentPaths(dataDir(o)).adminSocket, method, path, body });
}

export function buildProgram(): Command {
  const program = new Command('ztm-agent')
    .description('ztm agent: dials out to the hub; tunnels, files and multicluster services')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();

  program
    .command('join')
    .description('enrol this device with a permit: make a key here, get a certificate from the hub')
    .requiredOption('--permit <file>', 'permit file from ztm-hub permit create')
    .addOption(dataOption())
    .option('--hub <host:port>', "hub address to use instead of the permit's")
    .option('--kubeconfig <file>', 'enrol as the agent of this Kubernetes cluster (binds its cluster id into the certificate)')
    .option('--in-cluster', 'like --kubeconfig, with the in-cluster service account (inside a pod)')
    .option('--cluster-id <id>', 'cluster id when the cluster has no ClusterProperty cluster.clusterset.k8s.io (default: kube-system UID)')
    .option('--json', 'print JSON')
    .action(async (o: { permit: string; data?: string; hub?: string; json?: boolean; kubeconfig?: string; inCluster?: boolean; clusterId?: string }) => {
      let cluster: string | undefined;
      if (o.kubeconfig || o.inCluster) {
        const { clusterForJoin } = await import('../k8s/join-cluster.js');
        cluster = (await clusterForJoin({ kubeconfig: o.kubeconfig, clusterId: o.clusterId })).id;
      } else if (o.clusterId !== undefined) {
        if (!CLUSTER_ID_PATTERN.test(o.clusterId)) throw new Error(`--cluster-id ${JSON.stringify(o.clusterId)} must be a DNS label of at most 63 characters`);
        cluster = o.clusterId;
      }
      let text: string;
      try {
        text = readFileSync(o.permit, 'utf8');
      } catch (err) {
        throw new Error(`cannot read permit ${o.permit}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const { join } = await import('../identity/join.js');
      const r = await join(dataDir(o), text, { hub: o.hub, cluster });
      out(!!o.json, r, () =>
        console.log(
          `joined mesh ${r.mesh} as ${r.endpoint}${r.cluster ? ` for cluster ${r.cluster}` : ''} (certificate valid until ${r.certExpires})\nnext: ztm-agent run --data ${dataDir(o)}${o.kubeconfig ? ` --kubeconfig ${o.kubeconfig}` : ''}`,
        ),
      );
    });

  program
    .command('run')
    .description('run the agent (foreground; logs JSON on stdout)')
    .addOption(dataOption())
    .option('--config <file>', 'YAML config file')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent')
    .option('--hub <host:port...>', "hub addresses to use instead of the permit's")
    .option('--keepalive-interval <duration>', "how often the agent PINGs the hub (default 15s; the hub's welcome can raise it)")
    .option('--keepalive-timeout <duration>', 'hub considered lost after this long without a word from it (default 30s)')
    .option('--metrics <host:port>', 'serve /metrics (Prometheus), /healthz and /readyz here (off by default)')
    .option('--shutdown-grace <duration>', 'on SIGTERM, how long tunnelled connections may finish (default 10s)')
    .option('--kubeconfig <file>', 'Kubernetes mode: export and import Services (MCS API) of this cluster')
    .option('--in-cluster', 'Kubernetes mode with the in-cluster service account (the default inside a pod for a cluster agent)')
    .option('--cluster-id <id>', 'cluster id when the cluster has no ClusterProperty (must match the certificate)')
    .option('--advertise-address <ip>', 'Kubernetes mode: address pods reach this agent on (default: env POD_IP)')
    .action(
      async (o: {
        data?: string;
        config?: string;
        logLevel?: string;
        hub?: string[];
        keepaliveInterval?: string;
        keepaliveTimeout?: string;
        metrics?: string;
        shutdownGrace?: string;
        kubeconfig?: string;
        inCluster?: boolean;
        clusterId?: string;
        advertiseAddress?: string;
      }) => {
        let config = loadAgentConfig(o.config, {
          logLevel: o.logLevel,
          hubs: o.hub?.flatMap((h) => h.split(',')),
          keepaliveInterval: o.keepaliveInterval,
          keepaliveTimeout: o.keepaliveTimeout,
          metrics: o.metrics,
          shutdownGrace: o.shutdownGrace,
          kubeconfig: o.kubeconfig,
          kubernetesInCluster: o.inCluster,
          clusterId: o.clusterId,
          advertiseAddress: o.advertiseAddress ?? (process.env.POD_IP || undefined),
        });
        const dir = dataDir(o);
        const identity = loadIdentity(dir);
        // Inside a pod, a cluster agent (certificate names a cluster) is in Kubernetes mode by default.
        if (!config.kubeconfig && !config.kubernetesInCluster && process.env.KUBERNETES_SERVICE_HOST && certificateCluster(identity)) {
          config = Object.freeze({ ...config, kubernetesInCluster: true });
        }
        const [{ createLogger }, { createAgent }] = await Promise.all([import('../log.js'), import('../agent.js')]);
        const logger = createLogger(config.logLevel);
        const agent = createAgent(config, { identity, logger, dataDir: dir, adminSocket: agentPaths(dir).adminSocket });
        await agent.start();
        const signalled = new Promise<void>((resolve) => {
          process.once('SIGTERM', () => resolve());
          process.once('SIGINT', () => resolve());
        });
        try {
          await Promise.race([signalled, agent.done]);
        } finally {
          await agent.close();
          logger.flush();
        }
      },
    );

  program
    .command('status')
    .description('this agent: hub connection, certificate')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; json?: boolean }) => {
      const s = await admin<Record<string, unknown>>(o, 'GET', AdminPaths.status);
      out(!!o.json, s, () => {
        const hub = s.hub as Record<string, unknown>;
        const cert = s.certificate as Record<string, unknown>;
        console.log(`endpoint  ${s.endpoint} (mesh ${s.mesh})`);
        console.log(
          `hub       ${hub.state}${hub.hub ? ` via ${hub.hub}` : ''}${hub.rttMs != null ? `, rtt ${hub.rttMs} ms` : ''}${hub.lastError ? ` (${hub.lastError})` : ''}`,
        );
        console.log(`reverse   ${hub.reverse ? 'open' : 'closed'}`);
        console.log(`cert      expires ${cert.expires}, renews at ${cert.renewAt}`);
        if (s.kubernetes) printKubernetesStatus(s.kubernetes as KubernetesStatus);
        const tunnels = (s.tunnels ?? []) as TunnelView[];
        if (tunnels.length) {
          console.log('');
          printTunnels(tunnels);
        }
      });
    });

  program
    .command('endpoints')
    .description("the mesh's endpoints, as the hub sees them")
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; json?: boolean }) => {
      const list = await admin<EndpointInfo[]>(o, 'GET', AdminPaths.endpoints);
      out(!!o.json, list, () =>
        printTable(
          list.map((e) => ({
            NAME: e.name,
            STATE: e.revoked ? 'revoked' : e.online ? 'online' : 'offline',
            'LAST SEEN': e.lastSeen ?? '-',
            ADDRESS: e.address ?? '-',
            'CERT EXPIRES': e.certExpires ?? '-',
          })),
        ),
      );
    });

  const tunnel = program.command('tunnel').description('tcp/NAME and udp/NAME port mappings across the mesh');
  tunnel
    .command('open <direction> <tunnel>')
    .description('open an inbound end (local listeners) or an outbound end (targets) of tcp/NAME or udp/NAME')
    .option('--listen <[ip:]port...>', 'inbound: where to listen (default ip 127.0.0.1); repeatable')
    .option('--exit <endpoint...>', 'inbound: only use these exits, in this order')
    .option('--target <host:port...>', 'outbound: where connections go (round-robin); repeatable')
    .option('--allow-endpoint <endpoint...>', 'outbound: only these entrance endpoints')
    .option('--allow-user <user...>', 'outbound: only entrances acting for these users')
    .option('--endpoint <endpoint>', "operate this endpoint's tunnels through the hub (same user, or a hub admin)")
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (direction: string, name: string, o: TunnelOpts) => {
      if (direction !== 'inbound' && direction !== 'outbound') throw new Error(`direction must be inbound or outbound, not ${JSON.stringify(direction)}`);
      const body =
        direction === 'inbound'
          ? { direction, tunnel: name, listen: o.listen ?? [], exits: o.exit ?? [] }
          : { direction, tunnel: name, targets: o.target ?? [], allowEndpoints: o.allowEndpoint ?? [], allowUsers: o.allowUser ?? [] };
      if (direction === 'inbound' && (o.target || o.allowEndpoint || o.allowUser))
        throw new Error('--target, --allow-endpoint and --allow-user belong to outbound ends');
      if (direction === 'outbound' && (o.listen || o.exit)) throw new Error('--listen and --exit belong to inbound ends');
      const dir = dataDir(o);
      if (o.endpoint) {
        const v = await admin<TunnelView>(o, 'POST', AdminPaths.tunnelRemote, { endpoint: o.endpoint, action: 'open', ...body });
        return out(!!o.json, v, () => console.log(`${direction} ${v.tunnel} open on ${o.endpoint}: ${(v.listen ?? v.targets ?? []).join(', ')}`));
      }
      let saved = false;
      const view = await admin<TunnelView>(o, 'POST', AdminPaths.tunnelOpen, body).catch((err) => {
        if (!isZtmError(err, ErrorCodes.NOT_RUNNING)) throw err;
        saved = true;
        return saveOffline(dir, body);
      });
      out(!!o.json, view, () =>
        console.log(
          saved
            ? `${direction} ${view.tunnel} saved; it opens when the agent starts (ztm-agent run --data ${dir})`
            : `${direction} ${view.tunnel} open: ${(view.listen ?? view.targets ?? []).join(', ')}`,
        ),
      );
    });
  tunnel
    .command('close <direction> <tunnel>')
    .description('close an inbound or outbound end')
    .option('--endpoint <endpoint>', "operate this endpoint's tunnels through the hub (same user, or a hub admin)")
    .addOption(dataOption())
    .action(async (direction: string, name: string, o: { data?: string; endpoint?: string }) => {
      if (direction !== 'inbound' && direction !== 'outbound') throw new Error(`direction must be inbound or outbound, not ${JSON.stringify(direction)}`);
      if (o.endpoint) {
        await admin(o, 'POST', AdminPaths.tunnelRemote, { endpoint: o.endpoint, action: 'close', direction, tunnel: name });
        console.log(`${direction} ${name} closed on ${o.endpoint}`);
        return;
      }
      await admin(o, 'POST', AdminPaths.tunnelClose, { direction, tunnel: name }).catch((err) => {
        if (!isZtmError(err, ErrorCodes.NOT_RUNNING)) throw err;
        closeOffline(dataDir(o), direction, name);
      });
      console.log(`${direction} ${name} closed`);
    });
  tunnel
    .command('list')
    .description('tunnel ends here, with live stream counts')
    .option('--endpoint <endpoint>', "another endpoint's tunnels, through the hub (same user, or a hub admin)")
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; json?: boolean; endpoint?: string }) => {
      if (o.endpoint) {
        const remote = await admin<TunnelView[]>(o, 'POST', AdminPaths.tunnelRemote, { endpoint: o.endpoint, action: 'list' });
        return out(!!o.json, remote, () => printTunnels(remote));
      }
      const list = await admin<TunnelView[]>(o, 'GET', AdminPaths.tunnels).catch((err) => {
        if (!isZtmError(err, ErrorCodes.NOT_RUNNING)) throw err;
        return listOffline(dataDir(o));
      });
      out(!!o.json, list, () => printTunnels(list));
    });

  program
    .command('publish')
    .description('share a file with every endpoint of the mesh')
    .argument('<kind>', 'what to publish: file')
    .argument('<path>', 'the local file')
    .option('--as <name>', 'name in the mesh (a relative path); default: the file name')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (kind: string, path: string, o: { as?: string; data?: string; json?: boolean }) => {
      if (kind !== 'file') throw new Error(`can only publish a file (ztm-agent publish file PATH), not ${JSON.stringify(kind)}`);
      const name = o.as ?? basename(path);
      const e = await admin<FileEntry>(o, 'POST', AdminPaths.filePublish, { path: resolve(path), name });
      out(!!o.json, e, () => console.log(`published ${e.name} (${e.size} bytes, sha256 ${e.sha256.slice(0, 16)}…, version ${e.version})`));
    });
  program
    .command('unpublish <name>')
    .description('remove a published file from every endpoint')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (name: string, o: { data?: string; json?: boolean }) => {
      const e = await admin<FileEntry>(o, 'POST', AdminPaths.fileUnpublish, { name });
      out(!!o.json, e, () => console.log(`unpublished ${e.name}`));
    });
  program
    .command('files')
    .description('the mesh file catalogue and the state of each file here')
    .addOption(dataOption())
    .option('--json', 'print JSON')
    .action(async (o: { data?: string; json?: boolean }) => {
      const list = await admin<(FileEntry & { local: string })[]>(o, 'GET', AdminPaths.files);
      out(!!o.json, list, () =>
        printTable(
          list.map((f) => ({
            NAME: f.name,
            SIZE: String(f.size),
            SHA256: `${f.sha256.slice(0, 16)}…`,
            PUBLISHER: f.publisher,
            TIME: f.publishedAt,
            LOCAL: f.local,
          })),
        ),
      );
    });

  const config = program.command('config').description('configuration files');
  config
    .command('check')
    .description('validate a config file; prints every problem as "path: message"')
    .requiredOption('--config <file>', 'YAML config file')
    .action((o: { config: string }) => {
      loadAgentConfig(o.config);
      console.log(`${o.config}: ok`);
    });

  return program;
}

interface TunnelOpts {
  endpoint?: string;
  listen?: string[];
  exit?: string[];
  target?: string[];
  allowEndpoint?: string[];
  allowUser?: string[];
  data?: string;
  json?: boolean;
}

/** Agent not running: validate and write tunnels.json; it applies at start. */
function saveOffline(dir: string, body: Record<string, unknown>): TunnelView {
  const f = readTunnelFile(dir);
  if (body.direction === 'inbound') {
    const end = toInbound(body);
    f.inbound = [...f.inbound.filter((s) => s.tunnel !== end.key), inboundSpec(end)];
    writeTunnelFile(dir, f);
    return { direction: 'inbound', tunnel: end.key, listen: inboundSpec(end).listen, exits: end.exits, state: 'saved', stats: newEndStats() };
  }
  const end = toOutbound(body);
  f.outbound = [...f.outbound.filter((s) => s.tunnel !== end.key), outboundSpec(end)];
  writeTunnelFile(dir, f);
  return { direction: 'outbound', ...outboundSpec(end), state: 'saved', stats: newEndStats() };
}

function closeOffline(dir: string, direction: 'inbound' | 'outbound', name: string): void {
  const key = tunnelKey(parseTunnelId(name));
  const f = readTunnelFile(dir);
  const before = f.inbound.length + f.outbound.length;
  if (direction === 'inbound') f.inbound = f.inbound.filter((s) => s.tunnel !== key);
  else f.outbound = f.outbound.filter((s) => s.tunnel !== key);
  if (f.inbound.length + f.outbound.length === before) throw new Error(`no ${direction} end ${key} in ${dir}`);
  writeTunnelFile(dir, f);
}

function listOffline(dir: string): TunnelView[] {
  const f = readTunnelFile(dir);
  return [
    ...f.inbound.map((s) => ({ direction: 'inbound' as const, ...s, state: 'stopped', stats: newEndStats() })),
    ...f.outbound.map((s) => ({ direction: 'outbound' as const, ...s, state: 'stopped', stats: newEndStats() })),
  ];
}

function printTunnels(list: TunnelView[]): void {
  printTable(
    list.map((v) => ({
      DIRECTION: v.direction,
      TUNNEL: v.tunnel,
      ADDRESSES: (v.listen ?? v.targets ?? []).join(','),
      'ALLOW/EXITS': [...(v.exits ?? []), ...(v.allowEndpoints ?? []), ...(v.allowUsers ?? []).map((u) => `user:${u}`)].join(',') || '-',
      STATE: v.state,
      OPEN: String(v.stats.open),
      TOTAL: String(v.stats.total),
      'BYTES IN/OUT': `${v.stats.bytesIn}/${v.stats.bytesOut}`,
      FAILURES:
        Object.entries(v.stats.failures)
          .map(([k, n]) => `${k.replace('ZTM_ERR_', '')}:${n}`)
          .join(',') || '-',
    })),
  );
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
    process.exit(0);
  } catch (err) {
    process.exitCode = reportCliError('ztm-agent', err, err instanceof ConfigError ? err.problems : undefined);
    process.exit(process.exitCode);
  }
}
