/**
 * Permit: the file an operator hands to a new endpoint (`ztm-hub permit create`).
 *
 * It names the mesh, the endpoint, the hub addresses and the mesh CA, and holds
 * a one-time, expiring join token. It holds no private key: the agent makes its
 * key on the device. The hub signs the permit with the CA key, so a changed
 * field is caught by the agent before it dials and by the hub at enrolment.
 */
import { type KeyObject, X509Certificate, verify } from 'node:crypto';
import { z } from 'zod';
import { ErrorCodes, ZtmError } from './errors.js';
import { ENDPOINT_NAME_PATTERN, MESH_NAME_PATTERN } from './limits.js';

export const PERMIT_KIND = 'ztm-permit';
export const PERMIT_VERSION = 1;

const HostPort = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port');

export const Permit = z.strictObject({
  kind: z.literal(PERMIT_KIND),
  version: z.literal(PERMIT_VERSION),
  mesh: z.string().regex(MESH_NAME_PATTERN, 'must be a lowercase DNS label'),
  endpoint: z.string().regex(ENDPOINT_NAME_PATTERN, 'must be a lowercase DNS label'),
  hubs: z.array(HostPort).min(1).max(16),
  ca: z.string().startsWith('-----BEGIN CERTIFICATE-----').max(16384),
  token: z.string().regex(/^[A-Za-z0-9_-]{32,128}$/, 'must be a base64url token'),
  issued: z.iso.datetime(),
  expires: z.iso.datetime(),
  signature: z.string().regex(/^[A-Za-z0-9+/=]{16,512}$/, 'must be base64'),
});
export type Permit = z.infer<typeof Permit>;
export type UnsignedPermit = Omit<Permit, 'signature'>;

/** The bytes the signature covers: every field but `signature`, in a fixed order. */
export function permitSigningBytes(p: UnsignedPermit): Buffer {
  const body = [p.kind, p.version, p.mesh, p.endpoint, p.hubs, p.ca, p.token, p.issued, p.expires];
  return Buffer.from(JSON.stringify(body), 'utf8');
}

/** Parse permit text; every problem is a typed error that says what is wrong. */
export function parsePermit(text: string): Permit {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ZtmError(ErrorCodes.PERMIT_INVALID, 'permit is not valid JSON: ask the hub operator for a new one (ztm-hub permit create NAME)');
  }
  return validatePermit(raw);
}

export function validatePermit(raw: unknown): Permit {
  const r = Permit.safeParse(raw);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ZtmError(ErrorCodes.PERMIT_INVALID, `permit is malformed (${issues}): ask the hub operator for a new one`);
  }
  return r.data;
}

/** The last CA certificate's key: the hub checks every permit against its
 * own, and parsing it took ≈ 0.4 ms of CPU each time (OpenSSL 3's decoders). */
let lastCa: { pem: string; key: KeyObject } | undefined;
function caPublicKey(pem: string): KeyObject {
  if (lastCa?.pem !== pem) lastCa = { pem, key: new X509Certificate(pem).publicKey };
  return lastCa.key;
}

/** Check the signature against the CA certificate in the permit (agent side)
 * or the hub's own CA (hub side, pass `caPem`). */
export function verifyPermitSignature(p: Permit, caPem: string = p.ca): void {
  let ok = false;
  try {
    ok = verify('sha256', permitSigningBytes(p), caPublicKey(caPem), Buffer.from(p.signature, 'base64'));
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new ZtmError(
      ErrorCodes.PERMIT_TAMPERED,
      'permit signature does not match its content: it was altered or is damaged; ask the hub operator for a new one',
    );
  }
}

export function checkPermitExpiry(p: Permit, now = Date.now()): void {
  if (Date.parse(p.expires) <= now) {
    throw new ZtmError(ErrorCodes.PERMIT_EXPIRED, `permit for ${p.endpoint} expired at ${p.expires}: ask the hub operator for a new one`);
  }
}
