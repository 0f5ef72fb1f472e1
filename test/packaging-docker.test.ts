import { cpSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import t from 'tap';
import { dockerDir, read, root, sh } from './helpers/packaging.js';

interface Instr {
  stage: string;
  op: string;
  args: string;
}
function parseDockerfile(text: string): Instr[] {
  const out: Instr[] = [];
  let stage = '';
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const joined = lines.join('\n').replace(/\\\n/g, ' ');
  for (const line of joined.split('\n')) {
    const m = /^\s*([A-Z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const op = m[1] as string;
    const args = (m[2] as string).replace(/\s+/g, ' ').trim();
    if (op === 'FROM') stage = /\bAS\s+(\S+)/i.exec(args)?.[1] ?? args;
    out.push({ stage, op, args });
  }
  return out;
}
const dockerfile = parseDockerfile(read('docker/Dockerfile'));
const buildStage = dockerfile.filter((i) => i.stage === 'build');

t.test('Dockerfile: build commands are the repository’s', async (t) => {
  const runs = buildStage.filter((i) => i.op === 'RUN').map((i) => i.args);
  const install = runs.indexOf('pnpm install --frozen-lockfile');
  const build = runs.indexOf('pnpm run build');
  t.ok(install >= 0, 'RUN pnpm install --frozen-lockfile');
  t.ok(build > install, 'RUN pnpm run build, after the install');
  t.match(read('scripts/lib/setup.sh'), /^pnpm install --frozen-lockfile\b/m, 'scripts/lib/setup.sh installs the same way');
  t.match(read('scripts/test'), /^pnpm run build$/m, 'scripts/test builds the same way');
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string>; packageManager: string };
  t.ok(pkg.scripts.build, `package.json has a build script (${pkg.scripts.build})`);
  // pnpm comes from package.json's packageManager through corepack, not from a second pin.
  t.match(pkg.packageManager, /^pnpm@\d+\.\d+\.\d+/);
  t.ok(
    runs.some((r) => /\bcorepack (install|enable)\b/.test(r)),
    'corepack provides pnpm',
  );
  t.notMatch(read('docker/Dockerfile'), /pnpm@(?!\S*\bpackageManager)/, 'no pnpm version pinned in the Dockerfile');
  t.match(read('docker/Dockerfile'), /FROM node:20-bookworm AS build/);
  t.match(read('docker/Dockerfile'), /python3 make g\+\+/, 'native build tools for better-sqlite3');

  // Everything the build stage copies exists, and every workspace package is copied.
  const copies = buildStage.filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'));
  const sources = copies.flatMap((i) => i.args.split(' ').slice(0, -1));
  for (const s of sources) t.ok(existsSync(join(root, s)), `COPY ${s} exists`);
  const ignore = read('docker/Dockerfile.dockerignore')
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('#'));
  for (const s of sources) t.notOk(ignore.includes(s) || ignore.includes(s.split('/')[0] as string), `${s} not excluded from the context`);
  for (const p of readdirSync(join(root, 'packages'))) {
    if (!existsSync(join(root, 'packages', p, 'package.json'))) continue;
    for (const part of ['package.json', 'tsconfig.json', 'src']) t.ok(sources.includes(`packages/${p}/${part}`), `packages/${p}/${part} is copied`);
  }
  for (const f of ['package.json', 'pnpm-lock.yaml', 'pnpm-workspace.yaml', 'tsconfig.json', 'tsconfig.base.json', 'test']) {
    t.ok(sources.includes(f), `${f} is copied`);
  }
});

t.test('Dockerfile: runtime targets', async (t) => {
  const text = read('docker/Dockerfile');
  t.match(text, /^FROM node:20-bookworm-slim AS runtime$/m);
  t.match(text, /useradd [^\n]*--uid 10001[^\n]* ztm/);
  for (const [target, bin] of [
    ['hub', 'ztm-hub'],
    ['agent', 'ztm-agent'],
  ] as const) {
    const st = dockerfile.filter((i) => i.stage === target);
    t.match(st[0]?.args ?? '', /^runtime AS/, `${target} builds on the runtime stage`);
    const get = (op: string) => st.filter((i) => i.op === op).map((i) => i.args);
    t.same(get('ENTRYPOINT'), [`["${bin}"]`], `${target}: ENTRYPOINT ${bin}`);
    t.same(get('USER'), ['ztm'], `${target}: USER ztm`);
    t.match(get('HEALTHCHECK')[0] ?? '', new RegExp(`CMD \\["${bin}", "status", "--data", "/var/lib/ztm"\\]`), `${target}: HEALTHCHECK ${bin} status`);
    t.ok(
      st.some((i) => i.op === 'COPY' && i.args.startsWith('--from=build') && i.args.includes(`/out/${target}`)),
      `${target}: copies the deployed tree`,
    );
  }
  t.same(
    dockerfile.filter((i) => i.stage === 'hub' && i.op === 'EXPOSE').map((i) => i.args),
    ['8888'],
  );
  t.ok(
    dockerfile.some((i) => i.stage === 'runtime' && i.op === 'ENV' && /\bZTM_DATA=\/var\/lib\/ztm\b/.test(i.args)),
    'ENV ZTM_DATA=/var/lib/ztm',
  );
  t.ok(
    dockerfile.some((i) => i.stage === 'runtime' && i.op === 'VOLUME' && i.args.includes('/var/lib/ztm')),
    'VOLUME /var/lib/ztm',
  );
});

// Opt-in (slow): replay the build stage — its COPYs into an empty directory,
// then its RUNs from `pnpm install` on, with /out and /tmp moved — and run the
// deployed trees. What a `docker build` does, minus the base image.
t.test(
  'Dockerfile: build stage replayed from its own COPYs',
  { skip: process.env.ZTM_TEST_DOCKER_BUILD === '1' ? false : 'set ZTM_TEST_DOCKER_BUILD=1 (runs pnpm install, tsc -b, pnpm deploy: slow)', timeout: 600_000 },
  async (t) => {
    const ctx = join(t.testdir(), 'src');
    const outDir = join(dirname(ctx), 'out');
    const tmpDir = join(dirname(ctx), 'tmp');
    mkdirSync(ctx);
    mkdirSync(tmpDir);
    const env = { ...process.env, COREPACK_ENABLE_DOWNLOAD_PROMPT: '0', CI: 'true' };
    let started = false;
    for (const i of buildStage) {
      if (i.op === 'COPY') {
        // Docker's rules: a directory's contents go to DEST; a file goes into
        // DEST/ when DEST ends in / or there are several sources, else to DEST.
        const parts = i.args.split(' ');
        const destRaw = parts.at(-1) as string;
        const sources = parts.slice(0, -1);
        const intoDir = destRaw.endsWith('/') || sources.length > 1;
        for (const s of sources) {
          const from = join(root, s);
          const to = statSync(from).isDirectory() || !intoDir ? join(ctx, destRaw) : join(ctx, destRaw, s.split('/').at(-1) as string);
          mkdirSync(statSync(from).isDirectory() ? to : dirname(to), { recursive: true });
          cpSync(from, to, { recursive: true });
        }
      } else if (i.op === 'RUN') {
        if (i.args.startsWith('pnpm install')) started = true;
        if (!started) continue; // apt-get, npm -g corepack: the machine's business
        const cmd = i.args.replaceAll('/out', outDir).replaceAll('/tmp/', `${tmpDir}/`);
        const r = sh('sh', ['-ec', cmd], { cwd: ctx, env, timeoutMs: 500_000 });
        t.equal(r.code, 0, `RUN ${i.args.slice(0, 80)}${r.code ? `\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}` : ''}`);
        if (r.code !== 0) return;
      }
    }
    for (const [target, bin] of [
      ['hub', 'ztm-hub'],
      ['agent', 'ztm-agent'],
    ]) {
      const r = sh(process.execPath, [
        join(outDir, target as string, 'bin', `${bin}.js`),
        'config',
        'check',
        '--config',
        join(dockerDir, `${target === 'hub' ? 'hub' : 'agent-a'}.yaml`),
      ]);
      t.equal(r.code, 0, `${bin} from the deployed tree runs ${r.stderr}`);
      t.notOk(existsSync(join(outDir, target as string, 'node_modules', 'typescript')), `${target}: no dev dependencies`);
    }
  },
);
