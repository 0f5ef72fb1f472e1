/**
 * Extra end-to-end helpers on top of ./index.ts: endpoint views (CLI and the
 * admin socket, the latter for fast polling), file modes, refusal checks, and
 * fixture scopes so one test can run several hubs.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type EndpointInfo, adminRequest } from '@ztm/proto';
import { type AgentHandle, type Daemon, type HubHandle, type RunResult, waitFor } from './index.js';

interface T {
  teardown(fn: () => unknown): void;
  testdir(): string;
}

interface Assert {
  equal(found: unknown, wanted: unknown, msg: string): unknown;
  not(found: unknown, wanted: unknown, msg: string): unknown;
  match(found: unknown, wanted: RegExp, msg: string): unknown;
}

/** A T-like scope with its own fixture directory, so two hubs (or two agents
 * with one name) started from one test do not share a directory. The
 * directory is a short one under the system temp dir: a Unix socket path
 * (<dir>/admin.sock) must stay under 108 bytes however deep the checkout is. */
export function scope(t: T, name = 's'): T {
  let dir: string | undefined;
  return {
    teardown: (fn) => t.teardown(fn),
    testdir: () => {
      if (!dir) {
        const made = mkdtempSync(join(tmpdir(), `ztm-${name}-`));
        dir = made;
        t.teardown(() => rmSync(made, { recursive: true, force: true }));
      }
      return dir;
    },
  };
}

/** `ztm-hub endpoints --json` (what an operator sees). */
export async function hubEndpoints(hub: HubHandle): Promise<EndpointInfo[]> {
  const r = await hub.cli(['endpoints', '--json']);
  if (r.code !== 0) throw new Error(`ztm-hub endpoints failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as EndpointInfo[];
}

/** The same list over the hub's admin socket: no process start, for polling. */
export function hubEndpointsFast(hub: HubHandle): Promise<EndpointInfo[]> {
  return adminRequest<EndpointInfo[]>({ socketPath: join(hub.dir, 'admin.sock'), method: 'GET', path: '/endpoints', timeoutMs: 5_000 });
}

export async function endpointOf(hub: HubHandle, name: string, fast = false): Promise<EndpointInfo | undefined> {
  return (await (fast ? hubEndpointsFast(hub) : hubEndpoints(hub))).find((e) => e.name === name);
}

/** Wait until the hub reports `name` online (or offline); resolves with the
 * elapsed milliseconds. */
export async function waitOnline(hub: HubHandle, name: string, online = true, timeoutMs = 10_000, intervalMs = 100): Promise<number> {
  const started = Date.now();
  await waitFor(async () => (await endpointOf(hub, name, true))?.online === online, {
    timeoutMs,
    intervalMs,
    what: `${name} ${online ? 'online' : 'offline'} at the hub`,
  });
  return Date.now() - started;
}

export interface AgentStatus {
  hub: { state: string; reverse?: boolean; socketLayer?: string | null; readResumes?: number };
  certificate: { serial: string; expires: string; renewAt: string };
}

export async function agentStatus(agent: AgentHandle): Promise<AgentStatus> {
  const r = await agent.cli(['status', '--json']);
  if (r.code !== 0) throw new Error(`ztm-agent status failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as AgentStatus;
}

export const fileMode = (path: string): number => statSync(path).mode & 0o777;

/** A refused command: non-zero exit and exactly one line on stderr that says why. */
export function assertRefused(t: Assert, r: RunResult, reason: RegExp, what: string): void {
  t.not(r.code, null, `${what}: exited on its own (not killed by the time limit)`);
  t.not(r.code, 0, `${what}: non-zero exit`);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  t.equal(lines.length, 1, `${what}: one line on stderr (got ${JSON.stringify(r.stderr)})`);
  t.match(lines[0] ?? '', reason, `${what}: stderr says why`);
}

let permits = 0;
/** A permit made over the running hub's admin socket (what `ztm-hub permit
 * create` does, without starting a process), written to a 0600 file. */
export async function permitFast(hub: HubHandle, name: string, ttl?: string): Promise<string> {
  const p = await adminRequest<unknown>({ socketPath: join(hub.dir, 'admin.sock'), method: 'POST', path: '/permits', body: { name, ttl } });
  const file = join(hub.dir, '..', `${name}-${++permits}.fast-permit.json`);
  writeFileSync(file, JSON.stringify(p, null, 2), { mode: 0o600 });
  return file;
}

export interface Creds {
  key: string;
  cert: string;
  ca: string;
}

/** An enrolled agent's key, certificate and mesh CA, read from its data directory. */
export function agentCreds(dir: string): Creds {
  const read = (f: string) => readFileSync(join(dir, f), 'utf8');
  return { key: read('key.pem'), cert: read('cert.pem'), ca: read('ca.pem') };
}

/** Log lines of a daemon's JSON output (several runs concatenated). */
export function logLines(output: string): Record<string, unknown>[] {
  return output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The daemon's exit code if it exits within `ms`, else 'still running'. */
export async function exitWithin(d: Daemon, ms: number): Promise<number | null | 'still running'> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<'still running'>((resolve) => {
    timer = setTimeout(() => resolve('still running'), ms);
  });
  const r = await Promise.race([d.exited, limit]);
  clearTimeout(timer);
  return r;
}
