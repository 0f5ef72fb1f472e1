/** Writes the disk refuses: the registry and the content store say why, keep nothing half-done, and never crash. */
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ErrorCodes, type ZtmError } from '@ztm/proto';
import t from 'tap';
import { ContentStore } from '../src/files/content-store.js';
import { FileCatalogue } from '../src/registry/file-catalogue.js';
import { Registry } from '../src/registry/registry.js';

const tmp = (t: { teardown(fn: () => unknown): void }) => {
  const d = mkdtempSync(join(tmpdir(), 'ztm-se-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
};
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const storageError = (message: RegExp) => ({ code: ErrorCodes.STORAGE, message });

t.test('registry: a refused write is a STORAGE error naming what was not recorded', async (t) => {
  const file = join(tmp(t), 'hub.db');
  const reg = new Registry(file);
  t.teardown(() => reg.close());
  const now = Date.now();
  reg.addPermit('a'.repeat(64), 'a', 'a', now, now + 60_000);
  const seen: ZtmError[] = [];
  reg.onWriteError = (e) => seen.push(e);
  reg.database.pragma('query_only = 1'); // every write now fails with SQLITE_READONLY

  t.throws(
    () => reg.addPermit('b'.repeat(64), 'b', 'b', now, now + 60_000),
    storageError(/^cannot record a permit for b: the hub's registry \(hub\.db\) is not writable/),
  );
  const enrol = { tokenSha256: 'a'.repeat(64), endpoint: 'a', user: 'a', spkiSha256: 'f'.repeat(64), serial: '01', notBefore: now, notAfter: now + 1, now };
  t.throws(() => reg.recordEnrolment(enrol), storageError(/^cannot record the enrolment of a \(the permit stays unused\)/));
  t.throws(() => reg.revokeEndpoint('a', now), storageError(/^cannot revoke a:/));
  t.throws(
    () => new FileCatalogue(reg).put({ name: 'f', sha256: 'c'.repeat(64), size: 1, publisher: 'a', user: 'a', publishedAt: now, deleted: false, version: 1 }),
    storageError(/^cannot record file f in the catalogue/),
  );
  reg.touch('a', now, '127.0.0.1:1');
  t.doesNotThrow(() => reg.flushTouches(), 'last seen is advisory: a refused touch does not throw');
  t.equal(seen.length, 5, 'every refused write was reported (for the log)');
  t.match(seen[0]?.details, { path: file, sqlite: 'SQLITE_READONLY' }, 'with the path and the SQLite code');

  reg.database.pragma('query_only = 0');
  t.equal(reg.getPermit('a'.repeat(64))?.used_at, null, 'the refused enrolment did not spend the permit');
  reg.recordEnrolment(enrol);
  t.equal(reg.getEndpoint('a')?.spki_sha256, 'f'.repeat(64), 'writable again: the enrolment is recorded');
  t.throws(() => reg.recordEnrolment(enrol), { code: ErrorCodes.TOKEN_USED }, 'other errors pass through unchanged');
  t.equal(reg.integrityCheck(), 'ok');
});

t.test('content store: a full disk mid-upload', async (t) => {
  const dir = tmp(t);
  const store = new ContentStore(join(dir, 'content'));
  const body = Buffer.alloc(256 * 1024, 7);
  const id = sha(body);
  // The partial upload is /dev/full: every write fails with ENOSPC.
  symlinkSync('/dev/full', join(dir, 'content', 'partial', id));
  const src = sender([body.subarray(0, 128 * 1024), body.subarray(128 * 1024)]);
  await t.rejects(
    store.append(id, 0, body.length, src, Number.MAX_SAFE_INTEGER),
    storageError(/^the hub's file store is full: no space left on the device \(ENOSPC\); upload discarded$/),
  );
  t.notOk(lstatExists(join(dir, 'content', 'partial', id)), 'the partial upload is dropped');
  t.notOk(src.destroyed, 'the body is left alone, so the hub can still answer on it');
  t.notOk(store.has(id), 'nothing under the final name');
});

t.test('content store: an upload larger than the free space is refused before it starts', async (t) => {
  const store = new ContentStore(join(tmp(t), 'content'));
  const src = Readable.from([Buffer.alloc(10)]);
  await t.rejects(
    store.append('d'.repeat(64), 0, 2 ** 52, src, Number.MAX_SAFE_INTEGER),
    storageError(/^not enough space on the hub: the upload needs \d+ more bytes/),
  );
  t.equal(src.readableFlowing, null, 'not a byte of the body was read');
});

t.test('content store: a sender that goes away keeps what arrived, to resume', async (t) => {
  const store = new ContentStore(join(tmp(t), 'content'));
  const body = Buffer.alloc(64 * 1024, 1);
  const src = new Readable({ read() {} });
  const pending = store.append(sha(body), 0, body.length, src, Number.MAX_SAFE_INTEGER);
  src.push(body.subarray(0, 1000));
  await new Promise((r) => setTimeout(r, 50));
  src.destroy();
  t.same(await pending, { complete: false, received: 1000 }, 'resumable at byte 1000');
});

t.test('content store: an upload longer than declared is refused, body left alone', async (t) => {
  const store = new ContentStore(join(tmp(t), 'content'));
  const body = Buffer.alloc(2000, 3);
  const src = sender([body]);
  await t.rejects(store.append(sha(body.subarray(0, 1000)), 0, 1000, src, Number.MAX_SAFE_INTEGER), { code: ErrorCodes.BAD_REQUEST });
  t.notOk(src.destroyed, 'body not destroyed');
  t.equal(store.received(sha(body.subarray(0, 1000))), 0, 'nothing kept');
});

function lstatExists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** A body still open (no end yet), like an HTTP/2 stream whose sender is still writing. */
function sender(chunks: Buffer[]): Readable {
  const r = new Readable({ read() {} });
  for (const c of chunks) r.push(c);
  return r;
}
