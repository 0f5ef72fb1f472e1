/**
 * Property-based fuzzing of every decoder a peer can reach: random and mutated
 * input gets a typed error (or a valid value), never a crash, a hang or an
 * unbounded allocation. FUZZ_RUNS raises the count (scripts/fuzz runs more).
 */
import fc from 'fast-check';
import t from 'tap';
import {
  AgentMessage,
  ConfigError,
  DatagramDecoder,
  FrameDecoder,
  HubMessage,
  MAX_DATAGRAM_BYTES,
  ZtmError,
  encodeDatagram,
  encodeFrame,
  parseListen,
  parseMessage,
  parsePermit,
  parseTarget,
  parseTunnelId,
  validateFileName,
} from '@ztm/proto';
import { CertificateAuthority, createCa, parseHubConfig } from '@ztm/hub';
import { parseAgentConfig } from '@ztm/agent';

const RUNS = Number(process.env.FUZZ_RUNS ?? 2000);
// FUZZ_SEED replays a run that failed (fast-check prints the seed and path).
const opts = { numRuns: RUNS, ...(process.env.FUZZ_SEED ? { seed: Number(process.env.FUZZ_SEED) } : {}) };

/** Run fn; it may return or throw a ZtmError / ConfigError, nothing else. */
function typed(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch (err) {
    if (err instanceof ZtmError || err instanceof ConfigError) return true;
    throw err;
  }
}

t.test('control-stream frame decoder', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 512 }), { maxLength: 16 }), (chunks) => {
      const d = new FrameDecoder(4096);
      for (const c of chunks) {
        try {
          d.push(Buffer.from(c));
        } catch (err) {
          if (!(err instanceof ZtmError)) throw err;
          return true;
        }
        // Never holds more than one frame's worth plus a header.
        if (d.buffered > 4096 + 4 + 512) return false;
      }
      return true;
    }),
    opts,
  );
  // Valid frames, split anywhere, mutated anywhere.
  fc.assert(
    fc.property(fc.array(fc.jsonValue(), { minLength: 1, maxLength: 5 }), fc.nat(), fc.nat(), fc.integer({ min: 0, max: 255 }), (values, cut, pos, byte) => {
      const bytes = Buffer.concat(values.map((v) => encodeFrame(v)));
      const mutated = Buffer.from(bytes);
      mutated[pos % mutated.length] = byte;
      const c = cut % (mutated.length + 1);
      return typed(() => {
        const d = new FrameDecoder();
        d.push(mutated.subarray(0, c));
        d.push(mutated.subarray(c));
        d.end();
      });
    }),
    opts,
  );
  t.pass(`${RUNS * 2} cases`);
});

t.test('control messages from either side', async (t) => {
  const arb = fc.oneof(
    fc.jsonValue(),
    fc.record({
      type: fc.constantFrom('hello', 'welcome', 'outbound-ends', 'inbound-ends', 'files', 'error', 'revoked', 'reverse-request', 'mcs-imports'),
      version: fc.anything(),
    }),
    fc.record({ type: fc.constant('outbound-ends'), ends: fc.array(fc.record({ protocol: fc.string(), name: fc.string(), allowEndpoints: fc.anything() })) }),
  );
  fc.assert(
    fc.property(arb, (v) => typed(() => parseMessage(AgentMessage, v)) && typed(() => parseMessage(HubMessage, v))),
    opts,
  );
  t.pass(`${RUNS} cases`);
});

t.test('UDP datagram framing', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 10 }), (chunks) => {
      const d = new DatagramDecoder();
      for (const c of chunks) {
        try {
          for (const g of d.push(Buffer.from(c))) if (g.length > MAX_DATAGRAM_BYTES) return false;
        } catch (err) {
          if (!(err instanceof ZtmError)) throw err;
          return true;
        }
      }
      return d.buffered <= 2 + MAX_DATAGRAM_BYTES;
    }),
    opts,
  );
  // Round trip: what is encoded comes back whole, whatever the chunking.
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 2000 }), { maxLength: 8 }), fc.nat(), (grams, cut) => {
      const wire = Buffer.concat(grams.map((g) => encodeDatagram(Buffer.from(g))));
      const c = cut % (wire.length + 1);
      const d = new DatagramDecoder();
      const out = [...d.push(wire.subarray(0, c)), ...d.push(wire.subarray(c))];
      return out.length === grams.length && out.every((g, i) => Buffer.compare(g, Buffer.from(grams[i] as Uint8Array)) === 0);
    }),
    opts,
  );
  t.pass(`${RUNS * 2} cases`);
});

t.test('permit parsing', async (t) => {
  const ca = new CertificateAuthority('fuzz', await createCa('fuzz'));
  const { createPermit } = await import('../packages/hub/dist/admin/operations.js');
  const { Registry } = await import('@ztm/hub');
  const registry = new Registry(':memory:');
  t.teardown(() => registry.close());
  const good = JSON.stringify(createPermit({ ca, registry, names: ['127.0.0.1:1'] }, 'node', 3_600_000));
  fc.assert(
    fc.property(fc.string({ maxLength: 400 }), (s) => typed(() => parsePermit(s))),
    opts,
  );
  fc.assert(
    fc.property(fc.nat(), fc.string({ minLength: 1, maxLength: 3 }), (pos, ins) => {
      const i = pos % good.length;
      return typed(() => parsePermit(good.slice(0, i) + ins + good.slice(i + 1)));
    }),
    opts,
  );
  t.doesNotThrow(() => parsePermit(good), 'the unmutated permit parses');
  t.pass(`${RUNS * 2} cases`);
});

t.test('CSR handling', async (t) => {
  const ca = new CertificateAuthority('fuzz', await createCa('fuzz'));
  const { createCsrPem, generateKeyPem } = await import('../packages/agent/dist/identity/keys.js');
  const csr = await createCsrPem(await generateKeyPem(), 'x');
  const body = csr.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
  const runs = Math.max(200, Math.floor(RUNS / 10)); // each case verifies a signature
  await fc.assert(
    fc.asyncProperty(fc.nat(), fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/'), async (pos, ch) => {
      const i = pos % body.length;
      const mutated = `-----BEGIN CERTIFICATE REQUEST-----\n${body.slice(0, i)}${ch}${body.slice(i + 1)}\n-----END CERTIFICATE REQUEST-----\n`;
      try {
        await ca.checkCsr(mutated);
        return true; // a mutation that kept it valid (same char)
      } catch (err) {
        if (err instanceof ZtmError) return true;
        throw err;
      }
    }),
    { numRuns: runs },
  );
  await fc.assert(
    fc.asyncProperty(fc.string({ maxLength: 300 }), async (s) => {
      try {
        await ca.checkCsr(s);
        return false;
      } catch (err) {
        return err instanceof ZtmError;
      }
    }),
    { numRuns: runs },
  );
  t.pass(`${runs * 2} cases`);
});

t.test('config parsing', async (t) => {
  const value = fc.oneof(fc.string(), fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }));
  const keys = ['listen', 'logLevel', 'keepaliveTimeout', 'certLifetime', 'maxUnauthenticated', 'hubs', 'labels', 'tunnels', 'filesDir', 'bogus'];
  const cfg = fc.dictionary(fc.constantFrom(...keys), value, { maxKeys: 6 });
  fc.assert(
    fc.property(fc.oneof(cfg, fc.jsonValue()), (c) => typed(() => parseHubConfig(c)) && typed(() => parseAgentConfig(c))),
    opts,
  );
  t.pass(`${RUNS} cases`);
});

t.test('names and addresses from the admin API and CLI', async (t) => {
  fc.assert(
    fc.property(fc.string({ maxLength: 80 }), (s) => {
      try {
        const n = validateFileName(s);
        // Anything accepted is a safe relative path.
        return !n.startsWith('/') && !n.split('/').some((seg) => seg === '..' || seg === '.' || seg === '');
      } catch (err) {
        if (!(err instanceof ZtmError)) throw err;
        return true;
      }
    }),
    opts,
  );
  fc.assert(
    fc.property(fc.string({ maxLength: 40 }), (s) => typed(() => parseTunnelId(s)) && typed(() => parseListen(s)) && typed(() => parseTarget(s))),
    opts,
  );
  t.pass(`${RUNS * 2} cases`);
});
