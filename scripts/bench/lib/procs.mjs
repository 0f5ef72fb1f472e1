// Child processes of the benchmark: spawned in their own process groups, with
// output to log files in the run's temp dir, every one killed (group and all)
// at the end, on success, failure or a signal. Also /proc sampling: CPU time
// and RSS of a process and its descendants.
import { execFileSync, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { appendFileSync, closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** @type {Set<{name: string, child: import('node:child_process').ChildProcess, log: string}>} */
const live = new Set();
const cleanups = [];
/** Set once cleanup starts: nothing new may be started after it. */
let closing = false;
function refuseWhenClosing(name) {
  if (closing) throw new Error(`not starting ${name}: shutting down`);
}
export const shuttingDown = () => closing;
let tmp;
let pidFile;

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** The run's temp dir (short: Unix socket paths must fit in 107 bytes). The
 * bash wrapper may name it (ZTM_BENCH_TMP) so it can clean up after a crash. */
export function runDir() {
  if (!tmp) {
    tmp = process.env.ZTM_BENCH_TMP || mkdtempSync(join(tmpdir(), 'ztmb-'));
    pidFile = join(tmp, 'pids');
    writeFileSync(pidFile, '');
  }
  return tmp;
}

export function onCleanup(fn) {
  cleanups.push(fn);
}

/** Record the pid of a process group leader started outside start() (by a
 * script, with setsid) so that scripts/bench/run can kill its group if the
 * benchmark dies before its own cleanup runs. */
export function recordPid(pid) {
  runDir();
  appendFileSync(pidFile, `${pid}\n`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free loopback port (closed again before it is returned). */
export async function freePort() {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

/** Start a daemon. Returns a handle with pid, log file, exit promise. */
const logNames = new Map();
function logFile(name) {
  const n = (logNames.get(name) ?? 0) + 1;
  logNames.set(name, n);
  return join(runDir(), n === 1 ? `${name}.log` : `${name}.${n}.log`);
}

export function start(name, cmd, args, opts = {}) {
  refuseWhenClosing(name);
  const log = logFile(name);
  const fd = openSync(log, 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', fd, fd], detached: true, env: { ...process.env, ...opts.env }, cwd: opts.cwd });
  closeSync(fd);
  const h = { name, child, log, pid: child.pid, exited: once(child, 'exit').catch(() => []) };
  live.add(h);
  appendFileSync(pidFile, `${child.pid}\n`);
  child.on('exit', () => live.delete(h));
  child.on('error', () => {});
  return h;
}

/** Fork a Node module with an IPC channel; `call(msg)` sends { id, ...msg }
 * and resolves with the reply of the same id (rejects on { ok: false }). */
export function forkWorker(name, modulePath, args = [], opts = {}) {
  refuseWhenClosing(name);
  const log = logFile(name);
  const fd = openSync(log, 'a');
  const child = fork(modulePath, args, { stdio: ['ignore', fd, fd, 'ipc'], detached: true, execArgv: opts.execArgv ?? [] });
  closeSync(fd);
  const h = { name, child, log, pid: child.pid, exited: once(child, 'exit').catch(() => []) };
  live.add(h);
  appendFileSync(pidFile, `${child.pid}\n`);
  child.on('exit', () => live.delete(h));
  child.on('error', () => {});
  let nextId = 1;
  const pending = new Map();
  let readyResolve;
  h.ready = new Promise((r) => {
    readyResolve = r;
  });
  child.on('message', (m) => {
    if (m.ready) return readyResolve();
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m);
    else p.reject(new Error(`${name}: ${m.error}`));
  });
  child.on('exit', (code, signal) => {
    for (const p of pending.values()) p.reject(new Error(`${name} exited (${code ?? signal}): ${tail(h, 5)}`));
    pending.clear();
  });
  h.call = (msg) =>
    new Promise((resolvePromise, reject) => {
      const id = nextId++;
      pending.set(id, { resolve: resolvePromise, reject });
      child.send({ id, ...msg });
    });
  return h;
}

export function running(h) {
  return h.child.exitCode === null && h.child.signalCode === null;
}

export function tail(h, n = 20) {
  try {
    return readFileSync(h.log, 'utf8').split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

/** Kill a daemon's whole process group (its own, made by detached spawn). */
export async function stop(h, signal = 'SIGTERM', graceMs = 3000) {
  if (!running(h)) return;
  try {
    process.kill(-h.pid, signal);
  } catch {}
  const t = setTimeout(() => {
    try {
      process.kill(-h.pid, 'SIGKILL');
    } catch {}
  }, graceMs);
  await h.exited;
  clearTimeout(t);
  // Children that outlived the leader (sshd's session process).
  try {
    process.kill(-h.pid, 'SIGKILL');
  } catch {}
}

/** Run a command to completion, bounded in time; stdout as text. */
export function runCmd(cmd, args, { timeoutMs = 60_000, env, input } = {}) {
  return new Promise((resolvePromise, reject) => {
    if (closing) return reject(new Error(`not running ${cmd}: shutting down`));
    const child = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], env: { ...process.env, ...env }, detached: true });
    const h = { name: cmd, child, pid: child.pid };
    live.add(h);
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => {
      out += c;
    });
    child.stderr.on('data', (c) => {
      err += c;
    });
    if (input !== undefined) child.stdin.end(input);
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      live.delete(h);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(h);
      if (code === 0) resolvePromise(out);
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code ?? signal}: ${(err || out).trim().slice(-800)}`));
    });
  });
}

/** Wait until a TCP port on loopback accepts a connection. */
export async function waitPort(port, timeoutMs = 15_000, what = `port ${port}`) {
  const { connect } = await import('node:net');
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise((r) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        r(true);
      });
      s.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** Wait until a daemon's log file has a line matching `re`. */
export async function waitLog(h, re, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text = '';
    try {
      text = readFileSync(h.log, 'utf8');
    } catch {}
    if (re.test(text)) return;
    if (!running(h)) throw new Error(`${h.name} exited: ${tail(h, 10)}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${re} in ${h.name}'s log: ${tail(h, 10)}`);
    await sleep(50);
  }
}

// ---- /proc sampling ----

function childrenMap() {
  const kids = new Map();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(d));
    } catch {}
  }
  return kids;
}

/** The pid and all its descendants. */
export function tree(pid) {
  const kids = childrenMap();
  const out = [];
  const todo = [pid];
  while (todo.length && out.length < 1000) {
    const p = todo.pop();
    out.push(p);
    todo.push(...(kids.get(p) ?? []));
  }
  return out;
}

/** CPU seconds (user + system) of one process. */
export function cpuSeconds(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

/** RSS in KiB of one process. */
export function rssKiB(pid) {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** CPU seconds and RSS of a process tree, summed. */
export function sampleTree(pid) {
  let cpu = 0;
  let rss = 0;
  for (const p of tree(pid)) {
    cpu += cpuSeconds(p);
    rss += rssKiB(p);
  }
  return { cpu, rss };
}

export function loadAverage() {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
  } catch {
    return [];
  }
}

/** Kill everything still running and remove the temp dir. Idempotent. */
let cleaned = false;
export async function cleanupAll({ keep = false } = {}) {
  if (cleaned) return;
  cleaned = true;
  closing = true;
  for (const fn of cleanups.reverse()) {
    try {
      await fn();
    } catch {}
  }
  const all = [...live];
  for (const h of all) {
    try {
      process.kill(-h.pid, 'SIGTERM');
    } catch {}
  }
  const deadline = Date.now() + 3000;
  while ([...live].some((h) => h.child && running(h)) && Date.now() < deadline) await sleep(50);
  for (const h of all) {
    try {
      process.kill(-h.pid, 'SIGKILL');
    } catch {}
  }
  if (tmp && !keep) rmSync(tmp, { recursive: true, force: true });
}
