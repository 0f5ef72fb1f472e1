/**
 * The hub's relay: a stream from an entrance (inbound end) is matched with a
 * stream to an exit (outbound end) over the exit's reverse session, then the
 * two are spliced. The exit is chosen with identities from certificates only;
 * the source endpoint and user the exit sees are stamped here.
 */
import type { ClientHttp2Stream, IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { constants as h2 } from 'node:http2';
import {
  ErrorCodes,
  Headers,
  MCS_TUNNEL_PREFIX,
  EARLY_REPLAY_BYTES,
  type TunnelId,
  ZtmError,
  earlyPump,
  fromWire,
  readJsonBody,
  respondError,
  splice,
  tunnelKey,
  tunnelPath,
} from '@ztm/proto';
import type { Logger } from '../log.js';
import type { AgentSession } from '../session/agent-session.js';
import type { SessionManager } from '../session/session-manager.js';
import type { RelayStats } from './relay-stats.js';

/** How long an exit may take to connect to its target and answer. */
const EXIT_ANSWER_TIMEOUT_MS = 15_000;

export interface RelayDeps {
  sessions: SessionManager;
  stats: RelayStats;
  log: Logger;
}

export async function relayConnection(
  deps: RelayDeps,
  source: AgentSession,
  inbound: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  tunnel: TunnelId,
): Promise<void> {
  const key = tunnelKey(tunnel);
  const pinned = String(headers[Headers.exits] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (tunnel.name.startsWith(MCS_TUNNEL_PREFIX) && !source.identity.cluster) {
    // Multicluster-service tunnels (proto mcs.ts) carry one cluster's Services
    // to another: only cluster agents may enter them.
    const err = new ZtmError(ErrorCodes.FORBIDDEN, `${key}: only cluster agents may use multicluster-service tunnels`);
    deps.stats.refused(key, err.code);
    deps.log.info({ tunnel: key, source: source.endpoint, code: err.code, reason: err.message }, 'relay refused');
    return respondError(inbound, err);
  }
  const { exits, refused } = deps.sessions.exitsFor(key, source, pinned);
  if (exits.length === 0) {
    const err =
      refused > 0
        ? new ZtmError(ErrorCodes.FORBIDDEN, `${key}: no exit allows endpoint ${source.endpoint} (user ${source.user})`)
        : new ZtmError(ErrorCodes.NO_EXIT, `${key}: no online endpoint holds an outbound end${pinned.length ? ` among ${pinned.join(', ')}` : ''}`);
    deps.stats.refused(key, err.code);
    deps.log.info({ tunnel: key, source: source.endpoint, code: err.code, reason: err.message }, 'relay refused');
    return respondError(inbound, err);
  }

  let aborted = false;
  inbound.once('close', () => {
    aborted = true;
  });
  let lastError: ZtmError | undefined;
  // What the entrance sent before an exit answered, kept to send again to the
  // next exit if this one refuses.
  let kept: Buffer[] = [];
  for (const exit of exits) {
    if (aborted) return;
    let outbound: ClientHttp2Stream;
    try {
      outbound = await exit.openStream(tunnelPath(tunnel), { [Headers.sourceEndpoint]: source.endpoint, [Headers.sourceUser]: source.user });
    } catch (err) {
      lastError = err instanceof ZtmError ? err : new ZtmError(ErrorCodes.OFFLINE, (err as Error).message);
      continue;
    }
    // The entrance's first bytes go on at once: the exit reads nothing before
    // its target has accepted, so a request is on its way while the exit
    // connects. A refusal means no target saw them.
    const early = earlyPump(inbound, outbound, { keep: EARLY_REPLAY_BYTES, replay: kept });
    const { error: answer, refused } = await exitAnswer(outbound);
    early.stop();
    kept = early.kept;
    const sentEarly = early.keptBytes;
    if (answer === null) {
      if (aborted) {
        outbound.close(h2.NGHTTP2_CANCEL);
        return;
      }
      const meter = deps.stats.opened(key);
      meter.bytesIn += sentEarly;
      inbound.respond({ ':status': 200 });
      splice(
        { stream: inbound, reset: () => inbound.close(h2.NGHTTP2_CANCEL) },
        { stream: outbound, reset: () => outbound.close(h2.NGHTTP2_CANCEL) },
        (r) => {
          deps.stats.closed(key, r.end === 'done' ? 'closed' : 'reset');
          deps.log.debug(
            {
              tunnel: key,
              source: source.endpoint,
              exit: exit.endpoint,
              bytesIn: sentEarly + r.bytesAtoB,
              bytesOut: r.bytesBtoA,
              durationMs: r.durationMs,
              end: r.end,
              reason: r.reason,
            },
            'stream closed',
          );
        },
        { meter },
      );
      return;
    }
    lastError = answer;
    if (!outbound.closed) outbound.close(h2.NGHTTP2_CANCEL);
    if (!refused && kept.length > 0) {
      // No answer: the exit may have passed the first bytes to a target before
      // it went. Sending them to another could deliver them twice.
      deps.log.info(
        { tunnel: key, source: source.endpoint, exit: exit.endpoint, code: answer.code, reason: answer.message },
        'exit did not answer; not retrying',
      );
      break;
    }
    deps.log.info({ tunnel: key, source: source.endpoint, exit: exit.endpoint, code: answer.code, reason: answer.message }, 'exit refused; trying next');
  }
  const err = lastError ?? new ZtmError(ErrorCodes.NO_EXIT, `${key}: no exit answered`);
  deps.stats.refused(key, err.code);
  respondError(inbound, err);
}

/** error null when the exit answered 200; else the exit's error, and whether
 * the exit answered it (refused: it passed nothing on to a target). */
function exitAnswer(out: ClientHttp2Stream): Promise<{ error: ZtmError | null; refused: boolean }> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      out.close(h2.NGHTTP2_CANCEL);
      resolve({ error: new ZtmError(ErrorCodes.TIMEOUT, 'exit did not answer in time'), refused: false });
    }, EXIT_ANSWER_TIMEOUT_MS);
    const onClose = () => {
      clearTimeout(timer);
      resolve({ error: new ZtmError(ErrorCodes.OFFLINE, 'exit closed the stream without answering'), refused: false });
    };
    out.on('error', () => {});
    out.once('close', onClose);
    out.once('response', (h) => {
      clearTimeout(timer);
      out.off('close', onClose);
      const status = Number(h[':status']);
      if (status === 200) return resolve({ error: null, refused: false });
      readJsonBody(out)
        .then((body) => resolve({ error: fromWire(body, status), refused: true }))
        .catch(() => resolve({ error: new ZtmError(ErrorCodes.TARGET_UNREACHABLE, `exit answered ${status}`), refused: true }));
    });
  });
}
