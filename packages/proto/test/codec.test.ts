/**
 * Control-stream framing: FrameDecoder against split, merged, oversized,
 * invalid and truncated input.
 */
import t, { type Test } from 'tap';
import { ErrorCodes, FRAME_HEADER_BYTES, FrameDecoder, MAX_CONTROL_FRAME_BYTES, ZtmError, encodeFrame } from '@ztm/proto';

const messages = [
  { type: 'hello', version: 1, agentVersion: '0.1.0', labels: { zone: 'eu-1' } },
  { type: 'error', code: 'ZTM_ERR_BAD_FRAME', message: 'ünïcödé ✓ 🚀 split me' },
  [],
  'a string',
  42,
  { nested: { deep: [1, 2, { x: null }] } },
];
const stream = Buffer.concat(messages.map((m) => encodeFrame(m)));

const header = (length: number) => {
  const b = Buffer.alloc(FRAME_HEADER_BYTES);
  b.writeUInt32BE(length, 0);
  return b;
};

function throwsCode(t: Test, fn: () => unknown, code: string, what: string): void {
  try {
    fn();
    t.fail(`${what}: did not throw`);
  } catch (err) {
    t.ok(err instanceof ZtmError, `${what}: a ZtmError`);
    t.equal((err as ZtmError).code, code, `${what}: ${code}`);
  }
}

t.test('encodeFrame writes a 4-byte big-endian length and UTF-8 JSON', async (t) => {
  const f = encodeFrame({ a: 'é' });
  const body = Buffer.from(JSON.stringify({ a: 'é' }), 'utf8');
  t.equal(f.readUInt32BE(0), body.length, 'length counts bytes, not characters');
  t.same(f.subarray(4), body);
  throwsCode(t, () => encodeFrame({ big: 'x'.repeat(100) }, 64), ErrorCodes.FRAME_TOO_LARGE, 'encoding above the limit');
});

t.test('several frames in one chunk', async (t) => {
  const d = new FrameDecoder();
  t.same(d.push(stream), messages, 'all frames decoded, in order');
  t.equal(d.buffered, 0, 'nothing left over');
  t.doesNotThrow(() => d.end(), 'clean end');
});

t.test('split at every byte boundary', async (t) => {
  for (let i = 0; i <= stream.length; i++) {
    const d = new FrameDecoder();
    const got = [...d.push(stream.subarray(0, i)), ...d.push(stream.subarray(i))];
    if (JSON.stringify(got) !== JSON.stringify(messages)) {
      t.same(got, messages, `split at ${i}`);
      return;
    }
    d.end();
  }
  t.pass(`all ${stream.length + 1} two-chunk splits decode the same`);

  // Three chunks: header split from body and body split in two.
  for (let i = 1; i < 40; i++) {
    for (let j = i + 1; j < 60; j++) {
      const d = new FrameDecoder();
      const got = [...d.push(stream.subarray(0, i)), ...d.push(stream.subarray(i, j)), ...d.push(stream.subarray(j))];
      if (JSON.stringify(got) !== JSON.stringify(messages)) {
        t.same(got, messages, `split at ${i} and ${j}`);
        return;
      }
    }
  }
  t.pass('three-chunk splits decode the same');
});

t.test('one byte at a time', async (t) => {
  const d = new FrameDecoder();
  const got: unknown[] = [];
  let maxBuffered = 0;
  for (const byte of stream) {
    got.push(...d.push(Buffer.from([byte])));
    maxBuffered = Math.max(maxBuffered, d.buffered);
  }
  t.same(got, messages);
  const largest = Math.max(...messages.map((m) => encodeFrame(m).length));
  t.ok(maxBuffered <= largest, `never holds more than one frame (${maxBuffered} ≤ ${largest} bytes)`);
  t.equal(d.buffered, 0);
});

t.test('oversize length refused before the body is buffered', async (t) => {
  const d = new FrameDecoder();
  throwsCode(t, () => d.push(header(10 * 1024 * 1024)), ErrorCodes.FRAME_TOO_LARGE, '10 MB announced');
  t.ok(d.buffered <= FRAME_HEADER_BYTES, `only the header was held (${d.buffered} bytes)`);
  throwsCode(t, () => d.push(Buffer.alloc(1024)), ErrorCodes.BAD_FRAME, 'the decoder stays failed');

  // Header split over two chunks: refused as soon as it is whole.
  const d2 = new FrameDecoder();
  t.same(d2.push(header(0xffffffff).subarray(0, 2)), []);
  throwsCode(t, () => d2.push(header(0xffffffff).subarray(2)), ErrorCodes.FRAME_TOO_LARGE, '4 GB announced, header split');

  // A good frame first, then an oversized one in the same chunk.
  const d3 = new FrameDecoder();
  throwsCode(t, () => d3.push(Buffer.concat([encodeFrame({ ok: 1 }), header(MAX_CONTROL_FRAME_BYTES + 1)])), ErrorCodes.FRAME_TOO_LARGE, 'limit + 1');

  // The limit itself is allowed.
  const small = new FrameDecoder(16);
  const exact = Buffer.from(JSON.stringify('x'.repeat(14)));
  t.equal(exact.length, 16);
  t.same(small.push(Buffer.concat([header(16), exact])), ['x'.repeat(14)], 'a frame of exactly the limit decodes');
  throwsCode(t, () => new FrameDecoder(16).push(header(17)), ErrorCodes.FRAME_TOO_LARGE, 'limit + 1 with a custom limit');
});

t.test('invalid JSON', async (t) => {
  const body = Buffer.from('{"type": hello}');
  const d = new FrameDecoder();
  throwsCode(t, () => d.push(Buffer.concat([header(body.length), body])), ErrorCodes.BAD_FRAME, 'invalid JSON body');
  throwsCode(t, () => d.push(encodeFrame({ fine: true })), ErrorCodes.BAD_FRAME, 'then refuses everything');
  throwsCode(t, () => new FrameDecoder().push(header(0)), ErrorCodes.BAD_FRAME, 'empty body');
  const latin1 = Buffer.from([0x22, 0xff, 0xfe, 0x22]); // not UTF-8 text, but decodes to replacement chars
  t.doesNotThrow(() => new FrameDecoder().push(Buffer.concat([header(latin1.length), latin1])), 'invalid UTF-8 does not crash the decoder');
});

t.test('truncated frame at end()', async (t) => {
  for (const cut of [1, FRAME_HEADER_BYTES - 1, FRAME_HEADER_BYTES, stream.length - 1]) {
    const d = new FrameDecoder();
    d.push(stream.subarray(0, cut));
    throwsCode(t, () => d.end(), ErrorCodes.BAD_FRAME, `stream cut after ${cut} bytes`);
  }
  const d = new FrameDecoder();
  d.push(Buffer.alloc(0));
  t.doesNotThrow(() => d.end(), 'empty stream ends cleanly');
});
