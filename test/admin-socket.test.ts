/**
 * The admin sockets refuse other local users: 0600, owned by the daemon's
 * user. Checked by connecting as another uid (needs root to switch).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import t from 'tap';
import { startAgent, startHub } from './helpers/index.js';

const root = process.getuid?.() === 0;

t.test('admin sockets refuse another user', { skip: root ? false : 'switching to another uid needs root' }, async (t) => {
  const hub = await startHub(t);
  const agent = await startAgent(t, hub, 'a');
  for (const sock of [`${hub.dir}/admin.sock`, `${agent.dir}/admin.sock`]) {
    t.equal(statSync(sock).mode & 0o777, 0o600, `${sock} is 0600`);
    // Open the directories so only the socket's own mode stands in the way.
    for (let d = dirname(sock); d !== '/' && d !== '/tmp'; d = dirname(d)) chmodSync(d, statSync(d).mode | 0o711);
    const probe = `require('net').connect(${JSON.stringify(sock)}).on('connect',()=>{console.log('CONNECTED');process.exit(0)}).on('error',e=>{console.log(e.code);process.exit(0)})`;
    const r = spawnSync(process.execPath, ['-e', probe], { uid: 65534, gid: 65534, encoding: 'utf8', timeout: 10_000 });
    t.equal(r.stdout.trim(), 'EACCES', `another user cannot connect to ${sock}`);
    const own = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', timeout: 10_000 });
    t.equal(own.stdout.trim(), 'CONNECTED', 'the owner can');
  }
});
