import { closeSync, existsSync, mkdirSync, openSync, rmSync, statSync, truncateSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { agentCli, freePort, startHub, testDir } from './helpers/index.js';
import { assertRefused, permitFast, waitOnline } from './helpers/e2e-checks.js';
import { echoServer } from './helpers/servers.js';
import { openTunnel } from './helpers/tunnels.js';
import {
  HUB_ARGS,
  needsRoot,
  MiB,
  inspectRegistry,
  sh,
  unmount,
  hubApi,
  publishOk,
  agent,
  respawn,
  echoOnce,
  tunnelWorks,
  waitReceived,
  randomFile,
  refusedPublish,
  assertNoTrace,
} from './helpers/faults.js';

// Independent meshes, two at a time.
t.jobs = 2;

// ---------------------------------------------------------------- 1. unwritable registry

t.test('registry made unwritable while the hub runs', { skip: needsRoot }, async (t) => {
  // The hub's data directory on its own ext4 filesystem (teardown: thaw, unmount).
  const base = testDir(t);
  const img = join(base, 'data.img');
  const dataDir = join(base, 'hub');
  closeSync(openSync(img, 'w'));
  truncateSync(img, 64 * MiB);
  sh('mkfs.ext4', ['-q', '-F', img]);
  mkdirSync(dataDir);
  sh('mount', ['-o', 'loop', img, dataDir]);
  const frozen: string[] = [];
  const thaw = () => {
    if (frozen.length) sh('chattr', ['-i', ...frozen.splice(0)]);
  };
  t.teardown(() => {
    try {
      thaw();
    } catch {}
    unmount(dataDir);
  });

  const hub = await startHub(t, { serveArgs: HUB_ARGS });
  t.equal(hub.dir, dataDir, 'the hub data directory is the ext4 mount');
  const [a, b, c] = await Promise.all([agent(t, hub, 'a'), agent(t, hub, 'b'), agent(t, hub, 'c')]);
  const echo = await echoServer(t);
  const port = await freePort();
  await openTunnel({ hub, agents: { a, b } }, 'a', 'b', 'tcp/echo', echo.port, port);
  await tunnelWorks(port, 'tunnel up');
  const newcomerPermit = await permitFast(hub, 'newcomer'); // made while writable, used while not
  const work = testDir(t);
  const docSha = randomFile(join(work, 'doc.bin'), MiB);
  const before = inspectRegistry(hub);

  // Immutable: refused to root too, and to descriptors already open. Not the
  // -shm file: SQLite maps it, and readers need it.
  const targets = ['', 'hub.db', 'hub.db-wal', 'content', 'content/partial'].map((f) => join(dataDir, f));
  sh('chattr', ['+i', ...targets]);
  frozen.push(...targets);

  const unwritable = /registry \(hub\.db\) is not writable: writing is not permitted/;
  assertRefused(t, await hub.cli(['permit', 'create', 'refused', '--out', join(work, 'refused.json')]), unwritable, 'permit create');
  t.notOk(existsSync(join(work, 'refused.json')), 'no permit file written');
  assertRefused(t, await agentCli(['join', '--permit', newcomerPermit, '--data', join(work, 'newcomer')]), unwritable, 'join of a new agent');
  assertRefused(t, await hub.cli(['revoke', 'c']), unwritable, 'revoke');
  await refusedPublish(t, hub, a, join(work, 'doc.bin'), 'doc.bin', /file store is not writable: writing is not permitted/, 'publish');
  await assertNoTrace(t, hub, [a, b], 'doc.bin', docSha);
  t.ok(
    hub.daemon.logs().some((l) => l.msg === 'registry write refused by the disk' && l.path === join(dataDir, 'hub.db')),
    'the hub logs the refused writes, with the registry path',
  );

  t.ok(hub.daemon.running, 'hub still running');
  t.ok(await echoOnce(port, 4 * MiB, 'ro-1'), 'the existing tunnel still carries 4 MiB, identical');
  await respawn(t, b);
  await waitOnline(hub, 'b', true, 10_000);
  t.pass('an agent restarted meanwhile comes back online');
  await tunnelWorks(port, 'tunnel through the restarted exit');
  t.ok(c.daemon.running, 'c was not revoked');
  const during = inspectRegistry(hub);
  t.equal(during.integrity, 'ok', 'integrity_check ok while unwritable');
  t.same(during, before, 'registry unchanged: no refused operation left a trace');

  thaw();
  const permitOk = await hub.cli(['permit', 'create', 'accepted', '--out', join(work, 'accepted.json')]);
  t.equal(permitOk.code, 0, `writable again: permit create works${permitOk.code ? `: ${permitOk.stderr.trim()}` : ''}`);
  const newcomer = await agentCli(['join', '--permit', newcomerPermit, '--data', join(work, 'newcomer')]);
  t.equal(newcomer.code, 0, `the permit refused while unwritable was not spent: the new agent joins now${newcomer.code ? `: ${newcomer.stderr.trim()}` : ''}`);
  await hubApi(hub, 'POST', '/revoke', { name: 'c' });
  t.equal(await c.daemon.exited, 3, 'revoke works: c revoked and disconnected');
  await publishOk(a, join(work, 'doc.bin'), 'doc.bin');
  await waitReceived(b, 'doc.bin', docSha);
  t.pass('publish works: b received the file, identical');
  const after = inspectRegistry(hub);
  t.equal(after.integrity, 'ok', 'integrity_check ok while running');
  t.same(
    after.permits.map((p) => [p.endpoint, p.used]),
    [
      ['a', 1],
      ['accepted', 0],
      ['b', 1],
      ['c', 1],
      ['newcomer', 1],
    ],
    'permits recorded as expected',
  );
  t.equal(await hub.daemon.stop(), 0, 'hub stops cleanly');
  t.equal(inspectRegistry(hub).integrity, 'ok', 'integrity_check ok after stopping');
});

// ---------------------------------------------------------------- 2. full disk

t.test('full disk', { skip: needsRoot }, async (t) => {
  const dataDir = join(testDir(t), 'hub');
  mkdirSync(dataDir);
  sh('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=0700', 'tmpfs', dataDir]);
  t.teardown(() => unmount(dataDir));

  const hub = await startHub(t, { serveArgs: HUB_ARGS });
  const [a, b] = await Promise.all([agent(t, hub, 'a'), agent(t, hub, 'b')]);
  const echo = await echoServer(t);
  const port = await freePort();
  await openTunnel({ hub, agents: { a, b } }, 'a', 'b', 'tcp/echo', echo.port, port);
  await tunnelWorks(port, 'tunnel up');
  const work = testDir(t);

  const bigSha = randomFile(join(work, 'big.bin'), 32 * MiB);
  await refusedPublish(t, hub, a, join(work, 'big.bin'), 'big.bin', /not enough space on the hub/, 'publish of 32 MiB onto 24 MiB');
  await assertNoTrace(t, hub, [a, b], 'big.bin', bigSha);
  t.ok(hub.daemon.running, 'hub still running');

  // Fill what is left, to the last byte.
  const filler = join(dataDir, 'filler');
  t.teardown(() => rmSync(filler, { force: true }));
  const fd = openSync(filler, 'w');
  for (const size of [MiB, 4096, 1]) {
    const chunk = Buffer.alloc(size, 1);
    for (let i = 0; i < 64 * 1024; i++) {
      try {
        writeSync(fd, chunk);
      } catch {
        break;
      }
    }
  }
  closeSync(fd);
  t.pass(`disk full (filler ${(statSync(filler).size / MiB).toFixed(1)} MiB)`);

  assertRefused(
    t,
    await hub.cli(['permit', 'create', 'refused', '--out', join(work, 'refused.json')]),
    /registry \(hub\.db\) is not writable: no space left on the device/,
    'permit create on a full disk',
  );
  const smallSha = randomFile(join(work, 'small.bin'), 64 * 1024);
  await refusedPublish(t, hub, a, join(work, 'small.bin'), 'small.bin', /not enough space on the hub/, 'publish of 64 KiB on a full disk');
  await assertNoTrace(t, hub, [a, b], 'small.bin', smallSha);

  t.ok(hub.daemon.running, 'hub still running');
  t.ok(await echoOnce(port, 4 * MiB, 'full-1'), 'the existing tunnel still carries 4 MiB, identical');
  await respawn(t, b);
  await waitOnline(hub, 'b', true, 10_000);
  t.pass('an agent restarted meanwhile comes back online');
  await tunnelWorks(port, 'tunnel through the restarted exit');
  t.equal(inspectRegistry(hub).integrity, 'ok', 'integrity_check ok on the full disk');
  t.notOk(
    inspectRegistry(hub).permits.some((p) => p.endpoint === 'refused'),
    'the refused permit is not in the registry',
  );

  unlinkSync(filler);
  const permitOk = await hub.cli(['permit', 'create', 'accepted', '--out', join(work, 'accepted.json')]);
  t.equal(permitOk.code, 0, `space freed: permit create works${permitOk.code ? `: ${permitOk.stderr.trim()}` : ''}`);
  await publishOk(a, join(work, 'small.bin'), 'small.bin');
  const midSha = randomFile(join(work, 'mid.bin'), 8 * MiB);
  await publishOk(b, join(work, 'mid.bin'), 'mid.bin');
  await Promise.all([waitReceived(b, 'small.bin', smallSha), waitReceived(a, 'mid.bin', midSha)]);
  t.pass('publishing works again: both files identical on the other agent');
  t.equal(inspectRegistry(hub).integrity, 'ok', 'integrity_check ok while running');
  t.equal(await hub.daemon.stop(), 0, 'hub stops cleanly');
  t.equal(inspectRegistry(hub).integrity, 'ok', 'integrity_check ok after stopping');
});
