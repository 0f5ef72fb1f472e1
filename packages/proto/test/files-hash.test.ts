/** sha256OfPrefix and hashingTap: a hash resumed from a file's first bytes and
 * continued over a stream equals the hash of the whole. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import t from 'tap';
import { hashingTap, sha256OfFile, sha256OfPrefix } from '@ztm/proto';

const hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('a prefix from the file plus the rest through the tap is the whole file’s hash', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ztm-fh-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const body = randomBytes(3 * 1024 * 1024 + 11);
  const file = join(dir, 'f');
  writeFileSync(file, body);
  t.equal(await sha256OfFile(file), hex(body));
  for (const cut of [0, 1, 1024 * 1024, 1024 * 1024 + 1, body.length - 1, body.length]) {
    const h = await sha256OfPrefix(file, cut);
    const out = new PassThrough();
    out.resume();
    await pipeline(Readable.from([body.subarray(cut)]), hashingTap(h), out);
    t.equal(h.digest('hex'), hex(body), `resumed at byte ${cut}`);
  }
  const h0 = await sha256OfPrefix(join(dir, 'absent'), 0);
  t.equal(h0.digest('hex'), hex(Buffer.alloc(0)), 'nothing to resume: the file is not read');
  await t.rejects(sha256OfPrefix(file, body.length + 1), /fewer than the/, 'a prefix longer than the file is an error');
});

t.test('the tap passes every byte on unchanged', async (t) => {
  const body = randomBytes(200_000);
  const got: Buffer[] = [];
  const sink = new PassThrough();
  sink.on('data', (c: Buffer) => got.push(c));
  const h = createHash('sha256');
  await pipeline(Readable.from([body.subarray(0, 70_000), body.subarray(70_000)]), hashingTap(h), sink);
  t.equal(hex(Buffer.concat(got)), hex(body));
  t.equal(h.digest('hex'), hex(body));
});
