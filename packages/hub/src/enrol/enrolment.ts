/**
 * Enrolment: a permit's one-time token plus a CSR made on the device become
 * the endpoint's certificate. The token is checked against the registry (its
 * SHA-256 only is stored), the permit's signature against our CA, and the
 * name's binding to a key is enforced.
 */
import { createHash } from 'node:crypto';
import { type EnrolResponse, ErrorCodes, ZtmError, checkPermitExpiry, validatePermit, verifyPermitSignature } from '@ztm/proto';
import type { CertificateAuthority } from '../ca/certificate-authority.js';
import type { Registry } from '../registry/registry.js';

export function tokenSha256(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export interface EnrolDeps {
  ca: CertificateAuthority;
  registry: Registry;
  certLifetimeMs: number;
  now?: () => number;
}

/** `cluster`: a cluster agent's cluster id, bound into its certificate and the registry. */
export async function enrol(deps: EnrolDeps, permitRaw: unknown, csrPem: string, cluster?: string): Promise<EnrolResponse> {
  const now = deps.now?.() ?? Date.now();
  const permit = validatePermit(permitRaw);
  if (permit.mesh !== deps.ca.mesh) {
    throw new ZtmError(ErrorCodes.WRONG_MESH, `permit is for mesh ${permit.mesh}, this hub serves mesh ${deps.ca.mesh}`);
  }
  verifyPermitSignature(permit, deps.ca.certPem);
  const hash = tokenSha256(permit.token);
  const row = deps.registry.getPermit(hash);
  if (!row) throw new ZtmError(ErrorCodes.TOKEN_UNKNOWN, 'this hub has no record of the permit: ask the hub operator for a new one');
  if (row.endpoint !== permit.endpoint) throw new ZtmError(ErrorCodes.PERMIT_TAMPERED, 'permit does not match its token');
  if (row.used_at !== null) throw new ZtmError(ErrorCodes.TOKEN_USED, 'this permit was already used: ask the hub operator for a new one');
  checkPermitExpiry(permit, now);
  if (row.expires_at <= now) throw new ZtmError(ErrorCodes.PERMIT_EXPIRED, 'permit expired: ask the hub operator for a new one');

  const csr = await deps.ca.checkCsr(csrPem);
  const { spkiSha256 } = csr;
  const existing = deps.registry.getEndpoint(permit.endpoint);
  if (existing && existing.revoked_at === null && existing.spki_sha256 !== spkiSha256) {
    throw new ZtmError(
      ErrorCodes.NAME_TAKEN,
      `endpoint name ${permit.endpoint} is already enrolled with another key; revoke it first (ztm-hub revoke ${permit.endpoint}) if this device replaces it`,
    );
  }
  const user = row.user ?? permit.endpoint;
  const cert = await deps.ca.issueEndpointCertificate(csr, permit.endpoint, user, deps.certLifetimeMs, cluster);
  deps.registry.recordEnrolment({
    tokenSha256: hash,
    endpoint: permit.endpoint,
    user,
    cluster: cluster ?? null,
    spkiSha256,
    serial: cert.serial,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    now,
  });
  return {
    certificate: cert.certPem,
    ca: deps.ca.certPem,
    endpoint: permit.endpoint,
    mesh: deps.ca.mesh,
    certExpires: new Date(cert.notAfter).toISOString(),
  };
}

/** Renewal over an authenticated session: same key, fresh certificate. */
export async function renew(deps: EnrolDeps, endpoint: string, csrPem: string): Promise<{ certificate: string; certExpires: string }> {
  const now = deps.now?.() ?? Date.now();
  const ep = deps.registry.getEndpoint(endpoint);
  if (!ep || ep.revoked_at !== null) throw new ZtmError(ErrorCodes.REVOKED, `endpoint ${endpoint} is revoked`);
  const csr = await deps.ca.checkCsr(csrPem);
  if (csr.spkiSha256 !== ep.spki_sha256) {
    throw new ZtmError(ErrorCodes.FORBIDDEN, 'renewal must keep the enrolled key; enrol again with a new permit to change keys');
  }
  const cert = await deps.ca.issueEndpointCertificate(csr, endpoint, ep.user, deps.certLifetimeMs, ep.cluster);
  deps.registry.recordRenewal(endpoint, cert, now);
  return { certificate: cert.certPem, certExpires: new Date(cert.notAfter).toISOString() };
}
