/** The controllers' reconcile loop: when a trigger runs a pass, and that a
 * timed wake-up asked for inside a pass does not spin the loop. */
import t from 'tap';
import { silentLogger } from '../src/log.js';
import { ReconcileLoop } from '../src/k8s/reconcile-loop.js';

const log = silentLogger();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('a change that finds the loop at rest runs at once, not after the debounce', async (t) => {
  let passes = 0;
  const loop = new ReconcileLoop('t', async () => void passes++, log, 60_000);
  t.teardown(() => loop.stop());
  loop.trigger();
  loop.trigger();
  await sleep(300);
  t.equal(passes, 1, 'one pass for two triggers in one turn, long before the 60 s debounce');
});

t.test('triggers right after a pass wait for the debounce (a storm costs one pass per debounce)', async (t) => {
  let passes = 0;
  const loop = new ReconcileLoop('t', async () => void passes++, log, 400);
  t.teardown(() => loop.stop());
  loop.trigger();
  await sleep(100);
  t.equal(passes, 1);
  for (let i = 0; i < 10; i++) {
    loop.trigger();
    await sleep(10);
  }
  t.equal(passes, 1, 'the burst right after a pass waits');
  await sleep(800);
  t.equal(passes, 2, 'and then runs once for the whole burst');
});

t.test('a change during a pass runs one more pass after it', async (t) => {
  let passes = 0;
  let release: () => void = () => {};
  const loop = new ReconcileLoop(
    't',
    async () => {
      passes++;
      if (passes === 1)
        await new Promise<void>((r) => {
          release = r;
        });
    },
    log,
    60_000,
  );
  t.teardown(() => loop.stop());
  loop.trigger();
  await sleep(100);
  loop.trigger();
  loop.trigger();
  release();
  await sleep(100);
  t.equal(passes, 2);
});

t.test('wakeIn from inside a pass: one pass at the deadline, no spinning until then', async (t) => {
  let passes = 0;
  const loop = new ReconcileLoop(
    't',
    async () => {
      passes++;
      loop.wakeIn(passes === 1 ? 500 : 60_000);
    },
    log,
    60_000,
  );
  t.teardown(() => loop.stop());
  loop.trigger();
  await sleep(300);
  t.equal(passes, 1, 'the pass that asked for a wake-up in 500 ms did not run again at once');
  await sleep(600);
  t.equal(passes, 2, 'it ran at the deadline');
  loop.wakeIn(60_000);
  loop.wakeIn(50);
  await sleep(300);
  t.equal(passes, 3, 'the earliest wake-up asked for wins');
});

t.test('a failing pass is retried with backoff until it succeeds', async (t) => {
  let passes = 0;
  const loop = new ReconcileLoop(
    't',
    async () => {
      passes++;
      if (passes === 1) throw new Error('api down');
    },
    log,
    60_000,
  );
  t.teardown(() => loop.stop());
  loop.trigger();
  await sleep(100);
  t.equal(loop.lastError, 'api down');
  await sleep(900);
  t.equal(passes, 2, 'retried within the first backoff (250–500 ms)');
  t.equal(loop.lastError, null);
});
