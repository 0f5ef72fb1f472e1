/**
 * Remote management: an endpoint operates another endpoint's tunnels through
 * the hub. The hub allows it only when both act for the same user, or the
 * caller's user is one of the hub's `admins` — decided from the certificate
 * identities of both sides. The request is passed to the target over its
 * reverse session with the caller stamped in; the target applies it.
 *
 *   POST /v1/manage/<endpoint>/tunnels  {action: open|close|list, ...}
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { ErrorCodes, Headers, ZtmError, fromWire, readJsonBody, readStreamJson, respondError, respondJson } from '@ztm/proto';
import type { Logger } from '../log.js';
import type { AgentSession } from '../session/agent-session.js';
import type { SessionManager } from '../session/session-manager.js';

export const MANAGE_PATH = /^\/v1\/manage\/([a-z0-9._-]+)\/tunnels$/;
/** The path the target agent serves on its reverse session. */
export const MANAGE_TARGET_PATH = '/v1/manage/tunnels';

export async function manageRemote(
  deps: { sessions: SessionManager; admins: readonly string[]; log: Logger },
  caller: AgentSession,
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
): Promise<void> {
  try {
    const target = MANAGE_PATH.exec(String(headers[':path']))?.[1] as string;
    const body = await readStreamJson(stream);
    const t = deps.sessions.get(target);
    if (!t || t.state !== 'online') throw new ZtmError(ErrorCodes.OFFLINE, `endpoint ${target} is not online`);
    const admin = deps.admins.includes(caller.user);
    if (t.user !== caller.user && !admin) {
      throw new ZtmError(
        ErrorCodes.FORBIDDEN,
        `endpoint ${caller.endpoint} (user ${caller.user}) may not manage ${target} (user ${t.user}): same user or a hub admin only`,
      );
    }
    deps.log.info({ caller: caller.endpoint, target, admin, action: (body as { action?: unknown })?.action }, 'remote tunnel management');
    const out = await t.openStream(MANAGE_TARGET_PATH, {
      [Headers.sourceEndpoint]: caller.endpoint,
      [Headers.sourceUser]: caller.user,
      'content-type': 'application/json',
    });
    out.end(JSON.stringify(body ?? {}));
    const status = await new Promise<number>((resolve, reject) => {
      out.once('response', (h) => resolve(Number(h[':status'])));
      out.once('error', reject);
    });
    const answer = await readJsonBody(out, 4 * 1024 * 1024);
    if (status >= 400) throw fromWire(answer, status);
    respondJson(stream, 200, answer);
  } catch (err) {
    respondError(stream, err);
  }
}
