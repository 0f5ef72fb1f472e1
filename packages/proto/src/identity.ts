/**
 * Endpoint identity inside certificates.
 *
 * An endpoint certificate has subject CN = endpoint name and one SAN URI
 * `ztm://<mesh>/endpoint/<name>`, and a second one naming the user it acts
 * for, `ztm://<mesh>/user/<user>` (allow-lists may name users). The hub reads identity only from the
 * certificate it verified, never from what a caller says.
 */
import { ENDPOINT_NAME_PATTERN } from './limits.js';

export function endpointUri(mesh: string, name: string): string {
  return `ztm://${mesh}/endpoint/${name}`;
}

/** The user an endpoint acts for: `ztm://<mesh>/user/<user>` (second SAN URI). */
export function userUri(mesh: string, user: string): string {
  return `ztm://${mesh}/user/${user}`;
}

export function parseEndpointUri(uri: string): { mesh: string; name: string } | null {
  const m = /^ztm:\/\/([^/]+)\/endpoint\/([^/]+)$/.exec(uri);
  if (!m || !m[1] || !m[2]) return null;
  return { mesh: m[1], name: m[2] };
}

export function isValidName(name: string): boolean {
  return ENDPOINT_NAME_PATTERN.test(name);
}

/** What `ztm-hub endpoints` and `ztm-agent endpoints` print (JSON shape). */
export interface EndpointInfo {
  name: string;
  /** The user the endpoint acts for (from its enrolment). */
  user: string;
  online: boolean;
  /** ISO time of the last session activity, or null if never seen. */
  lastSeen: string | null;
  /** ISO time the current certificate expires, or null. */
  certExpires: string | null;
  /** Remote address of the live session, or of the last one. */
  address: string | null;
  revoked: boolean;
  enrolledAt: string | null;
}

/**
 * A certificate and the mesh CA that issued it as one PEM chain, for the
 * `cert` of the hub's TLS context. Given a chain, OpenSSL sends it as it is;
 * given the certificate alone it builds the same chain from the trust store on
 * every handshake (a verification with a signature check: ≈ 0.1 ms of the
 * hub's CPU per connect, docs/performance.md). The bytes on the wire are the
 * same. Agents send their certificate without the CA (hub-trust.ts).
 */
export function certChainPem(certPem: string, caPem: string): string {
  return `${certPem.trimEnd()}\n${caPem.trimEnd()}\n`;
}
