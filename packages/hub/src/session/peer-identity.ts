/**
 * Who is on the other end of a TLS connection: read only from the certificate
 * that TLS verified against the mesh CA, then checked against the registry
 * (known serial, not revoked, name still bound to this key). Never from
 * anything the peer sends.
 */
import type { TLSSocket } from 'node:tls';
import { ErrorCodes, ZtmError, clusterFromSubjectAltName, parseEndpointUri } from '@ztm/proto';
import { spkiSha256 } from '../ca/certificate-authority.js';
import type { Registry } from '../registry/registry.js';

export interface PeerIdentity {
  endpoint: string;
  /** The user the endpoint acts for (allow-lists name users); from the registry. */
  user: string;
  serial: string;
  spkiSha256: string;
  certNotAfter: number;
  /** The cluster a cluster agent's certificate names (SAN `ztm://<mesh>/cluster/<id>`), else null. */
  cluster: string | null;
}

export type IdentifyResult = { kind: 'endpoint'; identity: PeerIdentity } | { kind: 'anonymous'; error: ZtmError } | { kind: 'refused'; error: ZtmError };

export function identifyPeer(socket: TLSSocket, registry: Registry, mesh: string, now: number): IdentifyResult {
  // The legacy certificate object: one native call, where getPeerX509Certificate()
  // alone cost ≈ 0.2 ms of every handshake (docs/performance.md).
  const cert = socket.getPeerCertificate();
  if (!cert?.raw) {
    return { kind: 'anonymous', error: new ZtmError(ErrorCodes.UNAUTHENTICATED, 'no client certificate: enrol first (ztm-agent join --permit FILE)') };
  }
  if (!socket.authorized) {
    const why = String(socket.authorizationError ?? 'not verified');
    return {
      kind: 'anonymous',
      error: new ZtmError(
        ErrorCodes.UNAUTHENTICATED,
        `client certificate refused (${why}): it is not from this mesh's CA or has expired; enrol again with a new permit`,
      ),
    };
  }
  const uri = /URI:([^,\s]+)/.exec(cert.subjectaltname ?? '')?.[1];
  const id = uri ? parseEndpointUri(uri) : null;
  if (!id) return { kind: 'refused', error: new ZtmError(ErrorCodes.UNAUTHENTICATED, 'client certificate names no ztm endpoint') };
  if (id.mesh !== mesh) return { kind: 'refused', error: new ZtmError(ErrorCodes.WRONG_MESH, `certificate is for mesh ${id.mesh}, this hub serves ${mesh}`) };
  const serial = cert.serialNumber.toUpperCase();
  const row = registry.getCertificate(serial);
  if (!row || row.endpoint !== id.name) {
    return { kind: 'refused', error: new ZtmError(ErrorCodes.UNAUTHENTICATED, 'certificate unknown to this hub: enrol again with a new permit') };
  }
  if (row.revoked_at !== null) {
    return {
      kind: 'refused',
      error: new ZtmError(ErrorCodes.REVOKED, `certificate of endpoint ${id.name} was revoked; ask the hub operator for a new permit`),
    };
  }
  const ep = registry.getEndpoint(id.name);
  if (!ep || ep.revoked_at !== null) {
    return { kind: 'refused', error: new ZtmError(ErrorCodes.REVOKED, `endpoint ${id.name} was revoked; ask the hub operator for a new permit`) };
  }
  const spki = spkiSha256(cert.raw);
  if (spki !== ep.spki_sha256 || spki !== row.spki_sha256) {
    return { kind: 'refused', error: new ZtmError(ErrorCodes.NAME_TAKEN, `endpoint name ${id.name} is bound to another key`) };
  }
  const notAfter = Date.parse(cert.valid_to);
  if (notAfter <= now) return { kind: 'refused', error: new ZtmError(ErrorCodes.UNAUTHENTICATED, 'certificate expired: enrol again') };
  return {
    kind: 'endpoint',
    identity: {
      endpoint: id.name,
      user: ep.user,
      serial,
      spkiSha256: spki,
      certNotAfter: notAfter,
      cluster: clusterFromSubjectAltName(cert.subjectaltname, mesh),
    },
  };
}
