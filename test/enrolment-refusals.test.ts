/**
 * Enrolment and session refusals: each is refused with a non-zero exit and one
 * line on stderr that says why, and the hub keeps serving afterwards.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type AgentHandle, type HubHandle, agentCli, joinAgent, readJson, runAgent, startAgent, startHub, testDir } from './helpers/index.js';
import { assertRefused, endpointOf, exitWithin, permitFast, scope, sleep, waitOnline } from './helpers/e2e-checks.js';

type T = Parameters<typeof startHub>[0];

// The three groups are independent (own hubs): run them side by side.
t.jobs = 3;

/** Agents re-dial within a second here: reconnects are not what these tests time. */
function fastReconnect(t: T): string[] {
  const file = join(testDir(t), 'agent.yaml');
  writeFileSync(file, 'reconnectBase: 100ms\nreconnectMax: 1s\n');
  return ['--config', file];
}

let dirs = 0;
/** `ztm-agent join` into a fresh data directory (so a fresh key). */
function join_(t: T, permit: string, extra: string[] = []) {
  return agentCli(['join', '--permit', permit, '--data', join(testDir(t), `j${++dirs}`), ...extra]);
}

function editPermit(t: T, file: string, edit: (p: Record<string, unknown>) => void): string {
  const p = readJson<Record<string, unknown>>(file);
  edit(p);
  const out = join(testDir(t), `edited-${++dirs}.json`);
  writeFileSync(out, JSON.stringify(p, null, 2));
  return out;
}

/** The hub still serves: the running agent is online, a fresh permit works. */
async function stillServes(t: Test, hub: HubHandle, sentinel: AgentHandle): Promise<void> {
  t.equal((await endpointOf(hub, sentinel.name, true))?.online, true, `${sentinel.name} still online`);
  t.ok(sentinel.daemon.running, `${sentinel.name} process still running`);
  const r = await join_(t, await permitFast(hub, `fresh${++dirs}`));
  t.equal(r.code, 0, `a fresh permit still enrols (${r.stderr.trim()})`);
}

t.test('permits', async (t) => {
  const s = scope(t, 'p');
  const hub = await startHub(s);
  const sentinel = await startAgent(s, hub, 'sentinel');
  const late = await hub.permit('late', ['--ttl', '1s']);
  const lateAt = Date.now();

  await Promise.all([
    (async () => {
      const permit = await permitFast(hub, 'once');
      t.equal((await join_(s, permit)).code, 0, 'first join succeeds');
      assertRefused(t, await join_(s, permit), /already used/, 'second join with the same permit (reused token)');
    })(),
    (async () => {
      const permit = await permitFast(hub, 'honest');
      const forged = editPermit(s, permit, (p) => {
        p.endpoint = 'mallory';
      });
      assertRefused(t, await join_(s, forged), /altered|tampered|signature/, 'join with the endpoint changed');
      t.equal((await join_(s, permit)).code, 0, 'the untouched permit still works (the token was not spent)');
    })(),
    (async () => {
      const notJson = join(testDir(s), 'garbage.json');
      writeFileSync(notJson, 'this is { not json');
      assertRefused(t, await join_(s, notJson), /not valid JSON/, 'permit that is not JSON');
      const partial = join(testDir(s), 'partial.json');
      writeFileSync(partial, JSON.stringify({ kind: 'ztm-permit', version: 1, mesh: 'test' }));
      assertRefused(t, await join_(s, partial), /malformed/, 'permit missing fields');
      assertRefused(t, await join_(s, join(testDir(s), 'missing.json')), /cannot read permit/, 'permit file that does not exist');
    })(),
    (async () => {
      const [first, second] = await Promise.all([permitFast(hub, 'dup'), permitFast(hub, 'dup')]);
      t.equal((await join_(s, first)).code, 0, 'first dup joins');
      assertRefused(t, await join_(s, second), /another key|already enrolled/, 'second dup, another key, same name');
    })(),
    (async () => {
      // Two devices racing with one permit: exactly one wins.
      const permit = await permitFast(hub, 'race');
      const results = await Promise.all([join_(s, permit), join_(s, permit)]);
      t.same(results.map((r) => r.code === 0).sort(), [false, true], 'one of two concurrent joins with one permit succeeds');
      const loser = results.find((r) => r.code !== 0);
      if (loser) assertRefused(t, loser, /already used|another key/, 'the other concurrent join');
    })(),
    (async () => {
      // A data directory enrolled as one endpoint refuses a permit for another;
      // a new permit for its own name re-enrols it with the same key.
      const dir = join(testDir(s), 'device');
      t.equal((await agentCli(['join', '--permit', await permitFast(hub, 'device'), '--data', dir])).code, 0, 'device joins');
      const key = readFileSync(join(dir, 'key.pem'), 'utf8');
      const other = await agentCli(['join', '--permit', await permitFast(hub, 'elsewhere'), '--data', dir]);
      assertRefused(t, other, /already enrolled/, 'an enrolled data directory with a permit for another name');
      const again = await agentCli(['join', '--permit', await permitFast(hub, 'device'), '--data', dir]);
      t.equal(again.code, 0, `same device, new permit, same name: re-enrolled (${again.stderr.trim()})`);
      t.equal(readFileSync(join(dir, 'key.pem'), 'utf8'), key, 'and keeps its key');
    })(),
  ]);

  await sleep(lateAt + 1_500 - Date.now());
  assertRefused(t, await join_(s, late), /expired/, 'join with an expired permit');

  const list = await endpointOf(hub, 'mallory');
  t.equal(list, undefined, 'no endpoint mallory was made');
  t.match(await endpointOf(hub, 'dup'), { revoked: false }, 'the first dup keeps its name');
  await stillServes(t, hub, sentinel);
});

t.test('meshes', async (t) => {
  const [sa, sb] = [scope(t, 'a'), scope(t, 'b')];
  const [hubA, hubB] = await Promise.all([startHub(sa), startHub(sb, { mesh: 'other' })]);
  const sentinel = await startAgent(sa, hubA, 'sentinel');

  await Promise.all([
    (async () => {
      const permit = await permitFast(hubB, 'roamer');
      const r = await join_(sa, permit, ['--hub', hubA.address]);
      assertRefused(t, r, /another mesh|does not vouch/, 'join hub A with a permit of mesh other (HUB_UNTRUSTED)');
      const redirected = editPermit(sa, permit, (p) => {
        p.hubs = [hubA.address];
      });
      assertRefused(t, await join_(sa, redirected), /altered|tampered|signature/, "permit of mesh other, hubs edited to hub A's");
    })(),
    (async () => {
      // Enrolled with hub B, then pointed at hub A: it trusts A, A does not trust it.
      const dir = await joinAgent(sb, hubB, 'stray');
      copyFileSync(join(hubA.dir, 'ca.crt'), join(dir, 'ca.pem'));
      const idFile = join(dir, 'identity.json');
      writeFileSync(idFile, JSON.stringify({ ...JSON.parse(readFileSync(idFile, 'utf8')), hubs: [hubA.address] }));
      const r = await agentCli(['run', '--data', dir, ...fastReconnect(sb)], { timeoutMs: 20_000 });
      assertRefused(t, r, /not from this mesh's CA/, 'ztm-agent run with a certificate of another CA (UNAUTHENTICATED)');
    })(),
  ]);
  t.equal(await endpointOf(hubA, 'roamer'), undefined, 'hub A has no roamer');
  t.equal(await endpointOf(hubA, 'stray'), undefined, 'hub A has no stray');
  await stillServes(t, hubA, sentinel);
});

t.test('revoke', async (t) => {
  const s = scope(t, 'r');
  const hub = await startHub(s);
  const cfg = fastReconnect(s);
  const [sentinel, r1, r2] = await Promise.all([startAgent(s, hub, 'sentinel', cfg), startAgent(s, hub, 'r1', cfg), startAgent(s, hub, 'r2', cfg)]);

  // A running agent: told at once, exits 3, does not come back.
  const rv = await hub.cli(['revoke', 'r1', '--json']);
  t.equal(rv.code, 0, 'ztm-hub revoke exits 0');
  t.match(JSON.parse(rv.stdout), { endpoint: 'r1', certificates: 1, disconnected: true });
  const code = await exitWithin(r1.daemon, 5_000);
  t.equal(code, 3, 'the revoked agent exits with status 3 within 5 s');
  t.match(r1.daemon.stderr, /revoked/, 'its stderr says it was revoked');
  t.equal(r1.daemon.stderr.trim().split('\n').length, 1, 'in one line');
  await sleep(500);
  const onlines = hub.allOutput().match(/"endpoint":"r1"[^\n]*"msg":"endpoint online"/g) ?? [];
  t.equal(onlines.length, 1, 'r1 never came back online');
  t.match(await endpointOf(hub, 'r1'), { revoked: true, online: false }, 'ztm-hub endpoints: r1 revoked and offline');

  // With the hub stopped, revoke works on the data directory and persists.
  await hub.daemon.stop();
  const off = await hub.cli(['revoke', 'r2', '--json']);
  t.equal(off.code, 0, `revoke with the hub stopped exits 0 (${off.stderr.trim()})`);
  t.match(JSON.parse(off.stdout || '{}'), { endpoint: 'r2', certificates: 1, disconnected: false });
  await hub.restart();
  t.match(await endpointOf(hub, 'r2'), { revoked: true, online: false }, 'r2 still revoked after the hub restarts');
  t.match(await endpointOf(hub, 'r1'), { revoked: true, online: false }, 'r1 still revoked after the hub restarts');

  await Promise.all([
    (async () => {
      // Started again, r1 is refused at the handshake.
      const again = await agentCli(['run', '--data', r1.dir, ...cfg], { timeoutMs: 20_000 });
      assertRefused(t, again, /revoked/, 'ztm-agent run of a revoked endpoint');
      t.equal(again.code, 3, 'exit status 3 (revoked)');
    })(),
    (async () => {
      // r2 ran all along: its re-dial is refused at the handshake.
      const c = await exitWithin(r2.daemon, 5_000);
      t.equal(c, 3, 'r2 exits with status 3 once the hub refuses it');
      t.match(r2.daemon.stderr, /revoked/, "r2's stderr says it was revoked");
    })(),
    waitOnline(hub, 'sentinel', true, 10_000),
  ]);
  await stillServes(t, hub, sentinel);

  // A revoked name can be enrolled again with a new permit (a replacement device).
  const replacement = await runAgent(s, await joinAgent(scope(t, 'n'), hub, 'r1'), 'r1', cfg);
  t.match(await endpointOf(hub, 'r1', true), { online: true, revoked: false }, 'r1 re-enrolled with a new key: online, not revoked');
  await replacement.daemon.stop();
});
