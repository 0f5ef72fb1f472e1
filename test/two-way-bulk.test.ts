/**
 * Bulk data both ways at once over thin TCP buffers.
 *
 * node:http2 stops reading its socket while one of its own writes is pending.
 * When both peers of a session write more than the TCP buffers between them
 * hold, each waits for the other's write and neither reads: the session locks
 * up until the keepalive timeout drops it (and every connection on it). It
 * takes bulk both ways at once and buffers smaller than the HTTP/2 windows
 * (8 MiB): a fresh connection across a WAN, or a host with small tcp_wmem /
 * tcp_rmem. The agents keep reading: their read guard starts a socket HTTP/2
 * stopped while a write waits (packages/agent/src/session/read-guard.ts), or,
 * on a Node that hides what the guard needs (and with ZTM_HUB_SOCKET=eager),
 * a socket layer completes their writes at once (eager-write-socket.ts).
 *
 * The whole mesh — hub, two agents, client and server — runs inside one
 * network namespace whose TCP buffers are capped at 64 KiB (the sysctls are
 * per namespace), over its loopback. With neither layer every run here locked
 * up.
 */
import t from 'tap';
import { bulkTunnel, startIsland } from './helpers/island.js';
import { netnsSkipReason } from './helpers/k8s.js';

const MiB = 1024 * 1024;

interface HubView {
  socketLayer: string | null;
  readResumes: number;
}

for (const layer of ['guard', 'eager'] as const) {
  t.test(`bulk data both ways at once over thin TCP buffers (${layer})`, { skip: netnsSkipReason() }, async (t) => {
    const island = await startIsland(t, `thin-${layer}`, { tcpBuffers: '4096 16384 65536' });
    const env = layer === 'eager' ? { ZTM_HUB_SOCKET: 'eager' } : {};
    const [entry, exit] = await Promise.all([island.startAgent('entry', [], env), island.startAgent('exit', [], env)]);
    const hubView = async (a: typeof entry): Promise<HubView> => JSON.parse((await a.cli(['status', '--json'])).stdout).hub as HubView;
    for (const a of [entry, exit]) t.equal((await hubView(a)).socketLayer, layer, `the ${a.name} agent's hub connection runs on the ${layer} layer`);

    const peers = await bulkTunnel(t, island, entry, exit, 'bulk');

    // Four connections, each 16 MiB up and 16 MiB down at once: 128 MiB over
    // sessions whose sockets hold 64 KiB. A lock-up shows as the transfers'
    // 30 s timeout (the keepalive timeout is 30 s too).
    const size = 16 * MiB;
    const ids = ['two-way-1', 'two-way-2', 'two-way-3', 'two-way-4'];
    const t0 = Date.now();
    const outcomes = await Promise.all(ids.map((id) => peers.transfer(id, size, size, 30_000)));
    t.comment(`${(ids.length * 2 * size) / MiB} MiB in transfers that ended after ${Date.now() - t0} ms`);
    for (const [i, id] of ids.entries()) await peers.assertWhole(t, id, size, size, outcomes[i] as (typeof outcomes)[number]);
    for (const a of [entry, exit]) t.equal(a.count('offline'), 0, `the ${a.name} agent stayed online`);
    t.equal(island.hub.logs().filter((l) => l.msg === 'session closed').length, 0, 'the hub closed no session');
    if (layer === 'guard') {
      // The lock-up did start, and the guard broke it.
      const resumes = (await hubView(entry)).readResumes + (await hubView(exit)).readResumes;
      t.ok(resumes > 0, `the agents' read guards started a stopped socket ${resumes} times`);
    }
  });
}
