/**
 * Request paths and headers.
 *
 * Main session (agent → hub, agent is the HTTP/2 client):
 *   POST /v1/enrol      permit + CSR → certificate. The only route open to a TLS
 *                       client without a certificate; its token authenticates it.
 *   POST /v1/control    the control stream: length-prefixed JSON frames both ways
 *                       for the session's life (see messages.ts).
 *   POST /v1/renew      CSR for the same key → a fresh certificate.
 *   GET  /v1/endpoints  the mesh's endpoints (EndpointInfo[]).
 *   POST /v1/tunnel/{tcp|udp}/NAME
 *                       a relayed connection from an inbound end (tunnel.ts);
 *                       optional `ztm-exits` header pins exits.
 *
 * Reverse session (hub → agent, hub is the HTTP/2 client):
 *   POST /v1/ping       body echoed back; the hub measures the round trip.
 *   POST /v1/tunnel/{tcp|udp}/NAME
 *                       a relayed connection for the agent's outbound end, with
 *                       `ztm-source-endpoint` and `ztm-source-user` stamped by
 *                       the hub from the entrance's certificate.
 *
 * Every request carries `ztm-version`. Errors are `{ error: { code, message } }`
 * with the status from errors.ts.
 */
export const Paths = {
  enrol: '/v1/enrol',
  control: '/v1/control',
  renew: '/v1/renew',
  endpoints: '/v1/endpoints',
  ping: '/v1/ping',
} as const;

export const Headers = {
  version: 'ztm-version',
  contentType: 'content-type',
  /** Inbound end → hub: comma-separated exits to use, in order of preference. */
  exits: 'ztm-exits',
  /** Hub → outbound end: the entrance, from its verified certificate. */
  sourceEndpoint: 'ztm-source-endpoint',
  sourceUser: 'ztm-source-user',
} as const;

export const JSON_CONTENT_TYPE = 'application/json';
export const FRAMES_CONTENT_TYPE = 'application/ztm-frames';

/** Local admin API (Unix socket, 0600) of hub and agent: HTTP/1.1, JSON. */
export const AdminPaths = {
  status: '/status',
  endpoints: '/endpoints',
  permits: '/permits',
  revoke: '/revoke',
  ping: '/ping',
  tunnels: '/tunnels',
  tunnelOpen: '/tunnels/open',
  tunnelClose: '/tunnels/close',
  /** Operate another endpoint's tunnels through the hub. */
  tunnelRemote: '/tunnels/remote',
  files: '/files',
  filePublish: '/files/publish',
  fileUnpublish: '/files/unpublish',
} as const;

/** File name of the admin socket inside the data directory. */
export const ADMIN_SOCKET_NAME = 'admin.sock';
