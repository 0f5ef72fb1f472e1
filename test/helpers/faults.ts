/**
 * Shared by the fault tests (faults-process, faults-storage): short
 * keepalives, a read-only view of the registry with SQLite's integrity
 * check, admin-socket shortcuts, agents that can be killed and respawned,
 * tunnel and file checks.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TunnelView } from '@ztm/agent';
import { type EndpointInfo, type FileEntry, type Permit, adminRequest } from '@ztm/proto';
import { AGENT_BIN, type AgentHandle, Daemon, type HubHandle, agentCli, readJson, runAgent, type startHub, testDir, waitFor } from './index.js';
import { assertRefused, exitWithin, permitFast } from './e2e-checks.js';
import { connect, hashAll, pseudoRandom, sha256Of, writeAll } from './servers.js';

export type T = Parameters<typeof startHub>[0];

export interface Assert {
  ok(v: unknown, msg: string): unknown;
  notOk(v: unknown, msg: string): unknown;
  same(found: unknown, wanted: unknown, msg: string): unknown;
}

// Short keepalives, as the other end-to-end tests use. Graceful stops are
// not under test here; a short grace keeps them quick.
export const HUB_ARGS = ['--keepalive-interval', '1s', '--keepalive-timeout', '3s', '--shutdown-grace', '1s'];
export const AGENT_ARGS = ['--keepalive-interval', '1s', '--keepalive-timeout', '3s', '--shutdown-grace', '1s'];
export const needsRoot = process.getuid?.() === 0 ? false : 'mount and chattr need root';
export const MiB = 1024 * 1024;

/** better-sqlite3 is the hub's dependency; the test opens the registry read-only with it. */
export interface Db {
  pragma(sql: string, o?: { simple?: boolean }): unknown;
  prepare(sql: string): { all(...p: unknown[]): unknown[] };
  close(): void;
}
export const repo = resolve(fileURLToPath(import.meta.url), '../../..');
export const Database = createRequire(join(repo, 'packages/hub/package.json'))('better-sqlite3') as new (
  file: string,
  o: { readonly: boolean; fileMustExist: boolean },
) => Db;

export interface RegistryView {
  integrity: unknown;
  endpoints: { name: string; revoked: number }[];
  permits: { token_sha256: string; endpoint: string; used: number }[];
  files: { name: string; sha256: string; deleted: number }[];
}

/** The registry as a read-only SQLite connection sees it (safe beside a running hub: WAL). */
export function inspectRegistry(hub: HubHandle): RegistryView {
  const db = new Database(join(hub.dir, 'hub.db'), { readonly: true, fileMustExist: true });
  try {
    return {
      integrity: db.pragma('integrity_check', { simple: true }),
      endpoints: db.prepare('SELECT name, revoked_at IS NOT NULL AS revoked FROM endpoints ORDER BY name').all() as RegistryView['endpoints'],
      permits: db.prepare('SELECT token_sha256, endpoint, used_at IS NOT NULL AS used FROM permits ORDER BY endpoint').all() as RegistryView['permits'],
      files: db.prepare('SELECT name, sha256, deleted FROM files ORDER BY name').all() as RegistryView['files'],
    };
  } finally {
    db.close();
  }
}

export const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
export const shaFile = (p: string) => sha(readFileSync(p));
export const tokenHash = (permitFile: string) => sha(readJson<Permit>(permitFile).token);
/** What must survive a restart (online and lastSeen may change). */
export const durable = (list: EndpointInfo[]) => list.map(({ name, certExpires, revoked, enrolledAt }) => ({ name, certExpires, revoked, enrolledAt }));

export function sh(cmd: string, args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.toString().trim() || e.message}`);
  }
}

/** Unmount, lazily if something still holds it; never throws (teardown). */
export function unmount(dir: string): void {
  for (const args of [[dir], ['-l', dir]]) {
    try {
      execFileSync('umount', args, { stdio: 'ignore', timeout: 20_000 });
      return;
    } catch {}
  }
}

// The admin sockets: operations without starting a CLI process each time.
export const hubApi = <V>(hub: HubHandle, method: 'GET' | 'POST', path: string, body?: unknown) =>
  adminRequest<V>({ socketPath: join(hub.dir, 'admin.sock'), method, path, body, timeoutMs: 10_000 });
export const agentApi = <V>(a: AgentHandle, method: 'GET' | 'POST', path: string, body?: unknown) =>
  adminRequest<V>({ socketPath: join(a.dir, 'admin.sock'), method, path, body, timeoutMs: 20_000 });
export const filesOf = (a: AgentHandle) => agentApi<(FileEntry & { local: string })[]>(a, 'GET', '/files');
export const tunnelsOf = async (a: AgentHandle) => (await agentApi<TunnelView[]>(a, 'GET', '/tunnels')).map((v) => `${v.direction} ${v.tunnel}`);
/** A publish that must work (the admin API the CLI uses). */
export const publishOk = (a: AgentHandle, path: string, name: string) => agentApi<FileEntry>(a, 'POST', '/files/publish', { path, name });
/** A publish through the CLI, to see what the user sees. */
export const publishCli = (a: AgentHandle, path: string, name: string) => a.cli(['publish', 'file', path, '--as', name]);

/** Permit (admin socket), join and run an agent; resolves once it is online. */
export async function agent(t: T, hub: HubHandle, name: string): Promise<AgentHandle> {
  mkdirSync(join(testDir(t), 'agents'), { recursive: true });
  const dir = join(testDir(t), 'agents', name);
  const r = await agentCli(['join', '--permit', await permitFast(hub, name), '--data', dir]);
  if (r.code !== 0) throw new Error(`join ${name} failed: ${r.stderr}`);
  return runAgent(t, dir, name, AGENT_ARGS);
}

/** Run an agent on its data directory again (after stopping it if it runs),
 * optionally without waiting for it to come online (the hub may be down). */
export async function respawn(t: T, a: AgentHandle, waitOnline = true): Promise<void> {
  if (a.daemon.running) await a.daemon.stop();
  const d = new Daemon(AGENT_BIN, ['run', '--data', a.dir, '--log-level', 'debug', ...AGENT_ARGS]);
  t.teardown(() => d.stop('SIGKILL'));
  a.daemon = d;
  if (waitOnline) await d.waitLog((l) => l.msg === 'online');
}

/** One echo of `bytes` pseudo-random bytes through `port`; true if every byte came back. */
export async function echoOnce(port: number, bytes: number, seed: string, timeoutMs = 10_000): Promise<boolean> {
  const c = await connect(port);
  const timer = setTimeout(() => c.destroy(new Error('echo timed out')), timeoutMs);
  try {
    const back = hashAll(c);
    back.catch(() => {});
    await writeAll(c, pseudoRandom(seed, bytes));
    const got = await back;
    return got.bytes === bytes && got.sha256 === sha256Of(seed, bytes);
  } finally {
    clearTimeout(timer);
    c.destroy();
  }
}

let probes = 0;
/** Wait until the tunnel carries an echo; resolves with the milliseconds waited. */
export async function tunnelWorks(port: number, what: string, timeoutMs = 20_000): Promise<number> {
  const started = Date.now();
  await waitFor(() => echoOnce(port, 64 * 1024, `probe-${++probes}`, 3_000).catch(() => false), { timeoutMs, intervalMs: 50, what });
  return Date.now() - started;
}

export const received = (a: AgentHandle, name: string) => join(a.dir, 'files', name);

export async function waitReceived(a: AgentHandle, name: string, want: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(() => existsSync(received(a, name)) && shaFile(received(a, name)) === want, { timeoutMs, what: `${a.name} has ${name}` });
}

/** Write a file of random bytes; returns its SHA-256. */
export function randomFile(path: string, size: number): string {
  const fd = openSync(path, 'w');
  const h = createHash('sha256');
  for (let n = 0; n < size; n += MiB) {
    const b = randomBytes(Math.min(MiB, size - n));
    writeSync(fd, b);
    h.update(b);
  }
  closeSync(fd);
  return h.digest('hex');
}

/** A publish the hub must refuse: the user sees one line that says why, and
 * the agent stays up (an early refusal once killed it: unhandled rejection). */
export async function refusedPublish(
  t: T & Assert & Parameters<typeof assertRefused>[0],
  _hub: HubHandle,
  a: AgentHandle,
  path: string,
  name: string,
  reason: RegExp,
  what: string,
): Promise<void> {
  const r = await publishCli(a, path, name);
  assertRefused(t, r, reason, what);
  t.equal(await exitWithin(a.daemon, 500), 'still running', `${what}: the agent stays up`);
}

/** Nothing of a refused upload is on the hub or reached an agent. */
export async function assertNoTrace(t: Assert, hub: HubHandle, agents: AgentHandle[], name: string, content: string): Promise<void> {
  t.notOk(existsSync(join(hub.dir, 'content', content)), `${name}: no content under its final name on the hub`);
  t.same(readdirSync(join(hub.dir, 'content', 'partial')), [], `${name}: no partial upload left on the hub`);
  t.notOk(
    inspectRegistry(hub).files.some((f) => f.name === name),
    `${name}: not in the hub's catalogue`,
  );
  for (const a of agents) {
    t.notOk(
      (await filesOf(a)).some((f) => f.name === name),
      `${name}: ${a.name} does not list it`,
    );
    t.notOk(existsSync(received(a, name)), `${name}: ${a.name} has no copy`);
  }
}
