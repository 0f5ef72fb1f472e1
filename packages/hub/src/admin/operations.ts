/**
 * What an operator can do: shared by the admin socket (hub running) and the
 * CLI working on the data directory directly (hub stopped).
 */
import { randomBytes } from 'node:crypto';
import { type EndpointInfo, ErrorCodes, PERMIT_KIND, PERMIT_VERSION, type Permit, ZtmError, isValidName, permitSigningBytes } from '@ztm/proto';
import type { CertificateAuthority } from '../ca/certificate-authority.js';
import { tokenSha256 } from '../enrol/enrolment.js';
import type { Registry } from '../registry/registry.js';
import type { SessionManager } from '../session/session-manager.js';

export interface OperationsContext {
  ca: CertificateAuthority;
  registry: Registry;
  names: readonly string[];
  /** Present while the hub runs. */
  sessions?: SessionManager;
  now?: () => number;
}

const iso = (ms: number | null | undefined): string | null => (ms == null ? null : new Date(ms).toISOString());

export function createPermit(ctx: OperationsContext, endpoint: string, ttlMs: number, user: string = endpoint): Permit {
  if (!isValidName(endpoint)) {
    throw new ZtmError(
      ErrorCodes.BAD_REQUEST,
      `endpoint name ${JSON.stringify(endpoint)} is not valid: use lowercase letters, digits, '.', '-' or '_' (at most 63, starting and ending with a letter or digit)`,
    );
  }
  if (!isValidName(user)) throw new ZtmError(ErrorCodes.BAD_REQUEST, `user name ${JSON.stringify(user)} is not valid (same rules as endpoint names)`);
  if (!(ttlMs > 0)) throw new ZtmError(ErrorCodes.BAD_REQUEST, 'permit ttl must be positive (e.g. 1h)');
  const now = ctx.now?.() ?? Date.now();
  const token = randomBytes(32).toString('base64url');
  const unsigned = {
    kind: PERMIT_KIND as typeof PERMIT_KIND,
    version: PERMIT_VERSION as typeof PERMIT_VERSION,
    mesh: ctx.ca.mesh,
    endpoint,
    hubs: [...ctx.names],
    ca: ctx.ca.certPem,
    token,
    issued: new Date(now).toISOString(),
    expires: new Date(now + ttlMs).toISOString(),
  };
  const signature = ctx.ca.signBytes(permitSigningBytes(unsigned));
  ctx.registry.addPermit(tokenSha256(token), endpoint, user, now, now + ttlMs);
  return { ...unsigned, signature };
}

export function listEndpoints(ctx: OperationsContext): EndpointInfo[] {
  const now = ctx.now?.() ?? Date.now();
  return ctx.registry.listEndpoints().map((ep) => {
    const live = ctx.sessions?.get(ep.name);
    const cert = live ? { not_after: live.identity.certNotAfter } : ctx.registry.latestCertificate(ep.name);
    return {
      name: ep.name,
      user: ep.user,
      online: live !== undefined && live.state === 'online',
      lastSeen: live ? iso(now) : iso(ep.last_seen),
      certExpires: iso(cert?.not_after),
      address: live?.address ?? ep.last_address,
      revoked: ep.revoked_at !== null,
      enrolledAt: iso(ep.enrolled_at),
    };
  });
}

export function revokeEndpoint(ctx: OperationsContext, endpoint: string): { endpoint: string; certificates: number; disconnected: boolean } {
  const ep = ctx.registry.getEndpoint(endpoint);
  if (!ep) throw new ZtmError(ErrorCodes.NOT_FOUND, `no endpoint named ${endpoint} (see ztm-hub endpoints)`);
  const certificates = ctx.registry.revokeEndpoint(endpoint, ctx.now?.() ?? Date.now());
  const disconnected = ctx.sessions?.revoke(endpoint, `endpoint ${endpoint} was revoked by the hub operator`) ?? false;
  return { endpoint, certificates, disconnected };
}
