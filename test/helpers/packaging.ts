/** Shared by the packaging tests: repository paths, YAML, small process helpers. */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AGENT_BIN, HUB_BIN, waitFor } from './index.js';

export const root = resolve(fileURLToPath(import.meta.url), '../../..');
export const dockerDir = join(root, 'docker');
export const read = (p: string) => readFileSync(join(root, p), 'utf8');

// `yaml` is a dependency of the packages, not of the root: load it from there.
export const YAML = createRequire(join(root, 'packages/agent/package.json'))('yaml') as {
  parse(text: string, options?: { merge?: boolean }): unknown;
};
export type Obj = Record<string, unknown>;
export const yamlFile = (p: string) => YAML.parse(read(p), { merge: true }) as Obj;

export function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export function sh(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  const r = spawnSync(cmd, args, { cwd: opts.cwd ?? root, env: opts.env ?? process.env, encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000 });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '', error: r.error };
}

/** Executables that run the real CLIs, standing in for /usr/bin/ztm-hub and /usr/bin/ztm-agent. */
export function stubBins(dir: string): { hub: string; agent: string; dir: string } {
  const bin = join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  const make = (name: string, target: string) => {
    const p = join(bin, name);
    writeFileSync(p, `#!/bin/sh\nexec '${process.execPath}' '${target}' "$@"\n`);
    chmodSync(p, 0o755);
    return p;
  };
  return { hub: make('ztm-hub', HUB_BIN), agent: make('ztm-agent', AGENT_BIN), dir: bin };
}

// ---------------------------------------------------------------------------
// systemd units

/** A unit's main process: JSON logs on stdout. */
export class Proc {
  child: ChildProcess;
  out = '';
  exited: Promise<number | null>;
  constructor(argv: string[], env: NodeJS.ProcessEnv, cwd: string) {
    this.child = spawn(argv[0] as string, argv.slice(1), { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.on('data', (c: Buffer) => {
      this.out += c;
    });
    this.child.stderr?.on('data', (c: Buffer) => {
      this.out += c;
    });
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null);
  }
  async waitLog(msg: string): Promise<void> {
    const seen = () => this.out.split('\n').some((l) => l.startsWith('{"') && l.endsWith('}') && (JSON.parse(l) as { msg?: string }).msg === msg);
    try {
      await waitFor(seen, { timeoutMs: 15_000, what: `log "${msg}"` });
    } catch (err) {
      throw new Error(`${(err as Error).message}; exit ${this.child.exitCode ?? this.child.signalCode}; output: ${this.out.slice(-1500)}`);
    }
  }
  async stop(signal: NodeJS.Signals, timeoutMs: number): Promise<number | null | string> {
    this.child.kill(signal);
    return Promise.race([this.exited, new Promise<string>((r) => setTimeout(() => r(`not stopped after ${timeoutMs} ms`), timeoutMs))]);
  }
  kill(signal: NodeJS.Signals) {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}
