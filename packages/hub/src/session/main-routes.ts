/**
 * Streams an agent opens on its main session. Identity comes from the session
 * (its verified certificate), never from the request.
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import {
  AgentMessage,
  ErrorCodes,
  FRAMES_CONTENT_TYPE,
  FrameDecoder,
  Paths,
  PROTOCOL_VERSION,
  RenewRequest,
  SUPPORTED_VERSIONS,
  ZtmError,
  encodeFrame,
  parseMessage,
  toZtmError,
  tunnelFromPath,
  readStreamJson,
  respondError,
  respondJson,
} from '@ztm/proto';
import { renew, type EnrolDeps } from '../enrol/enrolment.js';
import { listEndpoints, type OperationsContext } from '../admin/operations.js';
import type { McsHub } from '../mcs/mcs-hub.js';
import type { FileService } from '../files/file-service.js';
import { MANAGE_PATH, manageRemote } from '../relay/remote-manage.js';
import type { AgentSession } from './agent-session.js';
import { type RelayDeps, relayConnection } from '../relay/tunnel-relay.js';
import type { SessionManager } from './session-manager.js';

export interface MainRouteDeps {
  enrol: EnrolDeps;
  ops: OperationsContext;
  sessions: SessionManager;
  mesh: string;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  relay: RelayDeps;
  /** Counts control messages by type (metrics). */
  countControl?: (type: string) => void;
  /** Users whose endpoints may manage any endpoint's tunnels. */
  admins?: readonly string[];
  /** Mesh files (routes under /v1/files and /v1/content); absent: disabled. */
  files?: FileService;
  /** Multicluster services (mcs/): takes `mcs-exports`. */
  mcs?: McsHub;
}

export function handleMainStream(deps: MainRouteDeps, session: AgentSession, stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
  const method = headers[':method'];
  const path = headers[':path'];
  stream.on('error', () => {}); // resets are normal; the session logs what matters
  if (method === 'POST' && path === Paths.control) return void openControl(deps, session, stream);
  const tunnel = method === 'POST' ? tunnelFromPath(path) : null;
  if (deps.files?.handle(session, stream, headers)) return;
  if (method === 'POST' && MANAGE_PATH.test(String(path))) {
    void manageRemote({ sessions: deps.sessions, admins: deps.admins ?? [], log: session.log }, session, stream, headers);
    return;
  }
  if (tunnel) {
    if (session.state !== 'online') respondError(stream, new ZtmError(ErrorCodes.BAD_REQUEST, 'say hello on the control stream first'));
    else void relayConnection(deps.relay, session, stream, headers, tunnel);
    return;
  }
  void (async () => {
    try {
      if (method === 'POST' && path === Paths.renew) {
        const body = parseMessage(RenewRequest, await readStreamJson(stream));
        const out = await renew(deps.enrol, session.endpoint, body.csr);
        session.log.info({ certExpires: out.certExpires }, 'certificate renewed');
        return respondJson(stream, 200, out);
      }
      if (method === 'GET' && path === Paths.endpoints) return respondJson(stream, 200, listEndpoints(deps.ops));
      throw new ZtmError(ErrorCodes.NOT_FOUND, `no route ${method} ${path}`);
    } catch (err) {
      respondError(stream, err);
    }
  })();
}

function openControl(deps: MainRouteDeps, session: AgentSession, stream: ServerHttp2Stream): void {
  stream.respond({ ':status': 200, 'content-type': FRAMES_CONTENT_TYPE });
  session.attachControl(stream);
  const decoder = new FrameDecoder();
  const fail = (err: unknown) => {
    const e = toZtmError(err, ErrorCodes.BAD_FRAME);
    session.log.warn({ code: e.code, reason: e.message }, 'control stream protocol error; dropping session');
    if (!stream.destroyed) stream.end(encodeFrame({ type: 'error', code: e.code, message: e.message }));
    setImmediate(() => session.destroy(e));
  };
  stream.on('data', (chunk: Buffer) => {
    let frames: unknown[];
    try {
      frames = decoder.push(chunk);
    } catch (err) {
      return fail(err);
    }
    for (const f of frames) {
      try {
        const msg = parseMessage(AgentMessage, f);
        deps.countControl?.(msg.type);
        if (msg.type === 'hello') onHello(deps, session, msg.version, msg.labels);
        else if (session.state !== 'online') throw new ZtmError(ErrorCodes.BAD_MESSAGE, `${msg.type} before hello`);
        else if (msg.type === 'outbound-ends') deps.sessions.setOutbound(session, msg.ends);
        else if (msg.type === 'inbound-ends') session.inbound = msg.ends;
        else if (msg.type === 'mcs-exports') deps.mcs?.onExports(session, msg);
        else session.log.warn({ code: msg.code, reason: msg.message }, 'agent reported an error');
      } catch (err) {
        return fail(err);
      }
    }
  });
  stream.on('end', () => session.close('control stream ended by agent'));
  stream.on('close', () => {
    if (!session.closed) session.close('control stream closed');
  });
}

function onHello(deps: MainRouteDeps, session: AgentSession, version: number, labels: Record<string, string>): void {
  if (session.state !== 'handshaking') throw new ZtmError(ErrorCodes.BAD_MESSAGE, 'hello sent twice');
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new ZtmError(ErrorCodes.UNSUPPORTED_VERSION, `protocol version ${version} not supported (hub speaks ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  session.labels = labels;
  session.state = 'online';
  deps.sessions.add(session);
  session.sendControl({
    type: 'welcome',
    version: PROTOCOL_VERSION,
    mesh: deps.mesh,
    endpoint: session.endpoint,
    sessionId: session.id,
    hubTime: new Date().toISOString(),
    keepaliveIntervalMs: deps.keepaliveIntervalMs,
    keepaliveTimeoutMs: deps.keepaliveTimeoutMs,
    certExpires: new Date(session.identity.certNotAfter).toISOString(),
  });
  session.log.info({ address: session.address }, 'endpoint online');
  void deps.files?.sendCatalogue(session);
}
