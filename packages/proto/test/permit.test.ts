/**
 * Permits: parse, signature and expiry checks on good and bad input. Permits
 * are signed by a real mesh CA (the hub's createCa).
 */
import t, { type Test } from 'tap';
import { CertificateAuthority, createCa } from '@ztm/hub';
import {
  ErrorCodes,
  PERMIT_KIND,
  PERMIT_VERSION,
  type Permit,
  ZtmError,
  checkPermitExpiry,
  parsePermit,
  permitSigningBytes,
  validatePermit,
  verifyPermitSignature,
} from '@ztm/proto';

const HOUR = 3_600_000;
const [meshCa, otherCa] = await Promise.all([createCa('test'), createCa('other')]);
const ca = new CertificateAuthority('test', meshCa);
const other = new CertificateAuthority('other', otherCa);

function sign(authority: CertificateAuthority, fields: Omit<Permit, 'signature'>): Permit {
  return { ...fields, signature: authority.signBytes(permitSigningBytes(fields)) };
}
const issued = Date.parse('2099-01-01T00:00:00.000Z');
const good: Permit = sign(ca, {
  kind: PERMIT_KIND,
  version: PERMIT_VERSION,
  mesh: 'test',
  endpoint: 'alpha',
  hubs: ['127.0.0.1:8888', 'hub.example.com:443'],
  ca: ca.certPem,
  token: 'A'.repeat(20) + 'b_c-d'.repeat(4) + 'Z'.repeat(3),
  issued: new Date(issued).toISOString(),
  expires: new Date(issued + HOUR).toISOString(),
});
const text = JSON.stringify(good, null, 2);

function rejects(t: Test, fn: () => unknown, code: string, message: RegExp, what: string): void {
  try {
    fn();
    t.fail(`${what}: accepted`);
  } catch (err) {
    t.ok(err instanceof ZtmError, `${what}: a ZtmError`);
    t.equal((err as ZtmError).code, code, `${what}: ${code}`);
    t.match((err as Error).message, message, `${what}: message says why`);
    t.notOk((err as Error).message.includes(good.token), `${what}: message does not echo the token`);
  }
}

t.test('a good permit', async (t) => {
  const p = parsePermit(text);
  t.same(p, good, 'parses to the same fields');
  t.doesNotThrow(() => verifyPermitSignature(p), 'signature verifies against the CA in the permit (agent side)');
  t.doesNotThrow(() => verifyPermitSignature(p, ca.certPem), "signature verifies against the hub's own CA (hub side)");
  t.doesNotThrow(() => checkPermitExpiry(p, issued + HOUR - 1), 'valid a millisecond before expiry');
});

t.test('parsePermit refuses what is not a permit', async (t) => {
  rejects(t, () => parsePermit('this is { not json'), ErrorCodes.PERMIT_INVALID, /not valid JSON/, 'not JSON');
  rejects(t, () => parsePermit(''), ErrorCodes.PERMIT_INVALID, /not valid JSON/, 'empty file');
  rejects(t, () => parsePermit('null'), ErrorCodes.PERMIT_INVALID, /malformed/, 'JSON null');
  rejects(t, () => parsePermit('[]'), ErrorCodes.PERMIT_INVALID, /malformed/, 'JSON array');
  const { token: _t, signature: _s, ...partial } = good;
  rejects(
    t,
    () => parsePermit(JSON.stringify(partial)),
    ErrorCodes.PERMIT_INVALID,
    /malformed.*token.*signature|malformed.*signature.*token/,
    'missing fields named',
  );
  const bad: [string, Record<string, unknown>, RegExp][] = [
    ['wrong kind', { kind: 'ztm-license' }, /kind/],
    ['future version', { version: 2 }, /version/],
    ['uppercase endpoint', { endpoint: 'Alpha' }, /endpoint/],
    ['endpoint with a slash', { endpoint: 'a/b' }, /endpoint/],
    ['no hubs', { hubs: [] }, /hubs/],
    ['hub without port', { hubs: ['hub.example.com'] }, /hubs/],
    ['ca not a certificate', { ca: 'hello' }, /ca/],
    ['short token', { token: 'abc' }, /token/],
    ['token with spaces', { token: `${'x'.repeat(40)} ${'y'.repeat(10)}` }, /token/],
    ['issued not a time', { issued: 'yesterday' }, /issued/],
    ['signature not base64', { signature: '!!!!not base64!!!!' }, /signature/],
    ['unknown field', { admin: true }, /admin|unrecognized/i],
  ];
  for (const [what, change, field] of bad) {
    rejects(t, () => parsePermit(JSON.stringify({ ...good, ...change })), ErrorCodes.PERMIT_INVALID, field, what);
  }
  t.throws(() => validatePermit(undefined), { code: ErrorCodes.PERMIT_INVALID }, 'validatePermit(undefined)');
});

t.test('verifyPermitSignature catches every changed field', async (t) => {
  const changes: [string, Partial<Permit>][] = [
    ['mesh', { mesh: 'other' }],
    ['endpoint', { endpoint: 'mallory' }],
    ['hubs', { hubs: ['10.0.0.66:8888'] }],
    ['hub order', { hubs: [...good.hubs].reverse() }],
    ['token', { token: `${good.token.slice(0, -1)}Y` }],
    ['issued', { issued: new Date(issued - HOUR).toISOString() }],
    ['expires', { expires: new Date(issued + 1000 * HOUR).toISOString() }],
  ];
  for (const [what, change] of changes) {
    const p = validatePermit({ ...good, ...change });
    rejects(t, () => verifyPermitSignature(p), ErrorCodes.PERMIT_TAMPERED, /altered/, `${what} changed`);
    rejects(t, () => verifyPermitSignature(p, ca.certPem), ErrorCodes.PERMIT_TAMPERED, /altered/, `${what} changed (hub side)`);
  }
  const flipped = good.signature.startsWith('A') ? `B${good.signature.slice(1)}` : `A${good.signature.slice(1)}`;
  rejects(t, () => verifyPermitSignature({ ...good, signature: flipped }), ErrorCodes.PERMIT_TAMPERED, /altered/, 'signature changed');
  rejects(t, () => verifyPermitSignature({ ...good, signature: 'AAAAAAAAAAAAAAAAAAAA' }), ErrorCodes.PERMIT_TAMPERED, /altered/, 'signature of zeros');
  rejects(t, () => verifyPermitSignature({ ...good, ca: other.certPem }), ErrorCodes.PERMIT_TAMPERED, /altered/, 'ca swapped for another CA');
  rejects(t, () => verifyPermitSignature({ ...good, ca: '-----BEGIN CERTIFICATE-----\nbroken' }), ErrorCodes.PERMIT_TAMPERED, /altered/, 'ca unreadable');

  // Re-signed by another CA with that CA inside: self-consistent for the agent,
  // refused by the hub, which checks against its own CA.
  const forged = sign(other, { ...good, endpoint: 'mallory', ca: other.certPem });
  t.doesNotThrow(() => verifyPermitSignature(forged), 'a forged permit is consistent with the CA it carries');
  rejects(t, () => verifyPermitSignature(forged, ca.certPem), ErrorCodes.PERMIT_TAMPERED, /altered/, "forged permit against the hub's CA");
});

t.test('checkPermitExpiry', async (t) => {
  const expires = Date.parse(good.expires);
  t.doesNotThrow(() => checkPermitExpiry(good, issued), 'at issue time');
  rejects(t, () => checkPermitExpiry(good, expires), ErrorCodes.PERMIT_EXPIRED, /alpha expired at 2099-01-01T01:00:00.000Z/, 'at the expiry instant');
  rejects(t, () => checkPermitExpiry(good, expires + 1), ErrorCodes.PERMIT_EXPIRED, /expired/, 'a millisecond after');
  t.doesNotThrow(() => checkPermitExpiry(good, Date.now()), 'now (the permit is from 2099)');
  const past = sign(ca, { ...good, issued: '2020-01-01T00:00:00.000Z', expires: '2020-01-01T01:00:00.000Z' });
  rejects(t, () => checkPermitExpiry(past), ErrorCodes.PERMIT_EXPIRED, /expired/, 'expired permit, default clock');
});
