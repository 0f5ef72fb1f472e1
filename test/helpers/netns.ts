/**
 * A small emulated WAN for fault tests: the host (where the hub runs) and
 * one network namespace per site, joined through a router namespace whose
 * forwarding path adds latency, jitter and random loss to every packet, in
 * both directions, and whose links can be cut and restored.
 *
 *   host: HOSTIF 10.231.X.1/30 ── up0 .2 [router ns] sN .(4N+1) ── eth0 .(4N+2) [site N ns]
 *
 * The impairment is done in user space by a delay line (Python, nfnetlink
 * queue, no library): the router's FORWARD chain hands every packet to it, it
 * drops `lossPct` % of them and gives the rest back after `delayMs` ±
 * `jitterMs` (released in arrival order: jitter without reordering).
 * Why not `tc qdisc … netem`: this machine's kernel has no sch_netem (nor any
 * other delaying qdisc), and a netfilter queue works on any kernel with
 * NFQUEUE and iptables. Why a router rather than a veth straight
 * into the site: a packet held on the sending host is still charged to its
 * TCP socket, and TCP small queues then throttle the sender to a trickle; a
 * packet that has crossed a veth is not, so the router sees a real link.
 *
 * Addresses: 10.231.X.0/24 with X picked among octets no interface here uses;
 * the host reaches the sites through a route via the router (gone with its
 * interface). Sites have no other route than their default via the router,
 * so they reach only the host side. Everything is removed at teardown.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { networkInterfaces } from 'node:os';
import { type Site, netnsSkipReason } from './k8s.js';

type T = { teardown(fn: () => unknown): void };

export interface Impairment {
  /** One-way delay added to each packet, each direction. */
  delayMs: number;
  /** ± this much, uniformly (never more than delayMs). */
  jitterMs: number;
  /** Share of packets dropped, each direction, in percent. */
  lossPct: number;
}

/** The delay line: a netfilter queue reader that holds each packet for a while
 * (metadata only is copied to user space, never the payload). */
export const DELAY_LINE_PY = String.raw`
import collections, json, os, random, select, signal, socket, struct, sys, time
qnum = int(sys.argv[1])
delay_ms, jitter_ms, loss_pct = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
probe = sys.argv[5:] == ['probe']
delay, jitter, loss = delay_ms / 1000, min(jitter_ms, delay_ms) / 1000, loss_pct / 100
NFQ = 3 << 8  # NFNL_SUBSYS_QUEUE
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
try:
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
except OSError:
    pass
s.setsockopt(270, 5, 1)  # SOL_NETLINK, NETLINK_NO_ENOBUFS
s.bind((0, 0))
nfgen = struct.pack('=BBH', 0, 0, socket.htons(qnum))
def attr(kind, value):
    return struct.pack('=HH', 4 + len(value), kind) + value + b'\0' * (-len(value) % 4)
def configure(payload):
    body = nfgen + payload
    s.send(struct.pack('=IHHII', 16 + len(body), NFQ | 2, 1 | 4, 0, 0) + body)  # CONFIG, REQUEST|ACK
    while True:
        data = s.recv(65536)
        if struct.unpack_from('=H', data, 4)[0] == 2:  # NLMSG_ERROR carries the answer
            err = struct.unpack_from('=i', data, 16)[0]
            if err:
                raise OSError(-err, 'nfqueue config: ' + os.strerror(-err))
            return
configure(attr(1, struct.pack('>BxH', 1, 0)))  # NFQNL_CFG_CMD_BIND
configure(attr(2, struct.pack('>IB', 0, 1)) + attr(3, struct.pack('>I', 50000)))  # COPY_META; queue length
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
parent = os.getppid()
print(json.dumps({'msg': 'ready'}), flush=True)
if probe:
    sys.exit(0)
def verdict(packet_id, accept):
    return struct.pack('=IHHII', 32, NFQ | 1, 1, 0, 0) + nfgen + struct.pack('=HH', 12, 2) + struct.pack('>II', 1 if accept else 0, packet_id)
held = collections.deque()
rnd = random.Random()
last = 0.0
passed = dropped = 0
reported = None
next_report = 0.0
s.setblocking(False)
while True:
    now = time.monotonic()
    timeout = max(0.0, min(held[0][0] - now, next_report - now)) if held else max(0.0, next_report - now)
    readable, _, _ = select.select([s], [], [], timeout)
    out = []
    while readable:
        try:
            data = s.recv(1 << 20)
        except BlockingIOError:
            break
        now = time.monotonic()
        off = 0
        while off + 20 <= len(data):
            length, kind = struct.unpack_from('=IH', data, off)
            if length < 16:
                break
            if kind == NFQ:  # NFQNL_MSG_PACKET: find NFQA_PACKET_HDR for the id
                a = off + 20
                while a + 8 <= off + length:
                    alen, atype = struct.unpack_from('=HH', data, a)
                    if alen < 4:
                        break
                    if atype & 0x3FFF == 1:
                        packet_id = struct.unpack_from('>I', data, a + 4)[0]
                        if rnd.random() < loss:
                            dropped += 1
                            out.append(verdict(packet_id, False))
                        else:
                            passed += 1
                            last = max(last, now + delay + rnd.uniform(-jitter, jitter))
                            held.append((last, packet_id))
                        break
                    a += (alen + 3) & ~3
            off += (length + 3) & ~3
    now = time.monotonic()
    while held and held[0][0] <= now:
        out.append(verdict(held.popleft()[1], True))
    for i in range(0, len(out), 64):
        s.send(b''.join(out[i:i + 64]))
    if now >= next_report:
        next_report = now + 0.5
        if os.getppid() != parent:  # the test process is gone: stop too
            sys.exit(0)
        if reported != (passed, dropped):
            reported = (passed, dropped)
            print(json.dumps({'msg': 'stats', 'passed': passed, 'dropped': dropped}), flush=True)
`;

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
const quietly = (fn: () => unknown) => {
  try {
    fn();
  } catch {}
};

let probed: string | false | undefined;
/** Why the emulated WAN cannot run here, or false. */
export function wanSkipReason(): string | false {
  if (probed !== undefined) return probed;
  probed = netnsSkipReason();
  if (probed) return probed;
  for (const cmd of ['python3', 'iptables']) {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    } catch {
      probed = `${cmd} is not installed: the emulated WAN needs it`;
      return probed;
    }
  }
  const ns = `ztm-probe-w${process.pid}`;
  try {
    ip('netns', 'add', ns);
    execFileSync('ip', ['netns', 'exec', ns, 'iptables', '-A', 'FORWARD', '-j', 'NFQUEUE', '--queue-num', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
    execFileSync('ip', ['netns', 'exec', ns, 'python3', '-c', DELAY_LINE_PY, '0', '0', '0', '0', 'probe'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 10_000,
    });
    probed = false;
  } catch (err) {
    const e = err as Error & { stderr?: Buffer };
    const why = (e.stderr?.toString().trim().split('\n').pop() || e.message.split('\n')[0]) ?? 'unknown';
    probed = `no netfilter queue to emulate a lossy, slow link (${why})`;
  } finally {
    quietly(() => ip('netns', 'del', ns));
  }
  return probed;
}

export interface WanSite extends Site {
  netns: string;
  /** The site's link on the router side (what cut() takes down). */
  routerIf: string;
}

export interface DelayLineStats {
  passed: number;
  dropped: number;
}

export interface Wan {
  router: string;
  /** Where the sites reach the host (the hub listens here). */
  hostAddr: string;
  impairment: Impairment;
  sites: Record<string, WanSite>;
  /** Packets the delay line let through late and dropped, so far. */
  stats(): DelayLineStats;
  /** Take a site's link down (no carrier on either end); restore() brings it back. */
  cut(site: string): void;
  restore(site: string): void;
}

function unusedOctet(): number {
  const used = new Set<number>();
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      const m = /^10\.231\.(\d+)\./.exec(a.address);
      if (m) used.add(Number(m[1]));
    }
  }
  for (let i = 0; i < 100; i++) {
    const octet = 1 + Math.floor(Math.random() * 250);
    if (!used.has(octet)) return octet;
  }
  throw new Error('no free 10.231.X.0/24 for the emulated WAN');
}

/** The router, one namespace per site name (at most 60), and the delay line. */
export async function createWan(t: T, names: string[], impairment: Impairment): Promise<Wan> {
  const skip = wanSkipReason();
  if (skip) throw new Error(skip);
  if (names.length > 60) throw new Error('at most 60 sites');
  const octet = unusedOctet();
  const tag = `${process.pid.toString(36)}${octet.toString(36)}`.slice(-8);
  const net = `10.231.${octet}`;
  const router = `ztm-wan-${tag}`;
  const hostIf = `zw${tag}`;
  const namespaces = [router, ...names.map((n) => `ztm-${n}-${tag}`)];
  let delayLine: ChildProcess | undefined;
  t.teardown(async () => {
    if (delayLine && delayLine.exitCode === null && delayLine.signalCode === null) {
      delayLine.kill('SIGKILL');
      await once(delayLine, 'exit');
    }
    quietly(() => ip('link', 'del', hostIf));
    for (const ns of namespaces) quietly(() => ip('netns', 'del', ns));
  });
  for (const ns of namespaces) ip('netns', 'add', ns);
  const inRouter = (...args: string[]) => ip('-n', router, ...args);
  ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'up0', 'netns', router);
  ip('addr', 'add', `${net}.1/30`, 'dev', hostIf);
  ip('link', 'set', hostIf, 'up');
  inRouter('addr', 'add', `${net}.2/30`, 'dev', 'up0');
  inRouter('link', 'set', 'up0', 'up');
  inRouter('link', 'set', 'lo', 'up');
  execFileSync('ip', ['netns', 'exec', router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const sites: Record<string, WanSite> = {};
  for (const [i, name] of names.entries()) {
    const ns = namespaces[i + 1] as string;
    const routerIf = `s${i + 1}`;
    const base = 4 * (i + 1);
    inRouter('link', 'add', routerIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    inRouter('addr', 'add', `${net}.${base + 1}/30`, 'dev', routerIf);
    inRouter('link', 'set', routerIf, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'addr', 'add', `${net}.${base + 2}/30`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'route', 'add', 'default', 'via', `${net}.${base + 1}`);
    sites[name] = { name, netns: ns, hostAddr: `${net}.1`, nsAddr: `${net}.${base + 2}`, prefix: ['ip', 'netns', 'exec', ns], routerIf };
  }
  ip('route', 'add', `${net}.0/24`, 'via', `${net}.2`, 'dev', hostIf);

  // The delay line first, then the rule that feeds it (a queue nobody reads drops).
  const { delayMs, jitterMs, lossPct } = impairment;
  const child = spawn('ip', ['netns', 'exec', router, 'python3', '-u', '-c', DELAY_LINE_PY, '0', String(delayMs), String(jitterMs), String(lossPct)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  delayLine = child;
  let out = '';
  let err = '';
  child.stdout?.on('data', (c: Buffer) => {
    // Only the latest stats line matters: keep the buffer short.
    out = (out + c).slice(-4096);
  });
  child.stderr?.on('data', (c: Buffer) => {
    err = (err + c).slice(-4096);
  });
  const ready = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 10_000);
    const check = () => {
      if (out.includes('"ready"')) {
        clearTimeout(timer);
        resolve(true);
      }
    };
    child.stdout?.on('data', check);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(out.includes('"ready"'));
    });
  });
  if (!ready || child.exitCode !== null) throw new Error(`the delay line did not start: ${err.trim() || 'no output'}`);
  execFileSync('ip', ['netns', 'exec', router, 'iptables', '-A', 'FORWARD', '-j', 'NFQUEUE', '--queue-num', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });

  const siteOf = (name: string) => {
    const s = sites[name];
    if (!s) throw new Error(`no site ${name}`);
    return s;
  };
  return {
    router,
    hostAddr: `${net}.1`,
    impairment,
    sites,
    stats() {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the delay line exited: ${err.trim()}`);
      for (const line of out.split('\n').reverse()) {
        try {
          const v = JSON.parse(line) as { msg?: string } & DelayLineStats;
          if (v.msg === 'stats') return { passed: v.passed, dropped: v.dropped };
        } catch {} // a line cut by the buffer's trim, or still being written
      }
      return { passed: 0, dropped: 0 };
    },
    cut: (name) => inRouter('link', 'set', siteOf(name).routerIf, 'down'),
    restore: (name) => inRouter('link', 'set', siteOf(name).routerIf, 'up'),
  };
}
