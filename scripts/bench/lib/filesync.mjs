// File sync (issue 8): time for a published file to reach 3 agents, beside
// `scp` of the same file to one host. Everything on 127.0.0.1 through the
// real CLIs: a hub, a publisher agent and 3 receiving agents; `ztm-agent
// publish file` of a file read from /dev/urandom; each receiver polled until
// it lists the file as `present` (the agent's state for a copy that is whole,
// SHA-256-verified and renamed into place), then the SHA-256 of each copy on
// disk checked here again. The scp is through an sshd of its own (the ssh
// scenario's set-up, aes128-gcm), to a directory on the same disk.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { ROOT, binNodeArgs, initHub, startSshd } from './paths.mjs';
import { runCmd, runDir, sleep, start, stop, waitLog } from './procs.mjs';

const node = process.execPath;
const RECEIVERS = ['r1', 'r2', 'r3'];
const POLL_MS = 100;

const median = (xs) => {
  const s = xs.filter((x) => x != null).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const r2 = (x) => (x == null ? null : Math.round(x * 100) / 100);

/** SHA-256 (hex) of a file. */
export async function sha256File(path) {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk);
  return h.digest('hex');
}

/** `mib` MiB from /dev/urandom into `path`; resolves with its SHA-256. */
async function randomFile(path, mib) {
  const h = createHash('sha256');
  const src = await open('/dev/urandom', 'r');
  const dst = await open(path, 'w');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let i = 0; i < mib; i++) {
      let got = 0;
      while (got < buf.length) got += (await src.read(buf, got, buf.length - got, null)).bytesRead;
      h.update(buf);
      await dst.write(buf, 0, buf.length);
    }
  } finally {
    await src.close();
    await dst.close();
  }
  return h.digest('hex');
}

/** GET on an agent's admin socket: the request `ztm-agent files --json`
 * makes, without starting a Node process for every poll (3 agents polled
 * every 100 ms that way would take a core of this 2-core machine). */
function adminGet(socketPath, path, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const r = request({ socketPath, method: 'GET', path, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
      });
      res.on('end', () => {
        if ((res.statusCode ?? 500) >= 400) return reject(new Error(`admin ${path}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`));
        try {
          resolve(JSON.parse(body));
        } catch (err) {
          reject(err);
        }
      });
    });
    r.on('timeout', () => r.destroy(new Error(`admin ${path}: no answer in ${timeoutMs} ms`)));
    r.on('error', reject);
    r.end();
  });
}

/** Why this cannot run here, or null. */
export async function fileSyncSkipReason(AGENT_BIN = join(ROOT, 'packages/agent/bin/ztm-agent.js')) {
  const help = await runCmd(node, [AGENT_BIN, '--help']).catch((e) => e.message);
  if (!/\bpublish\b/.test(help)) return 'ztm-agent has no publish command';
  if (!/\bfiles\b/.test(help)) return 'ztm-agent has no files command';
  return null;
}

/**
 * `root`: the tree whose hub and agents run (a `--baseline` build); `tag`
 * names its processes and directory.
 * @param {{ mib: number, repeats?: number, scp?: boolean, timeoutSec?: number, log: (m: string) => void, root?: string, tag?: string }} o
 * @returns {Promise<object>} `{ mib, publishSec, allThreeSec, perAgentSec, scpSec, ratioToScp, … }` or `{ skipped }`
 */
export async function fileSync({ mib, repeats = 1, scp = true, timeoutSec = 180, log, root = ROOT, tag = 'files' }) {
  const AGENT_BIN = join(root, 'packages/agent/bin/ztm-agent.js');
  const skip = await fileSyncSkipReason(AGENT_BIN);
  if (skip) return { skipped: skip };
  const base = join(runDir(), tag);
  await mkdir(base, { recursive: true });
  let hub;
  const procs = [];
  let sshd;
  let scpReady;
  try {
    // ---- scp: its own sshd (made while the mesh comes up) ----
    scpReady = (async () => {
      if (!scp) return 'not asked for';
      try {
        await runCmd('sh', ['-c', 'command -v scp && command -v ssh-keygen && test -x /usr/sbin/sshd']);
        // scp of OpenSSH ≥ 9 speaks SFTP: the server needs the subsystem.
        sshd = await startSshd(`${tag}-sshd`, { extraConfig: ['Subsystem sftp internal-sftp'] });
        procs.push(sshd.sshd);
        await mkdir(join(base, 'scp-dest'), { recursive: true });
        return null;
      } catch (err) {
        return `no scp through a local sshd: ${err.message.split('\n')[0].slice(0, 200)}`;
      }
    })();

    // ---- the mesh: hub, publisher, 3 receivers ----
    const names = ['pub', ...RECEIVERS];
    const { serve, permits } = await initHub({ tag, base, names, mesh: 'benchfiles', root });
    hub = serve();
    await waitLog(hub, /"hub listening"/);
    const dirs = Object.fromEntries(names.map((n) => [n, join(base, n)]));
    await Promise.all(names.map((n) => runCmd(node, [AGENT_BIN, 'join', '--permit', permits[n], '--data', dirs[n]])));
    const agents = {};
    for (const n of names) {
      agents[n] = start(`${tag}-agent-${n}`, node, [...binNodeArgs(AGENT_BIN), AGENT_BIN, 'run', '--data', dirs[n]]);
      procs.push(agents[n]);
    }
    for (const n of names) await waitLog(agents[n], /"msg":"online"/);
    const scpSkip = await scpReady;
    if (scpSkip && scp) log(`file sync: ${scpSkip}`);
    log('file sync: hub, publisher and 3 agents online');

    const reps = [];
    for (let r = 0; r < repeats; r++) {
      // A new random file each time: the hub stores content by hash, so a
      // repeat of the same bytes would not move them again.
      const name = `bench-${mib}MiB-${r + 1}.bin`;
      const src = join(base, name);
      const sha256 = await randomFile(src, mib);
      const rep = { name };
      await measureZtm(rep, { agentBin: AGENT_BIN, src, sha256, dirs, agents, timeoutSec, log });
      // Each received copy, hashed here again.
      for (const n of RECEIVERS) {
        const copy = join(dirs[n], 'files', name);
        const got = await sha256File(copy).catch((e) => `unreadable (${e.code ?? e.message})`);
        if (got !== sha256) throw new Error(`${n}'s copy of ${name} has SHA-256 ${got}, not ${sha256}`);
      }
      rep.verified = true;
      if (sshd) {
        const dest = join(base, 'scp-dest', name);
        const t0 = performance.now();
        await runCmd(
          'scp',
          [
            '-q',
            '-F',
            '/dev/null',
            '-P',
            String(sshd.port),
            '-i',
            sshd.key,
            '-o',
            'StrictHostKeyChecking=no',
            '-o',
            `UserKnownHostsFile=${sshd.knownHosts}`,
            '-o',
            'BatchMode=yes',
            '-o',
            'Ciphers=aes128-gcm@openssh.com',
            '-o',
            'Compression=no',
            src,
            `${sshd.user}@127.0.0.1:${dest}`,
          ],
          { timeoutMs: timeoutSec * 1000 },
        );
        rep.scpSec = (performance.now() - t0) / 1000;
        const got = await sha256File(dest);
        if (got !== sha256) throw new Error(`scp copy of ${name} has SHA-256 ${got}, not ${sha256}`);
        await rm(dest, { force: true });
      }
      log(
        `file sync ${r + 1}/${repeats}: ${mib} MiB published in ${rep.publishSec?.toFixed(2) ?? '?'} s, on all 3 agents (verified) in ${rep.allThreeSec.toFixed(2)} s` +
          ` (${rep.perAgentSec.map((x) => x.toFixed(2)).join(' / ')})${rep.scpSec != null ? `; scp ${rep.scpSec.toFixed(2)} s` : ''}`,
      );
      reps.push(rep);
      await rm(src, { force: true });
    }

    // The agents' own view through the real CLI, once at the end: what the
    // polls saw (every file present, with its SHA-256).
    const cliStates = {};
    await Promise.all(
      RECEIVERS.map(async (n) => {
        const list = JSON.parse(await runCmd(node, [AGENT_BIN, 'files', '--json', '--data', dirs[n]]));
        cliStates[n] = reps.map((r) => list.find((f) => f.name === r.name)?.local ?? 'not listed');
        if (cliStates[n].some((st) => st !== 'present')) throw new Error(`ztm-agent files --json on ${n}: ${cliStates[n].join(', ')}`);
      }),
    );

    const allThreeSec = median(reps.map((r) => r.allThreeSec));
    const scpSec = median(reps.map((r) => r.scpSec));
    return {
      mib,
      repeats: reps.length,
      publishSec: r2(median(reps.map((r) => r.publishSec))),
      allThreeSec: r2(allThreeSec),
      perAgentSec: RECEIVERS.map((_, i) => r2(median(reps.map((r) => r.perAgentSec[i])))),
      scpSec: r2(scpSec),
      ratioToScp: allThreeSec != null && scpSec ? r2(allThreeSec / scpSec) : null,
      // Bytes that reached the 3 agents, over the time they took; scp's one copy.
      deliveredMiBps: allThreeSec ? Math.round((3 * mib) / allThreeSec) : null,
      scpMiBps: scpSec ? Math.round(mib / scpSec) : null,
      // From the hub's catalogue entry: publish started → the hub has the
      // whole verified content and lists it (publisher hash + upload + hub hash).
      hubListedSec: r2(median(reps.map((r) => r.hubListedSec))),
      verified: reps.every((r) => r.verified),
      cliStates,
      ...(scpSkip ? { scpSkipped: scpSkip } : {}),
      samples: { allThreeSec: reps.map((r) => r2(r.allThreeSec)), scpSec: reps.map((r) => r2(r.scpSec)), publishSec: reps.map((r) => r2(r.publishSec)) },
    };
  } finally {
    // The agents and sshd at once (an agent takes 2 s to stop), then the hub.
    await scpReady;
    await Promise.all(procs.map((h) => stop(h)));
    if (hub) await stop(hub);
    await rm(base, { recursive: true, force: true });
  }
}

/** One publish: from `publish file` started until the 3 receivers list the
 * file as present with the right SHA-256. Fills rep.{publishSec,
 * allThreeSec, perAgentSec, hubListedSec}. */
async function measureZtm(rep, { agentBin, src, sha256, dirs, agents, timeoutSec, log }) {
  const startedWall = Date.now();
  const t0 = performance.now();
  const done = {};
  const seen = {};
  let publishError = null;
  const publish = runCmd(node, [agentBin, 'publish', 'file', src, '--as', rep.name, '--data', dirs.pub, '--json'], { timeoutMs: timeoutSec * 1000 }).then(
    (out) => {
      rep.publishSec = (performance.now() - t0) / 1000;
      const e = JSON.parse(out);
      if (e.sha256 !== sha256) throw new Error(`publish answered SHA-256 ${e.sha256}, the file has ${sha256}`);
      const at = typeof e.publishedAt === 'number' ? e.publishedAt : Date.parse(e.publishedAt);
      if (Number.isFinite(at)) rep.hubListedSec = (at - startedWall) / 1000;
    },
    (err) => {
      // The CLI gives up after 30 s without an answer from the agent; the
      // agent may still finish, so the receivers are still watched.
      publishError = err.message.split('\n')[0].slice(0, 300);
      log(`file sync: publish CLI failed: ${publishError}`);
    },
  );
  const deadline = t0 + timeoutSec * 1000;
  while (Object.keys(done).length < RECEIVERS.length) {
    await Promise.all(
      RECEIVERS.filter((n) => done[n] == null).map(async (n) => {
        const list = await adminGet(join(dirs[n], 'admin.sock'), '/files').catch((e) => {
          seen[n] = `admin API: ${e.message}`;
          return [];
        });
        const f = list.find((x) => x.name === rep.name);
        if (!f) return;
        seen[n] = f.local;
        if (f.local === 'present' && f.sha256 === sha256) done[n] = (performance.now() - t0) / 1000;
      }),
    );
    if (Object.keys(done).length === RECEIVERS.length) break;
    for (const [n, h] of Object.entries(agents)) if (h.child.exitCode !== null || h.child.signalCode !== null) throw new Error(`agent ${n} exited`);
    if (performance.now() > deadline) {
      throw new Error(
        `${rep.name} not on all 3 agents after ${timeoutSec} s (${RECEIVERS.map((n) => `${n}: ${done[n] != null ? 'present' : (seen[n] ?? 'not listed')}`).join(', ')}${publishError ? `; publish: ${publishError}` : ''})`,
      );
    }
    await sleep(POLL_MS);
  }
  await publish;
  rep.perAgentSec = RECEIVERS.map((n) => done[n]);
  rep.allThreeSec = Math.max(...rep.perAgentSec);
}
