/** A hub and named agents, with tunnel helpers. */
import type { TunnelView } from '@ztm/agent';
import { type AgentHandle, type HubHandle, startAgent, startHub, waitFor } from './index.js';

type T = Parameters<typeof startHub>[0];

export interface Mesh {
  hub: HubHandle;
  agents: Record<string, AgentHandle>;
}

export async function startMesh(t: T, names: string[], opts: { serveArgs?: string[]; runArgs?: string[] } = {}): Promise<Mesh> {
  const hub = await startHub(t, { serveArgs: opts.serveArgs });
  const agents: Record<string, AgentHandle> = {};
  for (const n of names) agents[n] = await startAgent(t, hub, n, opts.runArgs);
  return { hub, agents };
}

/** `ztm-agent tunnel open …` through the real CLI; throws with stderr on failure. */
export async function tunnelOpen(agent: AgentHandle, args: string[]): Promise<void> {
  const r = await agent.cli(['tunnel', 'open', ...args]);
  if (r.code !== 0) throw new Error(`tunnel open ${args.join(' ')} failed: ${r.stderr}`);
}

/** Outbound on `exit` to target port, inbound on `entry` at listenPort; waits until the hub routes it. */
export async function openTunnel(m: Mesh, entry: string, exit: string, name: string, targetPort: number, listenPort: number): Promise<void> {
  await tunnelOpen(m.agents[exit] as AgentHandle, ['outbound', name, '--target', `127.0.0.1:${targetPort}`]);
  await tunnelOpen(m.agents[entry] as AgentHandle, ['inbound', name, '--listen', `127.0.0.1:${listenPort}`]);
}

export async function tunnelList(agent: AgentHandle): Promise<TunnelView[]> {
  const r = await agent.cli(['tunnel', 'list', '--json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

export { waitFor };
