/**
 * Mesh files end to end: publish once, every agent receives it, verified;
 * replace, unpublish, resume after kills, corruption never lands, bad names
 * and foreign owners refused.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { AgentHandle } from './helpers/index.js';
import { startAgent, testDir, waitFor } from './helpers/index.js';
import { startMesh } from './helpers/tunnels.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const shaFile = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

/** Write `size` pseudo-random bytes to a file without holding them in memory. */
function bigFile(path: string, size: number): string {
  const fd = openSync(path, 'w');
  const h = createHash('sha256');
  const chunk = randomBytes(1024 * 1024);
  for (let n = 0; n < size; n += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, size - n));
    chunk[0] = (chunk[0] as number) ^ 0x5a; // vary the chunks a little
    writeSync(fd, part);
    h.update(part);
  }
  closeSync(fd);
  return h.digest('hex');
}

async function filesOf(a: AgentHandle): Promise<{ name: string; sha256: string; local: string; size: number }[]> {
  const r = await a.cli(['files', '--json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

const received = (a: AgentHandle, name: string) => join(a.dir, 'files', name);

t.test('publish once, every agent receives it', async (t) => {
  const m = await startMesh(t, ['pub', 'b', 'c']);
  const dir = testDir(t);
  const small = randomBytes(1024);
  writeFileSync(join(dir, 'small.bin'), small);
  writeFileSync(join(dir, 'empty'), '');
  const bigSha = bigFile(join(dir, 'big.bin'), 100 * 1024 * 1024);

  for (const [file, as] of [
    ['small.bin', 'conf/small.bin'],
    ['big.bin', 'big.bin'],
    ['empty', 'empty'],
  ]) {
    const r = await m.agents.pub!.cli(['publish', 'file', join(dir, file as string), '--as', as as string]);
    t.equal(r.code, 0, `publish ${as}: ${r.stderr}`);
  }
  for (const a of [m.agents.b!, m.agents.c!]) {
    await waitFor(async () => (await filesOf(a)).every((f) => f.local === 'present') && (await filesOf(a)).length === 3, {
      timeoutMs: 30_000,
      what: `${a.name} has all files`,
    });
    t.equal(shaFile(received(a, 'conf/small.bin')), sha(small), `${a.name}: 1 KiB identical`);
    t.equal(shaFile(received(a, 'big.bin')), bigSha, `${a.name}: 100 MiB identical`);
    t.equal(statSync(received(a, 'empty')).size, 0, `${a.name}: empty file present`);
  }
  t.equal(shaFile(received(m.agents.pub!, 'big.bin')), bigSha, 'the publisher keeps its own copy');
  t.notOk(
    m.agents.pub!.daemon.logs().some((l) => l.msg === 'file received'),
    'the publisher never downloads back what it published (the hub sends 2 copies, not 3)',
  );

  const late = await startAgent(t, m.hub, 'late');
  await waitFor(async () => (await filesOf(late)).filter((f) => f.local === 'present').length === 3, { timeoutMs: 30_000, what: 'late joiner has all files' });
  t.equal(shaFile(received(late, 'big.bin')), bigSha, 'an agent that joins later gets them too');

  await t.test('republish replaces everywhere; unpublish removes everywhere', async (t) => {
    const v2 = Buffer.from('version two\n');
    writeFileSync(join(dir, 'small-v2'), v2);
    t.equal((await m.agents.pub!.cli(['publish', 'file', join(dir, 'small-v2'), '--as', 'conf/small.bin'])).code, 0);
    for (const a of [m.agents.b!, m.agents.c!, late]) {
      await waitFor(() => existsSync(received(a, 'conf/small.bin')) && shaFile(received(a, 'conf/small.bin')) === sha(v2), {
        timeoutMs: 15_000,
        what: `${a.name} has v2`,
      });
    }
    t.pass('v2 everywhere');
    t.equal((await m.agents.pub!.cli(['unpublish', 'conf/small.bin'])).code, 0);
    for (const a of [m.agents.b!, m.agents.c!, late, m.agents.pub!]) {
      await waitFor(() => !existsSync(received(a, 'conf/small.bin')), { timeoutMs: 15_000, what: `${a.name} removed it` });
    }
    t.pass('removed everywhere');
    t.notOk(
      (await filesOf(m.agents.b!)).find((f) => f.name === 'conf/small.bin'),
      'gone from the catalogue',
    );
  });

  await t.test('bad names and foreign owners are refused with a clear message', async (t) => {
    for (const [as, re] of [
      ['../escape', /'\.' and '\.\.' segments are refused/],
      ['/etc/passwd', /absolute paths are refused/],
      ['a//b', /empty path segment/],
    ] as const) {
      const r = await m.agents.pub!.cli(['publish', 'file', join(dir, 'empty'), '--as', as]);
      t.not(r.code, 0, `${as} refused`);
      t.match(r.stderr, re, r.stderr.trim());
    }
    const r = await m.agents.b!.cli(['publish', 'file', join(dir, 'empty'), '--as', 'big.bin']);
    t.not(r.code, 0, 'another user cannot replace big.bin');
    t.match(r.stderr, /belongs to user pub/, r.stderr.trim());
    const u = await m.agents.b!.cli(['unpublish', 'big.bin']);
    t.not(u.code, 0, 'nor unpublish it');
    t.equal(shaFile(received(m.agents.c!, 'big.bin')), bigSha, 'and nothing changed');
  });
});

t.test('interrupted transfers resume and never show a partial file', async (t) => {
  const m = await startMesh(t, ['pub', 'rx']);
  const dir = testDir(t);
  const size = 384 * 1024 * 1024;
  const want = bigFile(join(dir, 'huge.bin'), size);
  const rx = m.agents.rx!;
  const partialDir = join(rx.dir, 'files', '.ztm-partial');
  const partial = join(partialDir, want);
  // Slow the receiver down so the kill lands mid-transfer: stop it, publish,
  // then run it and kill it as soon as its partial file is growing.
  await rx.daemon.stop();
  t.equal((await m.agents.pub!.cli(['publish', 'file', join(dir, 'huge.bin')])).code, 0);

  for (const victim of ['receiver', 'hub'] as const) {
    await rx.restart().catch(() => {});
    await waitFor(() => existsSync(partial) && statSync(partial).size > 16 * 1024 * 1024, { timeoutMs: 30_000, intervalMs: 5, what: 'download under way' });
    t.notOk(existsSync(received(rx, 'huge.bin')), `${victim}: nothing under the final name mid-way`);
    if (victim === 'receiver') await rx.daemon.stop('SIGKILL');
    else await m.hub.daemon.stop('SIGKILL');
    const kept = statSync(partial).size;
    t.ok(kept > 0 && kept < size, `${victim} killed at ${(kept / 2 ** 20).toFixed(0)} MiB of ${size / 2 ** 20}`);
    if (victim === 'hub') {
      await m.hub.restart();
      await rx.daemon.stop('SIGKILL');
      // A dying session can end its streams as if they had finished: a short
      // download is kept to resume, not discarded as a failed verification.
      t.ok(existsSync(partial) && statSync(partial).size >= kept, 'what arrived before the hub died is kept');
    }
    if (victim === 'hub') break;
  }
  await rx.restart();
  const resumed = await rx.daemon.waitLog((l) => l.msg === 'resuming file download', 30_000);
  t.ok(Number(resumed.offset) > 0, `resumed at byte ${resumed.offset}, not 0`);
  await waitFor(() => existsSync(received(rx, 'huge.bin')), { timeoutMs: 60_000, what: 'file landed' });
  t.equal(shaFile(received(rx, 'huge.bin')), want, 'identical after interruptions');
  t.notOk(existsSync(partial), 'partial file cleaned up');
});

t.test('a corrupted source is detected and never lands', async (t) => {
  const m = await startMesh(t, ['pub']);
  const dir = testDir(t);
  const body = randomBytes(4 * 1024 * 1024);
  writeFileSync(join(dir, 'data.bin'), body);
  t.equal((await m.agents.pub!.cli(['publish', 'file', join(dir, 'data.bin')])).code, 0);
  // The hub's stored copy starts to lie: one byte flipped.
  const stored = join(m.hub.dir, 'content', sha(body));
  const fd = openSync(stored, 'r+');
  const one = Buffer.alloc(1);
  readSync(fd, one, 0, 1, 12345);
  writeSync(fd, Buffer.from([(one[0] as number) ^ 0xff]), 0, 1, 12345);
  closeSync(fd);
  const rx = await startAgent(t, m.hub, 'rx');
  await rx.daemon.waitLog((l) => l.msg === 'file fetch failed; will retry' && /did not verify/.test(String(l.reason)), 20_000);
  t.notOk(existsSync(received(rx, 'data.bin')), 'the bad copy did not land');
  const view = (await filesOf(rx)).find((f) => f.name === 'data.bin');
  t.match(view?.local, /retrying: .*did not verify/, 'files shows why');
  // Repair the source: the retry fetches again and lands the right bytes.
  const fd2 = openSync(stored, 'r+');
  writeSync(fd2, one, 0, 1, 12345);
  closeSync(fd2);
  await waitFor(() => existsSync(received(rx, 'data.bin')), { timeoutMs: 40_000, what: 'refetched after repair' });
  t.equal(shaFile(received(rx, 'data.bin')), sha(body), 'the refetched copy is right');
});
