/**
 * A large file catalogue (publish/unpublish churn leaves tombstones): it
 * reaches agents in frames at their pace, never as one oversized frame; an
 * agent whose control stream never reads is dropped after its keepalive
 * timeout while the hub holds a bounded backlog for it and keeps serving.
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { encodeFrame } from '@ztm/proto';
import { type AgentHandle, joinAgent, startAgent, startHub, testDir, waitFor } from './helpers/index.js';
import { agentCreds, scope } from './helpers/e2e-checks.js';
import { h2Session, openControl } from './helpers/e2e-wire.js';

const repo = resolve(fileURLToPath(import.meta.url), '../..');
const Database = createRequire(join(repo, 'packages/hub/package.json'))('better-sqlite3') as new (
  file: string,
) => { prepare(sql: string): { run(...p: unknown[]): unknown }; transaction(f: () => void): () => void; close(): void };

const TOMBSTONES = 6_000; // ≈ 1.4 MB of catalogue: over one frame (256 KiB) and over the 1 MiB backlog cap
const KEEPALIVE = ['--keepalive-interval', '1s', '--keepalive-timeout', '3s'];

async function filesOf(a: AgentHandle): Promise<{ name: string; sha256: string; local: string }[]> {
  const r = await a.cli(['files', '--json']);
  if (r.code !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

t.test('a catalogue of thousands of entries', async (t) => {
  const s = scope(t, 'fc');
  const hub = await startHub(s, { serveArgs: KEEPALIVE });
  // Churn, written straight into the registry while the hub is stopped.
  await hub.daemon.stop('SIGTERM');
  const db = new Database(join(hub.dir, 'hub.db'));
  const insert = db.prepare('INSERT INTO files (name, sha256, size, publisher, user, published_at, deleted, version) VALUES (?, ?, ?, ?, ?, ?, 1, 1)');
  db.transaction(() => {
    for (let i = 0; i < TOMBSTONES; i++) {
      insert.run(
        `churn/${String(i).padStart(5, '0')}-${'x'.repeat(60)}`,
        createHash('sha256').update(String(i)).digest('hex'),
        i,
        'gone',
        'ops',
        new Date().toISOString(),
      );
    }
  })();
  db.close();
  await hub.restart();

  const [pub, sub] = await Promise.all([startAgent(s, hub, 'pub', KEEPALIVE), startAgent(s, hub, 'sub', KEEPALIVE)]);
  const muteDir = await joinAgent(s, hub, 'mute');

  await t.test('agents get it in frames and stay online', async (t) => {
    const body = randomBytes(64 * 1024);
    const path = join(testDir(t), 'real.bin');
    writeFileSync(path, body);
    const r = await pub.cli(['publish', 'file', path, '--as', 'real.bin']);
    t.equal(r.code, 0, `publish: ${r.stderr}`);
    await waitFor(async () => (await filesOf(sub)).some((f) => f.name === 'real.bin' && f.local === 'present'), {
      timeoutMs: 20_000,
      what: 'sub has real.bin',
    });
    t.pass('the published file arrived beside 6,000 tombstones');
    t.notOk(
      hub.daemon.logs().some((l) => /not read by agent|FRAME_TOO_LARGE|exceeds/.test(`${l.reason ?? ''} ${l.msg}`)),
      'no session was dropped for its catalogue and no frame was too large',
    );
    t.ok(sub.daemon.running && pub.daemon.running, 'agents still running');
  });

  await t.test('a control stream that never reads is dropped; the hub keeps serving', async (t) => {
    const sess = await h2Session(hub.address, agentCreds(muteDir));
    t.teardown(() => sess.destroy());
    const c = openControl(sess);
    c.stream.write(encodeFrame({ type: 'hello', version: 1, agentVersion: 'test', labels: {} }));
    // Read the response headers and then nothing: HTTP/2 flow control stops
    // the hub at our window, the rest waits in the hub (bounded) until it gives up.
    c.stream.pause();
    await hub.daemon.waitLog((l) => l.msg === 'endpoint online' && l.endpoint === 'mute', 5_000);
    const dropped = await hub.daemon
      .waitLog((l) => l.endpoint === 'mute' && l.msg === 'session closed' && /not read by agent/.test(String(l.reason)), 15_000)
      .then(
        () => true,
        () => false,
      );
    t.ok(dropped, 'hub log: the mute session was closed because its control stream was not read');
    await waitFor(() => c.stream.destroyed || sess.destroyed, { timeoutMs: 5_000, what: 'the mute session to end' });
    t.pass('the mute session ended');
    // Everyone else still served: a new file reaches sub.
    const path = join(testDir(t), 'after.bin');
    writeFileSync(path, randomBytes(1024));
    t.equal((await pub.cli(['publish', 'file', path, '--as', 'after.bin'])).code, 0);
    await waitFor(async () => (await filesOf(sub)).some((f) => f.name === 'after.bin' && f.local === 'present'), {
      timeoutMs: 20_000,
      what: 'sub has after.bin',
    });
    t.pass('the hub kept serving the other agents');
  });
});
