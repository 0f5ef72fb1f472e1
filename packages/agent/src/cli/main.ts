/**
 * `ztm-agent`: parses, loads config, creates, starts, waits for a signal or a
 * refusal, stops. The only place that calls process.exit.
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { AdminPaths, ConfigError, type EndpointInfo, adminRequest, printTable, reportCliError } from '@ztm/proto';
import { createAgent } from '../agent.js';
import { loadAgentConfig } from '../config/agent-config.js';
import { agentPaths, defaultAgentDataDir, loadIdentity } from '../identity/identity-store.js';
import { join } from '../identity/join.js';
import { createLogger } from '../log.js';

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
    .option('--json', 'print JSON')
    .action(async (o: { permit: string; data?: string; hub?: string; json?: boolean }) => {
      let text: string;
      try {
        text = readFileSync(o.permit, 'utf8');
      } catch (err) {
        throw new Error(`cannot read permit ${o.permit}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const r = await join(dataDir(o), text, { hub: o.hub });
      out(!!o.json, r, () =>
        console.log(`joined mesh ${r.mesh} as ${r.endpoint} (certificate valid until ${r.certExpires})\nnext: ztm-agent run --data ${dataDir(o)}`),
      );
    });

  program
    .command('run')
    .description('run the agent (foreground; logs JSON on stdout)')
    .addOption(dataOption())
    .option('--config <file>', 'YAML config file')
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent')
    .option('--hub <host:port...>', "hub addresses to use instead of the permit's")
    .option('--keepalive-interval <duration>', 'PING interval (default 5s)')
    .option('--keepalive-timeout <duration>', 'hub considered lost after this long without a PING answer (default 15s)')
    .action(async (o: { data?: string; config?: string; logLevel?: string; hub?: string[]; keepaliveInterval?: string; keepaliveTimeout?: string }) => {
      const config = loadAgentConfig(o.config, {
        logLevel: o.logLevel,
        hubs: o.hub?.flatMap((h) => h.split(',')),
        keepaliveInterval: o.keepaliveInterval,
        keepaliveTimeout: o.keepaliveTimeout,
      });
      const dir = dataDir(o);
      const identity = loadIdentity(dir);
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
    });

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

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
    process.exit(0);
  } catch (err) {
    process.exitCode = reportCliError('ztm-agent', err, err instanceof ConfigError ? err.problems : undefined);
    process.exit(process.exitCode);
  }
}
