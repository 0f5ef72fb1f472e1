/**
 * The lean AsyncResource.bind (node-compat.ts) binds as Node's does: the
 * resource's async scope, `this`, arguments, result and `length`; it throws on
 * a non-function; it adds no deprecated accessor and emits no warning; and
 * node:http2 requests still run their callbacks in the caller's context.
 */
import { AsyncLocalStorage, AsyncResource, executionAsyncId } from 'node:async_hooks';
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { asyncResourceBindIsDeprecating, installLeanAsyncResourceBind } from '@ztm/proto';

const warnings: Error[] = [];
process.on('warning', (w) => warnings.push(w));

const deprecatingBefore = asyncResourceBindIsDeprecating();
const installed = installLeanAsyncResourceBind();

t.test('installed where this Node adds the deprecated accessor, and only there', async (t) => {
  t.equal(installed, deprecatingBefore, `Node ${process.version}: installed = ${installed}`);
  t.equal(installLeanAsyncResourceBind(), installed, 'a second call changes nothing');
  t.notOk(asyncResourceBindIsDeprecating(), 'bound functions carry no deprecated accessor now');
});

t.test('binds to the resource: scope, this, arguments, result, length', async (t) => {
  const resource = new AsyncResource('test-resource');
  let seen: { id: number; self: unknown; args: unknown[] } | undefined;
  function target(this: unknown, a: number, b: number) {
    seen = { id: executionAsyncId(), self: this, args: [a, b] };
    return a + b;
  }
  const bound = resource.bind(target);
  t.equal(bound.length, 2, 'length of the target');
  t.notOk('asyncResource' in bound, 'no asyncResource property');
  const receiver = { name: 'receiver' };
  t.equal(bound.call(receiver, 2, 3), 5, 'result passed back');
  t.equal(seen?.id, resource.asyncId(), 'ran in the resource’s async scope');
  t.equal(seen?.self, receiver, '`this` of the call passed on');
  t.same(seen?.args, [2, 3], 'arguments passed on');

  const fixed = { name: 'fixed' };
  // @types/node types bind() with a thisArg only for functions whose `this` is
  // typed as it: bind through a plain signature.
  const bindWith = resource.bind.bind(resource) as (fn: typeof target, self: unknown) => typeof target;
  const boundThis = bindWith(target, fixed);
  t.equal(boundThis.call(receiver, 1, 1), 2);
  t.equal(seen?.self, fixed, 'thisArg wins over the call’s `this`');
  t.equal(seen?.id, resource.asyncId());

  const staticBound = AsyncResource.bind(target);
  t.equal(staticBound(4, 5), 9, 'AsyncResource.bind works through it');

  t.throws(() => resource.bind('not a function' as unknown as () => void), TypeError, 'a non-function is refused');
  t.same(
    warnings.filter((w) => w.name === 'DeprecationWarning'),
    [],
    'no deprecation warning',
  );
});

t.test('node:http2 requests keep the caller’s async context', async (t) => {
  const server = http2.createServer((_req, res) => {
    res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const session = http2.connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  t.teardown(() => session.close());
  const als = new AsyncLocalStorage<string>();
  const results = await Promise.all(
    ['a', 'b', 'c'].map((tag) =>
      als.run(
        tag,
        () =>
          new Promise<string>((resolve, reject) => {
            const req = session.request({ ':path': `/${tag}` });
            req.on('response', () => {
              let body = '';
              req.setEncoding('utf8');
              req.on('data', (c: string) => {
                body += c;
              });
              req.on('end', () => resolve(`${als.getStore()}:${body}`));
            });
            req.on('error', reject);
            req.end();
          }),
      ),
    ),
  );
  t.same(results, ['a:ok', 'b:ok', 'c:ok'], 'each request saw its own store and got its answer');
});
