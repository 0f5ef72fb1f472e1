// A baseline build of the product at another commit, run beside the working
// tree in the same bench run (before/after tables from one run: these machines
// are noisy, so two runs are not comparable). Built once per commit into
// ~/.cache/ztm-bench/base-<sha> from `git archive`, with the same lockfile
// install and TypeScript build as a clean checkout.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** The root of a built tree at `ref` (a commit, tag or branch of ROOT). */
export function baselineRoot(root, ref, log) {
  const sha = execFileSync('git', ['-C', root, 'rev-parse', '--verify', `${ref}^{commit}`])
    .toString()
    .trim();
  const dir = join(process.env.ZTM_BENCH_CACHE ?? join(homedir(), '.cache/ztm-bench'), `base-${sha.slice(0, 12)}`);
  const built = ['packages/hub/dist/cli/main.js', 'packages/agent/dist/cli/main.js', 'packages/proto/dist/index.js'].every((f) => existsSync(join(dir, f)));
  if (built) return { dir, sha };
  log(`baseline ${ref} (${sha.slice(0, 12)}): building into ${dir}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const sh = (cmd, args, cwd = dir) =>
    execFileSync(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, COREPACK_ENABLE_DOWNLOAD_PROMPT: '0' } });
  sh('bash', ['-c', `git -C "${root}" archive "${sha}" | tar -x -C "${dir}"`]);
  // The pnpm store already holds every package of the lockfile; try offline first.
  try {
    sh('pnpm', ['install', '--frozen-lockfile', '--offline', '--reporter=silent']);
  } catch {
    sh('pnpm', ['install', '--frozen-lockfile', '--reporter=silent']);
  }
  sh('npx', ['tsc', '-b', 'packages/proto', 'packages/hub', 'packages/agent']);
  return { dir, sha };
}
