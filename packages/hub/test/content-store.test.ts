/**
 * The content store verifies an upload as it streams: whole uploads and
 * uploads resumed after the sender went away land when their bytes hash to
 * their id, and are discarded, with a message that says so, when they do not
 * (also when the part kept from the first attempt changed on disk meanwhile).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { ErrorCodes } from '@ztm/proto';
import t from 'tap';
import { ContentStore } from '../src/files/content-store.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const store = (t: { teardown(fn: () => unknown): void }) => {
  const d = mkdtempSync(join(tmpdir(), 'ztm-cs-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return { s: new ContentStore(join(d, 'content')), partial: (id: string) => join(d, 'content', 'partial', id) };
};
const MAX = Number.MAX_SAFE_INTEGER;

/** Send `first` bytes, then go away (the stream destroyed mid-upload). */
async function interrupted(s: ContentStore, id: string, body: Buffer, first: number) {
  const src = new Readable({ read() {} });
  const pending = s.append(id, 0, body.length, src, MAX);
  src.push(body.subarray(0, first));
  await new Promise((r) => setTimeout(r, 50));
  src.destroy();
  return pending;
}

t.test('a whole upload in many chunks lands, byte for byte', async (t) => {
  const { s } = store(t);
  const body = randomBytes(3 * 1024 * 1024 + 17);
  const chunks = [];
  for (let i = 0; i < body.length; i += 100_000) chunks.push(body.subarray(i, i + 100_000));
  t.same(await s.append(sha(body), 0, body.length, Readable.from(chunks), MAX), { complete: true, received: body.length });
  t.ok(s.has(sha(body)));
  t.equal(sha(readFileSync(s.path(sha(body)))), sha(body), 'stored bytes are the uploaded ones');
});

t.test('an upload resumed after the sender went away lands whole', async (t) => {
  const { s, partial } = store(t);
  const body = randomBytes(2 * 1024 * 1024 + 5);
  const id = sha(body);
  t.same(await interrupted(s, id, body, 700_001), { complete: false, received: 700_001 }, 'first attempt kept 700,001 bytes');
  t.same(await s.append(id, 700_001, body.length, Readable.from([body.subarray(700_001)]), MAX), { complete: true, received: body.length });
  t.equal(sha(readFileSync(s.path(id))), id, 'the resumed upload hashes to its id');
  t.notOk(existsSync(partial(id)), 'no partial file left');
});

t.test('bytes that do not hash to the id are discarded with a message', async (t) => {
  const { s, partial } = store(t);
  const body = randomBytes(256 * 1024);
  const wrongId = sha(Buffer.from('something else'));
  await t.rejects(s.append(wrongId, 0, body.length, Readable.from([body]), MAX), {
    code: ErrorCodes.BAD_REQUEST,
    message: new RegExp(`^uploaded bytes hash to ${sha(body)}, not ${wrongId}; upload discarded$`),
  });
  t.notOk(s.has(wrongId), 'nothing under the id');
  t.notOk(existsSync(partial(wrongId)), 'partial discarded');
});

t.test('a kept part that changed on disk before the resume is caught', async (t) => {
  const { s, partial } = store(t);
  const body = randomBytes(1024 * 1024);
  const id = sha(body);
  await interrupted(s, id, body, 500_000);
  // One byte of what the first attempt kept is flipped on disk.
  const fd = openSync(partial(id), 'r+');
  writeSync(fd, Buffer.from([(body[1234] as number) ^ 0xff]), 0, 1, 1234);
  closeSync(fd);
  await t.rejects(s.append(id, 500_000, body.length, Readable.from([body.subarray(500_000)]), MAX), {
    code: ErrorCodes.BAD_REQUEST,
    message: /^uploaded bytes hash to [0-9a-f]{64}, not [0-9a-f]{64}; upload discarded$/,
  });
  t.notOk(s.has(id), 'nothing landed');
  t.equal(s.received(id), 0, 'the next attempt starts over');
});
