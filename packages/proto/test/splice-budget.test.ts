import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import t from 'tap';
import {
  DATA_HIGH_WATER_MARK_BYTES,
  MIN_DATA_HIGH_WATER_MARK_BYTES,
  SPLICE_BUFFER_BUDGET_BYTES,
  type SpliceResult,
  backloggedDirections,
  dataHighWaterMark,
  splice,
} from '@ztm/proto';
import { waitFor } from '../../../test/helpers/index.js';
import { held, socketPair, stuckSplice } from './splice-helpers.js';

t.test('many connections whose readers stopped share one buffer budget; idle ones do not count', async (t) => {
  const MiB = 1024 * 1024;
  t.equal(backloggedDirections(), 0, 'nothing backlogged to begin with');
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES);
  // Idle connections beside a transfer do not shrink its buffers.
  const idle: Promise<SpliceResult>[] = [];
  const idlePairs: net.Socket[] = [];
  for (let i = 0; i < 40; i++) {
    const [x, y] = await socketPair();
    const [u, v] = await socketPair();
    idlePairs.push(x, y, u, v);
    idle.push(new Promise((r) => splice({ stream: y, reset: () => y.destroy() }, { stream: u, reset: () => u.destroy() }, r)));
  }
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, '40 idle connections: the full high-water mark');
  const one: Promise<unknown>[] = [];
  const first = [stuckSplice(one)];
  await new Promise((r) => setTimeout(r, 50));
  t.equal(backloggedDirections(), 1);
  t.ok(
    held(first) >= 2 * DATA_HIGH_WATER_MARK_BYTES - 64 * 1024,
    `one stuck connection keeps the full read-ahead and queue (${(held(first) / MiB).toFixed(2)} MiB)`,
  );

  // 128 more: with the full 1 MiB marks each would hold ≈ 2 MiB (256 MiB).
  const done: Promise<unknown>[] = [];
  const pairs = [];
  for (let i = 0; i < 128; i++) {
    pairs.push(stuckSplice(done));
    await new Promise((r) => setImmediate(r));
  }
  await new Promise((r) => setTimeout(r, 50));
  t.equal(backloggedDirections(), 129, 'every stuck direction is counted, idle ones are not');
  t.equal(dataHighWaterMark(), Math.max(MIN_DATA_HIGH_WATER_MARK_BYTES, Math.floor(SPLICE_BUFFER_BUDGET_BYTES / (4 * 129))));
  const total = held(pairs) + held(first);
  // Each direction keeps the share it had when it stopped: the budget while
  // few are stuck, then less and less (≈ budget × (1 + ln(n / 8)) / 2, plus a
  // chunk or two each).
  t.ok(total < 100 * MiB, `129 stuck connections hold ${(total / MiB).toFixed(1)} MiB (without the budget ≈ 258)`);
  // A share is what the source reads ahead and the destination queues, each
  // past its mark by a chunk or two (read-ahead while flowing).
  const lastMost = Math.max(...pairs.slice(-16).map((p) => p.src.readableLength + p.dst.writableLength));
  t.ok(lastMost <= 2 * (dataHighWaterMark() + 128 * 1024), `the last ones hold their small share (at most ${(lastMost / 1024).toFixed(0)} KiB)`);
  for (const p of [...pairs, ...first]) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all([...done, ...one]);
  t.equal(backloggedDirections(), 0, 'finished splices give their share back');
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES);
  for (const s of idlePairs) s.destroy();
  await Promise.all(idle);
});

t.test('connections that back up at the same time share the budget as they fill', async (t) => {
  const MiB = 1024 * 1024;
  t.equal(backloggedDirections(), 0, 'nothing backlogged to begin with');
  // 128 at once: each direction's destination fills at the same time as the
  // others'. Counted only once paused, each would queue its full 1 MiB mark
  // first and read 1 MiB ahead (≈ 256 MiB).
  const done: Promise<unknown>[] = [];
  const pairs = [];
  for (let i = 0; i < 128; i++) pairs.push(stuckSplice(done));
  await waitFor(() => backloggedDirections() === 128, { intervalMs: 10, what: 'every direction backed up' });
  const total = held(pairs);
  t.ok(total < 112 * MiB, `128 connections that backed up together hold ${(total / MiB).toFixed(1)} MiB (counted only once paused: ≈ 160)`);
  for (const p of pairs) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all(done);
  t.equal(backloggedDirections(), 0, 'finished splices give their share back');
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, 'the full mark again');
});

t.test('a destination that drains after its source went quiet stops counting towards the budget', async (t) => {
  const KiB = 1024;
  // 40 connections each send 256 KiB and then stay open and quiet (a
  // keep-alive connection after a response); their destinations take 50 ms
  // to write each chunk. While the chunks wait, each counts (the marks
  // shrink); once written, none does.
  const { done, pairs } = slowSplices(40, 50, 4);
  await waitFor(() => pairs.every((p) => p.dst.writableLength > 64 * KiB), { intervalMs: 5, what: 'every destination queued' });
  t.ok(dataHighWaterMark() < DATA_HIGH_WATER_MARK_BYTES, `40 queued destinations share the budget: ${(dataHighWaterMark() / KiB).toFixed(0)} KiB marks`);
  await waitFor(() => pairs.every((p) => p.dst.writableLength === 0), { intervalMs: 10, what: 'every destination drained' });
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, 'drained and quiet: the full mark again, with the connections still open');
  await closeAll(pairs, done);
});

t.test('a destination that backed up, drained, queued again and drained after its source went quiet stops counting', async (t) => {
  const KiB = 1024;
  // As above, but each first sends more than its mark takes, so it waits for
  // a drain once before the chunks it sends and then goes quiet with.
  const { done, pairs } = slowSplices(40, 20, 24);
  await waitFor(() => backloggedDirections() === 40, { intervalMs: 5, what: 'every direction waited on its destination' });
  await waitFor(() => pairs.every((p) => p.dst.writableLength === 0 && p.src.readableLength === 0), { timeoutMs: 20_000, what: 'every destination drained' });
  t.equal(backloggedDirections(), 0, 'none waits any more');
  for (const p of pairs) for (let k = 0; k < 4; k++) p.src.push(Buffer.alloc(64 * KiB));
  await waitFor(() => pairs.every((p) => p.dst.writableLength === 0), { intervalMs: 10, what: 'every destination drained again' });
  await waitFor(() => dataHighWaterMark() === DATA_HIGH_WATER_MARK_BYTES, { timeoutMs: 2000 }).catch(() => {});
  t.equal(dataHighWaterMark(), DATA_HIGH_WATER_MARK_BYTES, 'drained and quiet: the full mark again');
  await closeAll(pairs, done);
});

/** `n` splices from a source that has `chunks` × 64 KiB to give and then
 * stays open and quiet, into a destination that takes `delayMs` to write
 * each chunk. */
function slowSplices(n: number, delayMs: number, chunks: number) {
  const done: Promise<unknown>[] = [];
  const pairs: { src: Duplex; dst: Duplex }[] = [];
  for (let i = 0; i < n; i++) {
    const src = new Duplex({ read() {}, write: (_c, _e, cb) => cb() });
    const dst = new Duplex({ read() {}, write: (_c, _e, cb) => setTimeout(cb, delayMs) });
    done.push(new Promise((r) => splice({ stream: src, reset: () => src.destroy() }, { stream: dst, reset: () => dst.destroy() }, r)));
    for (let k = 0; k < chunks; k++) src.push(Buffer.alloc(64 * 1024));
    pairs.push({ src, dst });
  }
  return { done, pairs };
}

async function closeAll(pairs: { src: Duplex; dst: Duplex }[], done: Promise<unknown>[]) {
  for (const p of pairs) {
    p.src.destroy();
    p.dst.destroy();
  }
  await Promise.all(done);
}
