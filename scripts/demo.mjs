#!/usr/bin/env node
// A whole mesh on this machine with embedded defaults: a hub and two agents on
// loopback, enrolled with one-time permits. Ctrl-C stops everything.
// Usage: node scripts/demo.mjs [--once] [--dir DIR]
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, get as httpGet } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(fileURLToPath(import.meta.url), '../..');
const HUB = join(root, 'packages/hub/bin/ztm-hub.js');
const AGENT = join(root, 'packages/agent/bin/ztm-agent.js');
const args = process.argv.slice(2);
const once = args.includes('--once');
const dirArg = args.indexOf('--dir');
const dir = dirArg >= 0 ? resolve(args[dirArg + 1]) : mkdtempSync(join(tmpdir(), 'ztm-demo-'));
const children = [];

function cli(bin, argv) {
  const r = spawnSync(process.execPath, [bin, ...argv], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${bin.split('/').pop()} ${argv.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

function daemon(bin, argv, name) {
  const c = spawn(process.execPath, [bin, ...argv], { stdio: ['ignore', 'pipe', 'inherit'] });
  c.stdout.on('data', (d) => {
    for (const line of String(d).split('\n').filter(Boolean)) {
      try {
        const l = JSON.parse(line);
        console.log(`[${name}] ${l.msg}${l.endpoint ? ` (${l.endpoint})` : ''}`);
      } catch {
        console.log(`[${name}] ${line}`);
      }
    }
  });
  children.push(c);
  return c;
}

const freePort = () =>
  new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });

async function waitOnline(name) {
  for (let i = 0; i < 100; i++) {
    const list = JSON.parse(cli(HUB, ['endpoints', '--data', join(dir, 'hub'), '--json']));
    if (list.find((e) => e.name === name)?.online) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${name} did not come online`);
}

function stop(code = 0) {
  for (const c of children) c.kill('SIGTERM');
  if (dirArg < 0) setTimeout(() => rmSync(dir, { recursive: true, force: true }), 500);
  setTimeout(() => process.exit(code), 600);
}
process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));

try {
  const port = await freePort();
  const hubDir = join(dir, 'hub');
  console.log(`data in ${dir}`);
  cli(HUB, ['init', '--data', hubDir, '--names', `127.0.0.1:${port}`, '--mesh', 'demo']);
  daemon(HUB, ['serve', '--data', hubDir, '--listen', `127.0.0.1:${port}`], 'hub');
  await new Promise((r) => setTimeout(r, 500));
  for (const name of ['alpha', 'beta']) {
    const permit = join(dir, `${name}.permit.json`);
    cli(HUB, ['permit', 'create', name, '--data', hubDir, '--out', permit]);
    cli(AGENT, ['join', '--permit', permit, '--data', join(dir, name)]);
    daemon(AGENT, ['run', '--data', join(dir, name)], name);
    await waitOnline(name);
  }
  console.log(`\n${cli(HUB, ['endpoints', '--data', hubDir])}`);
  console.log(cli(HUB, ['ping', 'alpha', '--data', hubDir]));

  // A service only beta can reach, and a tunnel that brings it to alpha.
  const service = createHttpServer((req, res) => res.end(`hello from beta's private service (${req.url})\n`));
  await new Promise((r) => service.listen(0, '127.0.0.1', r));
  const entry = await freePort();
  cli(AGENT, [
    'tunnel',
    'open',
    'outbound',
    'tcp/web',
    '--target',
    `127.0.0.1:${service.address().port}`,
    '--allow-endpoint',
    'alpha',
    '--data',
    join(dir, 'beta'),
  ]);
  cli(AGENT, ['tunnel', 'open', 'inbound', 'tcp/web', '--listen', String(entry), '--data', join(dir, 'alpha')]);
  const body = await new Promise((res, rej) =>
    httpGet(`http://127.0.0.1:${entry}/through-the-mesh`, (r) => {
      let b = '';
      r.on('data', (d) => {
        b += d;
      });
      r.on('end', () => res(b));
    }).on('error', rej),
  );
  console.log(`GET http://127.0.0.1:${entry}/through-the-mesh → ${body}`);
  console.log(cli(AGENT, ['tunnel', 'list', '--data', join(dir, 'alpha')]));
  children.push({ kill: () => service.close() });
  console.log(`try:  curl http://127.0.0.1:${entry}/
      node ${HUB} endpoints --data ${hubDir}
      node ${AGENT} status --data ${join(dir, 'alpha')}
Ctrl-C stops the mesh.`);
  if (once) stop(0);
} catch (err) {
  console.error(`demo failed: ${err.message}`);
  stop(1);
}
