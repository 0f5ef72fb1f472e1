/**
 * A whole mesh on one network namespace's loopback — hub, agents, and the
 * programs they serve — so a test can shape what "the network" is without
 * touching the host: the namespace's own TCP buffer sysctls, a token-bucket
 * rate on its loopback (tc tbf; this kernel has no netem).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import type { Test } from 'tap';
import { type BulkPeers, startBulkPeers } from './bulk-peers.js';
import { AGENT_BIN, Daemon, HUB_BIN, type RunResult, agentCli, freePort, hubCli, testDir } from './index.js';
import { type Site, SiteDaemon, createSite, netnsSkipReason } from './k8s.js';

type T = Parameters<typeof testDir>[0];

export interface IslandAgent {
  name: string;
  dir: string;
  daemon: SiteDaemon;
  cli(args: string[]): Promise<RunResult>;
  /** How many times it logged msg (online, offline). */
  count(msg: string): number;
}

export interface Island {
  site: Site;
  hub: SiteDaemon;
  hubDir: string;
  startAgent(name: string, runArgs?: string[], env?: NodeJS.ProcessEnv): Promise<IslandAgent>;
}

export interface IslandOptions {
  /** net.ipv4.tcp_rmem and tcp_wmem, e.g. '4096 16384 65536'. */
  tcpBuffers?: string;
  /** tc tbf rate on the namespace's loopback, e.g. '2mbit' (every leg shares it). */
  rate?: string;
  hubArgs?: string[];
}

let tbfProbe: string | false | undefined;
/** Why a rate cannot be put on a namespace's loopback here (tc tbf), or false. */
export function tbfSkipReason(): string | false {
  if (tbfProbe !== undefined) return tbfProbe;
  const netns = netnsSkipReason();
  if (netns) {
    tbfProbe = netns;
    return tbfProbe;
  }
  const ns = `ztm-tbf-probe-${process.pid}`;
  try {
    execFileSync('ip', ['netns', 'add', ns], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'tbf', 'rate', '16mbit', 'burst', '256kb', 'latency', '400ms'], {
      stdio: 'pipe',
    });
    tbfProbe = false;
  } catch (err) {
    tbfProbe = `tc tbf does not work here (${(err as Error).message.split('\n')[0]})`;
  } finally {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {}
  }
  return tbfProbe;
}

export async function startIsland(t: T, name: string, o: IslandOptions = {}): Promise<Island> {
  const site = await createSite(t, name);
  const ns = site.netns as string;
  if (o.tcpBuffers) execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `net.ipv4.tcp_rmem=${o.tcpBuffers}`, `net.ipv4.tcp_wmem=${o.tcpBuffers}`]);
  if (o.rate) execFileSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'tbf', 'rate', o.rate, 'burst', '256kb', 'latency', '400ms']);
  const base = testDir(t);
  const hubDir = join(base, 'hub');
  const port = await freePort();
  const init = await hubCli(['init', '--data', hubDir, '--names', `127.0.0.1:${port}`, '--mesh', name]);
  if (init.code !== 0) throw new Error(`hub init: ${init.stderr}`);
  const hub = new SiteDaemon(site, HUB_BIN, ['serve', '--data', hubDir, '--listen', `127.0.0.1:${port}`, '--log-level', 'debug', ...(o.hubArgs ?? [])]);
  t.teardown(() => hub.stop('SIGKILL'));
  await hub.waitLog((l) => l.msg === 'hub listening');
  return {
    site,
    hub,
    hubDir,
    async startAgent(agentName, runArgs = [], env) {
      const permit = join(base, `${agentName}.permit.json`);
      const p = await hubCli(['permit', 'create', agentName, '--data', hubDir, '--out', permit]);
      if (p.code !== 0) throw new Error(`permit ${agentName}: ${p.stderr}`);
      const dir = join(base, agentName);
      // The hub listens on the namespace's loopback: join from inside it.
      const joining = new Daemon(AGENT_BIN, ['join', '--permit', permit, '--data', dir], undefined, site.prefix);
      if ((await joining.exited) !== 0) throw new Error(`join ${agentName}: ${joining.stderr}`);
      const daemon = new SiteDaemon(site, AGENT_BIN, ['run', '--data', dir, '--log-level', 'debug', ...runArgs], env);
      t.teardown(() => daemon.stop('SIGKILL'));
      await daemon.waitLog((l) => l.msg === 'online');
      return {
        name: agentName,
        dir,
        daemon,
        cli: (args) => agentCli([...args, '--data', dir]),
        count: (msg) => daemon.logs().filter((l) => l.msg === msg).length,
      };
    },
  };
}

/** Bulk peers in the island and a tunnel `tcp/NAME` between them (entry's inbound end →
 * exit's outbound end), proven by a tiny transfer. A port checked free here can still be
 * taken before the agent binds it (freePort checks this namespace, not the island's, and
 * tests run in parallel): the agent then refuses it as in use, and another is tried, up to
 * three in all. */
export async function bulkTunnel(t: Test, island: Island, entry: IslandAgent, exit: IslandAgent, name: string): Promise<BulkPeers> {
  for (let attempt = 1; ; attempt++) {
    const listenPort = await freePort();
    const peers = await startBulkPeers(t, { serverPrefix: island.site.prefix, clientPrefix: island.site.prefix, listenPort });
    const outbound = ['tunnel', 'open', 'outbound', `tcp/${name}`, '--target', `127.0.0.1:${peers.targetPort}`];
    const o = await exit.cli(outbound);
    t.equal(o.code, 0, `ztm-agent ${outbound.join(' ')} ${o.stderr}`);
    const inbound = ['tunnel', 'open', 'inbound', `tcp/${name}`, '--listen', `127.0.0.1:${listenPort}`];
    const i = await entry.cli(inbound);
    if (i.code !== 0 && /in use/.test(i.stderr) && attempt < 3) {
      t.comment(`port ${listenPort} was taken before the agent bound it (${i.stderr.trim()}); trying another`);
      continue;
    }
    t.equal(i.code, 0, `ztm-agent ${inbound.join(' ')} ${i.stderr}`);
    // The inbound end listens once the agent has applied it; a tiny transfer proves the path.
    const probe = await peers.transfer('probe', 64, 64, 10_000);
    t.ok(peers.whole('probe', 64, 64, probe), 'a tiny transfer goes through');
    return peers;
  }
}
