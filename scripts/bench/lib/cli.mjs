// The command line of a bench entry point (bench.mjs, profile.mjs, micro.mjs).
const argv = process.argv.slice(2);

/** Whether `name` was given. */
export const flag = (name) => argv.includes(name);

/** The value after `name`, or `dflt`. */
export function opt(name, dflt) {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
}
