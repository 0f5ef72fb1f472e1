import t from 'tap';
import { startAgent, startHub } from './helpers/index.js';

t.test('two agents online', async (t) => {
  const hub = await startHub(t);
  await startAgent(t, hub, 'alpha');
  await startAgent(t, hub, 'beta');
  const r = await hub.cli(['endpoints', '--json']);
  const list = JSON.parse(r.stdout) as { name: string; online: boolean }[];
  t.same(
    list.map((e) => [e.name, e.online]),
    [
      ['alpha', true],
      ['beta', true],
    ],
  );
});
