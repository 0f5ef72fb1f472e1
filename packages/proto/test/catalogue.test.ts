/**
 * catalogueMessages(): any catalogue, however large, leaves as frames that
 * each fit the control codec, in order, first one `full`, nothing lost.
 */
import t from 'tap';
import { type FileEntry, MAX_CONTROL_FRAME_BYTES, catalogueMessages, encodeFrame } from '@ztm/proto';

const entry = (i: number, nameLen = 40): FileEntry => ({
  name: `dir/${String(i).padStart(6, '0')}-${'n'.repeat(nameLen)}`.slice(0, 255),
  sha256: 'a'.repeat(64),
  size: i,
  publisher: 'p'.repeat(63),
  user: 'u'.repeat(63),
  publishedAt: new Date(0).toISOString(),
  deleted: i % 3 === 0,
  version: i,
});

t.test('an empty catalogue is one full message', async (t) => {
  t.same(catalogueMessages([]), [{ type: 'files', full: true, entries: [] }]);
  t.same(catalogueMessages([], undefined, false), [], 'no additions: nothing to send');
});

for (const [n, nameLen] of [
  [1, 10],
  [1_000, 40],
  [20_000, 240],
] as const) {
  t.test(`${n} entries with ${nameLen}-character names`, async (t) => {
    const entries = Array.from({ length: n }, (_, i) => entry(i, nameLen));
    const msgs = catalogueMessages(entries);
    t.equal(msgs[0]?.full, true, 'first replaces');
    t.ok(
      msgs.slice(1).every((m) => !m.full),
      'the rest add',
    );
    t.same(
      msgs.flatMap((m) => m.entries),
      entries,
      'every entry once, in order',
    );
    for (const m of msgs) encodeFrame(m); // throws past the frame limit
    const largest = Math.max(...msgs.map((m) => encodeFrame(m).length));
    t.ok(largest < MAX_CONTROL_FRAME_BYTES / 2, `largest frame ${largest} bytes, well under the limit`);
    t.equal(
      catalogueMessages(entries, undefined, false).every((m) => !m.full),
      true,
      'as additions, none replaces',
    );
  });
}
