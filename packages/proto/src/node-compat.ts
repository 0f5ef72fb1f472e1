/**
 * Node 20 behaviour that costs the data path and that later Node releases
 * dropped, brought forward here.
 *
 * `AsyncResource.prototype.bind()`: node:http2's `request()` binds its connect
 * callback to an AsyncResource for every stream it opens, and Node 20's `bind`
 * gives each bound function a deprecated `asyncResource` accessor (DEP0172)
 * made of two `util.deprecate` wrappers, each of which changes a function's
 * prototype. `--cpu-prof` of 2,000 tunnelled connections a second: 6.4 % of
 * the hub's CPU and 5.3 % of the entry agent's in `deprecate` and `bind`
 * (docs/performance.md, "Connection rate"). Node removed the property
 * (End-of-Life, nodejs/node#58618; the cost was nodejs/node#58218); the
 * `bind` installed here is that one: the same binding to the resource's
 * async scope, the same `length`, no `asyncResource`.
 */
import { AsyncResource } from 'node:async_hooks';

type Bindable = (...args: unknown[]) => unknown;

let installed = false;

/** Whether this Node's `bind` adds the deprecated `asyncResource` accessor. */
export function asyncResourceBindIsDeprecating(): boolean {
  const bound = new AsyncResource('ztm-probe').bind(() => undefined);
  return typeof Object.getOwnPropertyDescriptor(bound, 'asyncResource')?.get === 'function';
}

/** Replace `AsyncResource.prototype.bind` with the one of current Node where
 * this Node's adds the deprecated accessor; a no-op elsewhere and when called
 * again. Returns whether the replacement is in place. */
export function installLeanAsyncResourceBind(): boolean {
  if (installed) return true;
  if (!asyncResourceBindIsDeprecating()) return false;
  Object.defineProperty(AsyncResource.prototype, 'bind', {
    configurable: true,
    writable: true,
    enumerable: false,
    value: function bind(this: AsyncResource, fn: Bindable, thisArg?: unknown) {
      if (typeof fn !== 'function') throw new TypeError(`The "fn" argument must be of type function. Received ${typeof fn}`);
      let bound: Bindable;
      if (thisArg === undefined) {
        const resource = this;
        bound = function (this: unknown, ...args: unknown[]) {
          return resource.runInAsyncScope(fn, this, ...args);
        };
      } else {
        bound = this.runInAsyncScope.bind(this, fn, thisArg) as Bindable;
      }
      Object.defineProperty(bound, 'length', { configurable: true, enumerable: false, value: fn.length, writable: false });
      return bound;
    },
  });
  installed = true;
  return true;
}
