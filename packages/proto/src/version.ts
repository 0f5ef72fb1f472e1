/**
 * Protocol version and its history.
 *
 * The version is sent by the agent in the `hello` control message and in the
 * `ztm-version` header of every request. The hub answers requests of a version
 * it does not speak with `ZTM_ERR_UNSUPPORTED_VERSION` (HTTP 426).
 *
 * History:
 *   1 (0.1.0) — enrolment with one-time permits, mutual-TLS HTTP/2 session,
 *               reverse session, control stream with length-prefixed JSON frames,
 *               certificate renewal, revocation push.
 *               Within 1: multicluster services (mcs.ts) — `mcs-exports`,
 *               `mcs-imports`, `mcs-status`, a cluster SAN URI in cluster
 *               agents' certificates, optional `cluster` in the enrol request.
 *               Only cluster agents send or receive them.
 */
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_VERSIONS: readonly number[] = [1];

/** ALPN id of the agent's main session: the agent is the HTTP/2 client. */
export const ALPN_SESSION = 'h2';
/**
 * ALPN id of the reverse session: the agent dialed the TLS connection but is the
 * HTTP/2 *server* on it, so the hub can open streams to the agent (HTTP/2
 * servers cannot open streams).
 */
export const ALPN_REVERSE = 'ztm-rev/1';
