/**
 * No secret reaches a log or a terminal: a full flow at --log-level debug
 * (init, permits, join, run, ping, refusals, revoke, shutdown), every byte of
 * hub and agent stdout/stderr collected, searched for private keys, join
 * tokens and certificate bodies.
 */
import { once } from 'node:events';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { AGENT_BIN, Daemon, HUB_BIN, type RunResult, agentCli, freePort, hubCli, readJson, testDir } from './helpers/index.js';
import { exitWithin, scope, sleep } from './helpers/e2e-checks.js';

t.test('secrets stay out of logs', async (t) => {
  const base = testDir(scope(t, 'sec'));
  const hubDir = join(base, 'hub');
  const address = `127.0.0.1:${await freePort()}`;
  const cli: RunResult[] = [];
  const daemons: Daemon[] = [];
  const hubRun = async (args: string[]) => {
    const r = await hubCli([...args, '--data', hubDir]);
    cli.push(r);
    return r;
  };
  const agentRun = async (args: string[]) => {
    const r = await agentCli(args);
    cli.push(r);
    return r;
  };
  const daemon = (bin: string, args: string[]) => {
    const d = new Daemon(bin, [...args, '--log-level', 'debug']);
    daemons.push(d);
    t.teardown(() => d.stop('SIGKILL'));
    return d;
  };

  t.equal((await hubRun(['init', '--names', address, '--mesh', 'sec'])).code, 0, 'init');
  const hub = daemon(HUB_BIN, ['serve', '--data', hubDir, '--listen', address, '--cert-lifetime', '1h']);
  await hub.waitLog((l) => l.msg === 'hub listening');

  const permit = (name: string) => join(base, `${name}.permit.json`);
  for (const name of ['alpha', 'beta', 'spare']) t.equal((await hubRun(['permit', 'create', name, '--out', permit(name)])).code, 0, `permit ${name}`);
  const agentDir = (name: string) => join(base, name);
  t.equal((await agentRun(['join', '--permit', permit('alpha'), '--data', agentDir('alpha')])).code, 0, 'join alpha');
  t.equal((await agentRun(['join', '--permit', permit('beta'), '--data', agentDir('beta'), '--json'])).code, 0, 'join beta --json');
  // Refusals print what went wrong, never the permit that did.
  t.not((await agentRun(['join', '--permit', permit('alpha'), '--data', agentDir('again')])).code, 0, 'reused permit refused');
  const forged = join(base, 'forged.json');
  const spare = readFileSync(permit('spare'), 'utf8');
  writeFileSync(forged, spare.replace('"endpoint": "spare"', '"endpoint": "forged"'));
  t.not((await agentRun(['join', '--permit', forged, '--data', agentDir('forged')])).code, 0, 'forged permit refused');

  const alpha = daemon(AGENT_BIN, ['run', '--data', agentDir('alpha')]);
  const beta = daemon(AGENT_BIN, ['run', '--data', agentDir('beta')]);
  await Promise.all([alpha, beta].map((d) => d.waitLog((l) => l.msg === 'online')));

  t.equal((await hubRun(['ping', 'alpha', '--json'])).code, 0, 'ping');
  // A failed TLS handshake is logged (at debug) with its reason.
  const junk = connect(Number(address.split(':')[1]), '127.0.0.1');
  junk.on('error', () => {});
  junk.end('GET / HTTP/1.1\r\n\r\n');
  await once(junk, 'close');
  for (const args of [['endpoints'], ['endpoints', '--json'], ['status', '--json']]) await hubRun(args);
  for (const args of [['status'], ['status', '--json'], ['endpoints', '--json']]) await agentRun([...args, '--data', agentDir('alpha')]);
  t.equal((await hubRun(['revoke', 'beta'])).code, 0, 'revoke beta');
  t.equal(await exitWithin(beta, 5_000), 3, 'beta exits 3');
  await alpha.stop();
  await hub.stop();
  await sleep(100);

  const everything = [...cli.flatMap((r) => [r.stdout, r.stderr]), ...daemons.flatMap((d) => [d.output, d.stderr])].join('\n');
  t.ok(everything.length > 2_000, `collected ${everything.length} bytes of output`);
  t.ok(
    [hub, alpha].every((d) => d.logs().some((l) => l.level === 20)),
    'hub and agent logged debug lines',
  );

  // The secrets, read from where they live.
  const pems: [string, string][] = [
    ['hub ca.key', join(hubDir, 'ca.key')],
    ['hub hub.key', join(hubDir, 'hub.key')],
    ['hub ca.crt', join(hubDir, 'ca.crt')],
    ['hub hub.crt', join(hubDir, 'hub.crt')],
  ];
  for (const name of ['alpha', 'beta']) {
    for (const f of readdirSync(agentDir(name)).filter((f) => f.endsWith('.pem'))) pems.push([`${name} ${f}`, join(agentDir(name), f)]);
  }
  t.ok(pems.length >= 10, `${pems.length} PEM files to look for`);

  t.notMatch(everything, /PRIVATE KEY/, 'no "PRIVATE KEY" anywhere');
  t.notMatch(everything, /-----BEGIN/, 'no PEM block (certificate, key, CSR) anywhere');
  for (const [what, file] of pems) {
    const runs = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => /^[A-Za-z0-9+/=]{60,}$/.test(l))
      .map((l) => l.slice(0, 60));
    t.ok(runs.length > 0, `${what}: has base64 body lines`);
    const leaked = runs.filter((r) => everything.includes(r));
    t.same(leaked, [], `${what}: no 60-char run of its body in any output`);
  }
  for (const name of ['alpha', 'beta', 'spare']) {
    const { token } = readJson<{ token: string }>(permit(name));
    t.ok(token.length >= 32, `${name} permit token read`);
    t.notOk(everything.includes(token), `${name} permit token not in any output`);
    t.notOk(everything.includes(token.slice(0, 16)), `${name} permit token: not even its first 16 characters`);
  }
});
