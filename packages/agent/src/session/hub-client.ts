/**
 * The agent's session with the hub: dial out (TLS 1.3, ALPN h2, client
 * certificate), open the control stream, say hello, keep it alive with PINGs,
 * re-dial with full-jitter capped backoff when it drops. A refusal that a human
 * must fix (revoked, unknown certificate) is not retried: `fatal` is emitted.
 *
 * The reverse session (ALPN ztm-rev/1, the agent is the HTTP/2 server on a TLS
 * connection it dialed) is opened when the hub asks for it or the agent has
 * something to serve.
 */
import { EventEmitter } from 'node:events';
import * as http2 from 'node:http2';
import type { TLSSocket } from 'node:tls';
import {
  type AgentMessage,
  type FilesMessage,
  ALPN_REVERSE,
  ALPN_SESSION,
  type ErrorCode,
  ErrorCodes,
  FrameDecoder,
  HTTP2_SESSION_WINDOW_BYTES,
  Headers,
  Heartbeat,
  HubMessage,
  KEEPALIVE_INTERVAL_MS,
  KEEPALIVE_TIMEOUT_MS,
  PROTOCOL_VERSION,
  Paths,
  RECONNECT_BASE_MS,
  RECONNECT_MAX_MS,
  RECONNECT_REFUSED_MAX_MS,
  type McsImports,
  type McsStatus,
  type Welcome,
  ZtmError,
  encodeFrame,
  fromWire,
  http2SessionOptions,
  isFatal,
  parseMessage,
  readJsonBody,
  toZtmError,
} from '@ztm/proto';
import type { AgentIdentity } from '../identity/identity-store.js';
import type { Logger } from '../log.js';
import { bytesReadFromHub, dialTls, socketLayerOf } from './dial.js';
import { ReadGuard } from './read-guard.js';

export type HubClientState = 'idle' | 'connecting' | 'online' | 'backoff' | 'stopped' | 'fatal';

export type ReverseStreamHandler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void;

export interface HubClientOptions {
  identity: AgentIdentity;
  log: Logger;
  labels?: Record<string, string>;
  agentVersion?: string;
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
  onReverseStream: ReverseStreamHandler;
}

interface Connection {
  hub: string;
  session: http2.ClientHttp2Session;
  control: http2.ClientHttp2Stream;
  welcome?: Welcome;
  connectedAt: number;
  /** Last sign of life from the hub: an answer to our PING or a PING of its own. */
  lastAckAt: number;
  /** When bytes last arrived from the hub (seen by the keepalive tick). */
  lastHeardAt: number;
  bytesSeen: number;
  socket: TLSSocket;
  lastPingAt: number;
  pingOutstanding: boolean;
  rttMs: number | null;
  dead: boolean;
}

export class HubClient extends EventEmitter<{ online: [Welcome]; offline: [string]; fatal: [ZtmError]; mcs: [McsImports | McsStatus]; files: [FilesMessage] }> {
  readonly #o: HubClientOptions;
  #identity: AgentIdentity;
  #state: HubClientState = 'idle';
  #conn: Connection | undefined;
  #reverse: http2.ServerHttp2Session | undefined;
  /** Our keepalive PINGs on the reverse session. */
  #reversePing = new Heartbeat();
  #reverseWanted = false;
  #attempt = 0;
  #hubIndex = 0;
  #timer: NodeJS.Timeout | undefined;
  #keepalive: NodeJS.Timeout | undefined;
  #lastError: string | undefined;
  #connecting = false;

  constructor(o: HubClientOptions) {
    super();
    this.#o = o;
    this.#identity = o.identity;
  }

  get state(): HubClientState {
    return this.#state;
  }

  get session(): http2.ClientHttp2Session | undefined {
    return this.#conn?.session;
  }

  snapshot() {
    const c = this.#conn;
    return {
      state: this.#state,
      hub: c?.hub ?? null,
      sessionId: c?.welcome?.sessionId ?? null,
      connectedAt: c ? new Date(c.connectedAt).toISOString() : null,
      rttMs: c?.rttMs ?? null,
      reverse: this.#reverse !== undefined && !this.#reverse.destroyed,
      /** What keeps the connection reading while its writes wait (read-guard.ts). */
      socketLayer: c ? (socketLayerOf(c.socket) ?? null) : null,
      readResumes: ReadGuard.resumes,
      lastError: this.#lastError ?? null,
    };
  }

  /** Send a control message on the live session (dropped while offline: the
   * full state is re-sent on every `online`). */
  sendControl(message: AgentMessage): void {
    const c = this.#conn;
    if (!c || c.dead || c.control.destroyed) return;
    c.control.write(encodeFrame(message));
  }

  /** Open a stream on the main session (relayed connections). */
  openStream(headers: http2.OutgoingHttpHeaders): http2.ClientHttp2Stream {
    const c = this.#conn;
    if (!c || c.dead || this.#state !== 'online') throw new ZtmError(ErrorCodes.OFFLINE, `not connected to the hub (${this.#lastError ?? this.#state})`);
    return c.session.request({ ':method': 'POST', [Headers.version]: String(PROTOCOL_VERSION), ...headers });
  }

  /** Swap the certificate used for new connections (after renewal), and move
   * to a new session with it; the old one drains. */
  useIdentity(identity: AgentIdentity): void {
    this.#identity = identity;
    if (this.#state === 'online') void this.#connect();
  }

  start(): void {
    if (this.#state !== 'idle') return;
    this.#keepalive = setInterval(() => this.#tick(), Math.max(100, Math.min(1000, (this.#o.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS) / 2)));
    this.#keepalive.unref();
    void this.#connect();
  }

  /** Ask for the reverse session to be kept open (something to serve). */
  wantReverse(want: boolean): void {
    this.#reverseWanted = want;
    if (want && this.#state === 'online') void this.#openReverse();
    if (!want) this.#reverse?.close();
  }

  async stop(): Promise<void> {
    this.#state = 'stopped';
    clearTimeout(this.#timer);
    clearInterval(this.#keepalive);
    const c = this.#conn;
    this.#conn = undefined;
    this.#reverse?.close();
    if (c) {
      c.dead = true;
      c.control.end();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          c.session.destroy();
          resolve();
        }, 2_000);
        c.session.close(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    this.#reverse?.destroy();
  }

  async #connect(): Promise<void> {
    if (this.#connecting || this.#state === 'stopped' || this.#state === 'fatal') return;
    this.#connecting = true;
    if (this.#state !== 'online') this.#state = 'connecting';
    const hubs = this.#identity.hubs;
    const hub = hubs[this.#hubIndex++ % hubs.length] as string;
    try {
      const conn = await this.#open(hub);
      if ((this.#state as HubClientState) === 'stopped') {
        conn.session.destroy();
        return;
      }
      const old = this.#conn;
      this.#conn = conn;
      this.#state = 'online';
      this.#attempt = 0;
      this.#lastError = undefined;
      if (old) {
        old.dead = true;
        old.control.end();
        old.session.close();
      }
      this.#o.log.info({ hub, sessionId: conn.welcome?.sessionId }, 'online');
      this.emit('online', conn.welcome as Welcome);
      if (this.#reverseWanted) void this.#openReverse();
    } catch (err) {
      const e = toZtmError(err, ErrorCodes.HUB_UNREACHABLE);
      this.#lastError = e.message;
      if (isFatal(e.code)) return this.#fatal(e);
      this.#o.log.warn({ hub, code: e.code, reason: e.message }, 'cannot connect to hub');
      const refused = (e.cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED';
      if (this.#state !== 'online') this.#scheduleReconnect(refused);
    } finally {
      this.#connecting = false;
    }
  }

  #open(hub: string): Promise<Connection> {
    const id = this.#identity;
    return dialTls(hub, { ca: id.caPem, cert: id.certPem, key: id.keyPem, alpn: ALPN_SESSION }).then(
      (socket: TLSSocket) =>
        new Promise<Connection>((resolve, reject) => {
          const session = http2.connect(`https://${hub}`, { createConnection: () => socket, ...http2SessionOptions });
          session.on('connect', () => session.setLocalWindowSize(HTTP2_SESSION_WINDOW_BYTES));
          const control = session.request({ ':method': 'POST', ':path': Paths.control, [Headers.version]: String(PROTOCOL_VERSION) }, { endStream: false });
          const conn: Connection = {
            hub,
            session,
            control,
            connectedAt: Date.now(),
            lastAckAt: Date.now(),
            lastHeardAt: Date.now(),
            bytesSeen: 0,
            socket,
            lastPingAt: 0,
            pingOutstanding: false,
            rttMs: null,
            dead: false,
          };
          session.on('ping', () => {
            conn.lastAckAt = Date.now();
          });
          // A TLS socket that closes under a busy session has been seen to
          // leave the session open and silent until the keepalive timeout:
          // the socket's end is the session's end.
          socket.once('close', () => {
            if (!session.destroyed) session.destroy();
          });
          let settled = false;
          const settle = (err: ZtmError | null) => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            if (err) {
              session.destroy();
              reject(err);
            } else resolve(conn);
          };
          const timer = setTimeout(() => settle(new ZtmError(ErrorCodes.TIMEOUT, `hub ${hub} did not welcome us in time`)), 15_000);
          session.on('error', (err) => settle(new ZtmError(ErrorCodes.HUB_UNREACHABLE, `session error: ${err.message}`)));
          session.on('close', () => {
            settle(new ZtmError(ErrorCodes.HUB_UNREACHABLE, 'hub closed the session'));
            this.#onConnectionClosed(conn, 'session closed');
          });
          session.on('goaway', (code) => {
            // The hub is going away (shutdown, replacement): its live streams
            // drain on this session while we dial a new one.
            this.#o.log.info({ code }, 'hub sent GOAWAY; reconnecting');
            if (conn.welcome) this.#onConnectionClosed(conn, 'hub sent GOAWAY');
          });
          control.on('error', () => {});
          // Read only once the answer is known: frames after a 200, a JSON
          // error body otherwise. node:http2 emits 'response' a tick after the
          // HEADERS frame, so bytes that came in the same read would reach a
          // 'data' listener first (a lost welcome, seen when the hub's HEADERS
          // and welcome shared one TCP read); unread, they wait in the stream.
          control.once('response', (h) => {
            const status = Number(h[':status']);
            if (status === 200) {
              control.on('data', onData);
              return;
            }
            readJsonBody(control)
              .then((body) => settle(fromWire(body, status)))
              .catch(() => settle(new ZtmError(ErrorCodes.HUB_UNREACHABLE, `hub answered ${status}`)));
          });
          const decoder = new FrameDecoder();
          const onData = (chunk: Buffer) => {
            let frames: unknown[];
            try {
              frames = decoder.push(chunk);
            } catch (err) {
              this.#o.log.warn({ reason: (err as Error).message }, 'bad frame from hub');
              session.destroy();
              return;
            }
            for (const f of frames) {
              let msg: HubMessage;
              try {
                msg = parseMessage(HubMessage, f);
              } catch (err) {
                this.#o.log.warn({ reason: (err as Error).message }, 'bad message from hub');
                continue;
              }
              if (msg.type === 'welcome') {
                conn.welcome = msg;
                settle(null);
              } else if (msg.type === 'reverse-request') {
                this.#reverseWanted = true;
                void this.#openReverse();
              } else if (msg.type === 'revoked') {
                this.#fatal(new ZtmError(ErrorCodes.REVOKED, `hub says: ${msg.reason}`));
              } else if (msg.type === 'error') {
                const e = new ZtmError(isKnown(msg.code) ? msg.code : ErrorCodes.INTERNAL, `hub says: ${msg.message}`);
                if (!conn.welcome) settle(e);
                else this.#o.log.warn({ code: msg.code, reason: msg.message }, 'hub reported an error');
              } else if (msg.type === 'files') {
                // May arrive right after welcome, before this connection is adopted.
                if (!conn.dead) this.emit('files', msg);
              } else if ((msg.type === 'mcs-imports' || msg.type === 'mcs-status') && this.#conn === conn) {
                this.emit('mcs', msg); // Kubernetes mode (k8s/) takes these
              }
            }
          };
          control.write(encodeFrame({ type: 'hello', version: PROTOCOL_VERSION, agentVersion: this.#o.agentVersion ?? '0.1.0', labels: this.#o.labels ?? {} }));
        }),
    );
  }

  #onConnectionClosed(conn: Connection, reason: string): void {
    if (conn.dead) return;
    conn.dead = true;
    if (this.#conn !== conn) return;
    this.#conn = undefined;
    this.#retireReverse();
    if (this.#state === 'stopped' || this.#state === 'fatal') return;
    this.#o.log.warn({ reason }, 'offline');
    this.emit('offline', reason);
    this.#scheduleReconnect();
  }

  #scheduleReconnect(refused = false): void {
    if (this.#state === 'stopped' || this.#state === 'fatal') return;
    this.#state = 'backoff';
    const base = this.#o.reconnectBaseMs ?? RECONNECT_BASE_MS;
    const max = this.#o.reconnectMaxMs ?? RECONNECT_MAX_MS;
    const ceiling = Math.min(refused ? Math.min(max, RECONNECT_REFUSED_MAX_MS) : max, base * 2 ** Math.min(this.#attempt, 20));
    this.#attempt++;
    const delay = Math.round(Math.random() * ceiling); // full jitter: no thundering herd after a hub restart
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#connect(), delay);
    this.#timer.unref();
  }

  #tick(): void {
    const c = this.#conn;
    if (!c || c.dead) return;
    const now = Date.now();
    const timeout = this.#o.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS;
    // Any bytes from the hub prove it alive too: our PING and its answer can
    // queue behind data on a slow link (socket buffers, read-guard.ts).
    const read = bytesReadFromHub(c.socket);
    if (read !== c.bytesSeen) {
      c.bytesSeen = read;
      c.lastHeardAt = now;
    }
    if (now - Math.max(c.lastAckAt, c.lastHeardAt) > timeout) {
      this.#o.log.warn({ timeoutMs: timeout }, 'hub stopped answering pings');
      c.session.destroy();
      this.#onConnectionClosed(c, 'keepalive timeout');
      return;
    }
    // We drive keepalive (proto limits.ts): a PING every interval; the hub
    // PINGs us only when it has not heard from us.
    const hubInterval = Math.max(this.#o.keepaliveIntervalMs ?? KEEPALIVE_INTERVAL_MS, c.welcome?.keepaliveIntervalMs ?? 0);
    const due = now - c.lastPingAt >= hubInterval;
    if (!c.pingOutstanding && due) {
      c.pingOutstanding = true;
      c.lastPingAt = now;
      try {
        c.session.ping((err, duration) => {
          c.pingOutstanding = false;
          if (!err) {
            c.lastAckAt = Date.now();
            c.rttMs = duration;
          }
        });
      } catch {
        c.pingOutstanding = false;
      }
    }
    // The reverse session too, at the same pace. The hub judges it by what it
    // hears from us, and its own PINGs queue behind the data it sends us: on a
    // slow link, seconds of it in the hub's socket buffer, more than a short
    // keepalive timeout. Ours travel the quiet direction. Their answers queue
    // behind that data too, so they are not waited for (at most a few out).
    const rev = this.#reverse;
    if (rev && !rev.destroyed && !rev.closed) this.#reversePing.beat(rev, now, hubInterval);
  }

  /** The main connection is gone: close the reverse session gracefully (its
   * streams may finish), but destroy it if it is still open after a keepalive
   * timeout. Its PINGs went with the main connection's keepalive, and a hub
   * that died while this side was not reading the reverse socket (a write
   * pending, see read-guard.ts) leaves that socket looking alive: without the
   * deadline the tunnels through it, and the target connections behind them,
   * hung open for good (test/faults-process.test.ts). A hub shutting down
   * gracefully drops its streams after its own grace (10 s), well within it. */
  #retireReverse(): void {
    const rev = this.#reverse;
    if (!rev || rev.destroyed) return;
    rev.close();
    const deadline = setTimeout(() => {
      if (!rev.destroyed) {
        this.#o.log.warn('reverse session still open a keepalive timeout after the hub went; dropping it');
        rev.destroy();
      }
    }, this.#o.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS);
    deadline.unref();
    rev.once('close', () => clearTimeout(deadline));
  }

  async #openReverse(): Promise<void> {
    if (this.#reverse && !this.#reverse.destroyed && !this.#reverse.closed) return;
    const c = this.#conn;
    if (!c) return;
    const id = this.#identity;
    let socket: TLSSocket;
    try {
      socket = await dialTls(c.hub, { ca: id.caPem, cert: id.certPem, key: id.keyPem, alpn: ALPN_REVERSE });
    } catch (err) {
      this.#o.log.warn({ reason: (err as Error).message }, 'cannot open reverse session');
      return;
    }
    if (this.#conn !== c) {
      socket.destroy();
      return;
    }
    const rev = http2.performServerHandshake(socket, http2SessionOptions);
    this.#reversePing = new Heartbeat(Date.now());
    rev.setLocalWindowSize(HTTP2_SESSION_WINDOW_BYTES);
    this.#reverse = rev;
    socket.once('close', () => {
      if (!rev.destroyed) rev.destroy();
    });
    rev.on('error', () => {});
    rev.on('stream', (stream, headers) => {
      stream.on('error', () => {});
      this.#o.onReverseStream(stream, headers);
    });
    rev.on('close', () => {
      if (this.#reverse === rev) this.#reverse = undefined;
      // Re-open while wanted and the main session is up.
      if (this.#reverseWanted && this.#state === 'online' && this.#conn === c && !c.dead) {
        setTimeout(() => void this.#openReverse(), 250).unref();
      }
    });
    this.#o.log.debug({ hub: c.hub }, 'reverse session open');
  }

  #fatal(err: ZtmError): void {
    if (this.#state === 'fatal' || this.#state === 'stopped') return;
    this.#state = 'fatal';
    this.#lastError = err.message;
    clearTimeout(this.#timer);
    clearInterval(this.#keepalive);
    this.#o.log.error({ code: err.code, reason: err.message }, 'hub refused this agent; not retrying');
    const c = this.#conn;
    this.#conn = undefined;
    if (c) {
      c.dead = true;
      c.session.destroy();
    }
    this.#reverse?.destroy();
    this.emit('fatal', err);
  }
}

function isKnown(code: string): code is ErrorCode {
  return (Object.values(ErrorCodes) as string[]).includes(code);
}
