/** Last-seen times are written in batches (one transaction for many connects),
 * and nothing that reads them sees a stale value: a listing flushes first, and
 * close writes what is pending. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { Registry, TOUCH_FLUSH_MS } from '../src/registry/registry.js';

t.test('batched last seen', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ztm-touch-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'hub.db');
  const now = Date.now();
  let reg = new Registry(file);
  for (const name of ['a', 'b']) {
    const tok = name.repeat(64);
    reg.addPermit(tok, name, 'u', now, now + 60_000);
    reg.recordEnrolment({
      tokenSha256: tok,
      endpoint: name,
      user: 'u',
      spkiSha256: 'f'.repeat(64),
      serial: name === 'a' ? '0A' : '0B',
      notBefore: now,
      notAfter: now + 1,
      now,
    });
  }

  reg.touch('a', now + 1, '10.0.0.1:1');
  reg.touch('a', now + 2, null); // the session closed: the time moves, the address stays
  t.equal(reg.getEndpoint('a')?.last_seen, null, 'not written at once');
  const listed = reg.listEndpoints().find((e) => e.name === 'a');
  t.match(listed, { last_seen: now + 2, last_address: '10.0.0.1:1' }, 'a listing flushes first: the newest time, the last address');

  reg.touch('b', now + 3, '10.0.0.2:2');
  await new Promise((r) => setTimeout(r, TOUCH_FLUSH_MS + 200));
  t.equal(reg.getEndpoint('b')?.last_seen, now + 3, `written within ${TOUCH_FLUSH_MS} ms without a listing`);

  reg.touch('b', now + 4, null);
  reg.close();
  reg = new Registry(file);
  t.teardown(() => reg.close());
  t.match(reg.getEndpoint('b'), { last_seen: now + 4, last_address: '10.0.0.2:2' }, 'close writes what is pending');
});
