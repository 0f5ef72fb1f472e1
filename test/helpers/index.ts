/**
 * End-to-end helpers: real hub and agent processes, real TLS, real SQLite
 * files, loopback only. Each helper registers its own teardown.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

type T = {
  teardown(fn: () => unknown): void;
  testdir(): string;
};

const root = resolve(fileURLToPath(import.meta.url), '../../..');
export const HUB_BIN = join(root, 'packages/hub/bin/ztm-hub.js');
export const AGENT_BIN = join(root, 'packages/agent/bin/ztm-agent.js');

const dirs = new WeakMap<object, string>();
/** The test's own directory, made once and removed at teardown. Short, under
 * the system temp dir: Unix socket paths (admin.sock) must fit in 107 bytes. */
export function testDir(t: T): string {
  let d = dirs.get(t);
  if (!d) {
    const made = mkdtempSync(join(tmpdir(), 'ztm-t-'));
    d = made;
    dirs.set(t, d);
    t.teardown(() => rmSync(made, { recursive: true, force: true }));
  }
  return d;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a CLI to completion (bounded in time). */
export async function run(bin: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => {
    stdout += c;
  });
  child.stderr.on('data', (c: Buffer) => {
    stderr += c;
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
  const [code] = (await once(child, 'close')) as [number | null];
  clearTimeout(timer);
  return { code, stdout, stderr };
}

export const hubCli = (args: string[], opts?: Parameters<typeof run>[2]) => run(HUB_BIN, args, opts);
export const agentCli = (args: string[], opts?: Parameters<typeof run>[2]) => run(AGENT_BIN, args, opts);

/** A free loopback TCP port, picked at random below the kernel's ephemeral
 * range (32768+) so outgoing connections of parallel tests cannot take it
 * between our check and its use; checked by binding it (TCP and UDP). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const srv = createServer();
    const ok = await new Promise<boolean>((resolve) => {
      srv.once('error', () => resolve(false));
      srv.listen(port, host, () => resolve(true));
    });
    if (!ok) continue;
    await new Promise((r) => srv.close(r));
    const udp = createSocket('udp4');
    const uok = await new Promise<boolean>((resolve) => {
      udp.once('error', () => resolve(false));
      udp.bind(port, host, () => resolve(true));
    });
    await new Promise<void>((r) => {
      try {
        udp.close(() => r());
      } catch {
        r();
      }
    });
    if (uok) return port;
  }
  throw new Error('no free port found');
}

export async function waitFor<V>(cond: () => V | Promise<V>, opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<NonNullable<V>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as NonNullable<V>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${opts.what ?? 'condition'}${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}

/** A daemon process whose stdout (JSON logs) is captured to memory. */
export class Daemon {
  child: ChildProcess;
  output = '';
  stderr = '';
  readonly exited: Promise<number | null>;

  /** `prefix` runs the daemon under another command (e.g. `ip netns exec NS`). */
  constructor(bin: string, args: string[], env?: NodeJS.ProcessEnv, prefix: readonly string[] = []) {
    const [cmd, ...rest] = [...prefix, process.execPath, bin, ...args];
    this.child = spawn(cmd as string, rest, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    this.child.stdout?.on('data', (c: Buffer) => {
      this.output += c;
    });
    this.child.stderr?.on('data', (c: Buffer) => {
      this.stderr += c;
    });
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null);
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  logs(): Record<string, unknown>[] {
    return this.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return []; // a line still being written
        }
      });
  }

  async waitLog(match: (l: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    try {
      return await waitFor(
        () => {
          const hit = this.logs().find(match);
          if (!hit && !this.running) throw new Error(`process exited (${this.child.exitCode ?? this.child.signalCode}): ${this.stderr.trim()}`);
          return hit;
        },
        { timeoutMs, what: 'log line' },
      );
    } catch (err) {
      // What the daemon did meanwhile: the last lines say why a flake was one.
      const tail = this.logs()
        .slice(-12)
        .map(({ time, msg, level, app, pid, hostname, ...rest }) => `${String(msg)} ${JSON.stringify(rest)}`);
      throw new Error(`${(err as Error).message}; stderr: ${this.stderr.trim().slice(0, 300)}; last log lines:\n${tail.join('\n')}`);
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<number | null> {
    if (!this.running) return this.child.exitCode;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

export interface HubHandle {
  dir: string;
  port: number;
  address: string;
  mesh: string;
  daemon: Daemon;
  /** Every daemon this hub ran, for log checks across restarts. */
  allOutput(): string;
  cli(args: string[]): Promise<RunResult>;
  restart(extraArgs?: string[]): Promise<void>;
  permit(name: string, extra?: string[]): Promise<string>;
}

export interface HubOptions {
  mesh?: string;
  serveArgs?: string[];
}

export async function startHub(t: T, opts: HubOptions = {}): Promise<HubHandle> {
  const base = testDir(t);
  const dir = join(base, 'hub');
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  const mesh = opts.mesh ?? 'test';
  const init = await hubCli(['init', '--data', dir, '--names', address, '--mesh', mesh]);
  if (init.code !== 0) throw new Error(`hub init failed: ${init.stderr}`);
  const outputs: Daemon[] = [];
  const serve = (extra: string[] = []) => {
    const d = new Daemon(HUB_BIN, ['serve', '--data', dir, '--listen', address, '--log-level', 'debug', ...(opts.serveArgs ?? []), ...extra]);
    outputs.push(d);
    return d;
  };
  const handle: HubHandle = {
    dir,
    port,
    address,
    mesh,
    daemon: serve(),
    allOutput: () => outputs.map((d) => d.output).join(''),
    cli: (args) => hubCli([...args, '--data', dir]),
    async restart(extra) {
      await handle.daemon.stop();
      handle.daemon = serve(extra);
      await handle.daemon.waitLog((l) => l.msg === 'hub listening');
    },
    async permit(name, extra = []) {
      const file = join(base, `${name}-${Date.now()}-${Math.random().toString(36).slice(2)}.permit.json`);
      const r = await hubCli(['permit', 'create', name, '--data', dir, '--out', file, ...extra]);
      if (r.code !== 0) throw new Error(`permit create failed: ${r.stderr}`);
      return file;
    },
  };
  t.teardown(() => Promise.all(outputs.map((d) => d.stop('SIGKILL'))));
  await handle.daemon.waitLog((l) => l.msg === 'hub listening');
  return handle;
}

export interface AgentHandle {
  name: string;
  dir: string;
  daemon: Daemon;
  cli(args: string[]): Promise<RunResult>;
  restart(extra?: string[]): Promise<void>;
  allOutput(): string;
}

/** Permit + join, without running. */
export async function joinAgent(t: T, hub: HubHandle, name: string): Promise<string> {
  const dir = join(testDir(t), 'agents', name);
  mkdirSync(join(testDir(t), 'agents'), { recursive: true });
  const permit = await hub.permit(name);
  const r = await agentCli(['join', '--permit', permit, '--data', dir]);
  if (r.code !== 0) throw new Error(`join ${name} failed: ${r.stderr}`);
  return dir;
}

/** Permit, join and run an agent; resolves once it is online. */
export async function startAgent(t: T, hub: HubHandle, name: string, runArgs: string[] = []): Promise<AgentHandle> {
  const dir = await joinAgent(t, hub, name);
  return runAgent(t, dir, name, runArgs);
}

export async function runAgent(t: T, dir: string, name: string, runArgs: string[] = []): Promise<AgentHandle> {
  const outputs: Daemon[] = [];
  const spawnIt = (extra: string[] = []) => {
    const d = new Daemon(AGENT_BIN, ['run', '--data', dir, '--log-level', 'debug', ...runArgs, ...extra]);
    outputs.push(d);
    return d;
  };
  const handle: AgentHandle = {
    name,
    dir,
    daemon: spawnIt(),
    cli: (args) => agentCli([...args, '--data', dir]),
    allOutput: () => outputs.map((d) => d.output).join(''),
    async restart(extra) {
      await handle.daemon.stop();
      handle.daemon = spawnIt(extra);
      await handle.daemon.waitLog((l) => l.msg === 'online');
    },
  };
  t.teardown(() => Promise.all(outputs.map((d) => d.stop('SIGKILL'))));
  await handle.daemon.waitLog((l) => l.msg === 'online');
  return handle;
}

export function readJson<V>(file: string): V {
  return JSON.parse(readFileSync(file, 'utf8')) as V;
}
