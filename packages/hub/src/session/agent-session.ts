/**
 * One agent's session with the hub: the main HTTP/2 session (agent is the
 * client), its control stream, and the reverse session (hub is the client) used
 * to open streams to the agent. Every way it can end (GOAWAY, error, socket
 * close, keepalive timeout, revocation, replacement) goes through `#finish`.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ClientHttp2Session, ClientHttp2Stream, OutgoingHttpHeaders, ServerHttp2Session, ServerHttp2Stream } from 'node:http2';
import { constants as h2 } from 'node:http2';
import { ErrorCodes, Headers, Heartbeat, type HubMessage, type InboundEnds, PROTOCOL_VERSION, ZtmError, encodeFrame } from '@ztm/proto';
import type { Logger } from '../log.js';
import type { PeerIdentity } from './peer-identity.js';

/** A control stream whose peer stops reading may hold this much, then the
 * session is dropped: we never buffer without bound for a slow peer. */
const MAX_CONTROL_BACKLOG_BYTES = 1024 * 1024;
const REVERSE_WAIT_MS = 5_000;
/** Bytes an agent must take from us between two keepalive visits to count as
 * alive by that alone: far more than our PINGs (tookFromUsSinceLastVisit). */
const WRITE_PROOF_BYTES = 16 * 1024;

/** Session ids (logs, welcome): a random prefix per hub process and a count,
 * not a random draw per connect (OpenSSL's RNG per call was ≈ 20 µs of each). */
const SESSION_ID_PREFIX = randomBytes(4).toString('hex');
let sessionCount = 0;

export interface OutboundEndPolicy {
  allowEndpoints: ReadonlySet<string>;
  allowUsers: ReadonlySet<string>;
}

export type SessionState = 'handshaking' | 'online' | 'closed';

export class AgentSession extends EventEmitter<{ close: [reason: string]; reverse: [] }> {
  readonly id = `${SESSION_ID_PREFIX}${(++sessionCount).toString(16)}`;
  readonly identity: PeerIdentity;
  readonly address: string;
  readonly connectedAt = Date.now();
  readonly main: ServerHttp2Session;
  readonly log: Logger;
  state: SessionState = 'handshaking';
  labels: Record<string, string> = {};
  /** The agent's outbound ends, by tunnel key (tcp/NAME), as it last told us. */
  outbound = new Map<string, OutboundEndPolicy>();
  inbound: InboundEnds['ends'] = [];
  lastAckAt = Date.now();
  /** When bytes last arrived from the agent (seen by the keepalive sweep). */
  lastHeardAt = Date.now();
  /** When the session manager's keepalive sweep visits this session next. */
  keepaliveDue = 0;
  /** A PING of ours to this (silent) agent waits for its answer. */
  pingOutstanding = false;
  #control: ServerHttp2Stream | undefined;
  #reverse: ClientHttp2Session | undefined;
  #reverseAckAt = 0;
  #reversePinging = false;
  #reverseBytesSeen = 0;
  #reverseWrittenSeen = 0;
  #reverseHeardAt = 0;
  #bytesSeen = 0;
  #writtenSeen = 0;
  readonly #heartbeat = new Heartbeat();
  #closeReason: string | undefined;

  /** How long a bulk send may wait for the agent to read (its keepalive timeout). */
  readonly controlStallMs: number;

  constructor(main: ServerHttp2Session, identity: PeerIdentity, address: string, log: Logger, controlStallMs = 30_000) {
    super();
    this.controlStallMs = controlStallMs;
    this.main = main;
    this.identity = identity;
    this.address = address;
    this.log = log.child({ endpoint: identity.endpoint, sessionId: this.id });
    main.on('close', () => this.#finish('socket closed'));
    main.on('error', (err) => this.#finish(`session error: ${err.message}`));
    main.on('goaway', (code) => this.#finish(`goaway from agent (code ${code})`));
  }

  get endpoint(): string {
    return this.identity.endpoint;
  }

  get user(): string {
    return this.identity.user;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  get hasReverse(): boolean {
    return this.#reverse !== undefined && !this.#reverse.destroyed;
  }

  attachControl(stream: ServerHttp2Stream): void {
    this.#control = stream;
  }

  sendControl(message: HubMessage): void {
    const c = this.#control;
    if (!c || c.destroyed || c.writableEnded) return;
    if (c.writableLength > MAX_CONTROL_BACKLOG_BYTES) {
      this.destroy(new ZtmError(ErrorCodes.TOO_MANY, 'control stream not read by agent'));
      return;
    }
    c.write(encodeFrame(message));
  }

  /** Send a message of a bulk transfer (a whole catalogue): waits while the
   * agent has half the backlog cap unread, so a large catalogue streams at the
   * agent's pace instead of tripping the cap. false once the session is gone. */
  async sendControlPaced(message: HubMessage): Promise<boolean> {
    for (;;) {
      const c = this.#control;
      if (this.closed || !c || c.destroyed || c.writableEnded) return false;
      if (c.writableLength <= MAX_CONTROL_BACKLOG_BYTES / 2) {
        c.write(encodeFrame(message));
        return true;
      }
      const drained = await new Promise<boolean>((resolve) => {
        const done = (ok: boolean) => {
          clearTimeout(timer);
          c.off('drain', onDrain);
          c.off('close', onClose);
          resolve(ok);
        };
        const onDrain = () => done(true);
        const onClose = () => done(false);
        const timer = setTimeout(() => done(false), this.controlStallMs);
        c.once('drain', onDrain);
        c.once('close', onClose);
      });
      if (!drained && !this.closed) {
        this.destroy(new ZtmError(ErrorCodes.TOO_MANY, `control stream not read by agent for ${this.controlStallMs} ms`));
        return false;
      }
    }
  }

  /** How many bytes arrived from the agent on the main session since the last
   * call (the keepalive sweep's visit). Data proves the agent alive as well as
   * a PING answer does, and the answer can wait a long time behind it: on a
   * slow uplink the agent's socket buffers (and, with EagerWriteSocket, its
   * own queue, up to a window: 8 MiB, 30 s at 2 Mbit/s) may hold seconds of
   * data ahead of its PING ACK. A silent or frozen agent still times out. */
  readSinceLastVisit(): number {
    const n = bytesReadOf(this.main);
    const fresh = n - this.#bytesSeen;
    this.#bytesSeen = n;
    return fresh;
  }

  /** Whether the agent took at least WRITE_PROOF_BYTES from us on the main
   * session since the last call: its proof of life while we send it data.
   * node:http2 stops reading a socket while one of its writes is pending, so
   * while we write faster than the agent reads, its PINGs wait unread in our
   * socket buffer however alive it is; a write completing means it read.
   * Our own PINGs are far smaller: a frozen agent whose kernel still takes
   * them proves nothing, and one taking bulk stops once its buffers fill. */
  tookFromUsSinceLastVisit(): boolean {
    const n = bytesWrittenOf(this.main);
    const fresh = n - this.#writtenSeen;
    this.#writtenSeen = n;
    return fresh >= WRITE_PROOF_BYTES;
  }

  /** A PING to an agent that sends us data, once an interval: the sweep's
   * heartbeat (session-manager.ts). Its answer is not waited for. */
  beat(now: number, intervalMs: number): boolean {
    return this.#heartbeat.beat(this.main, now, intervalMs);
  }

  attachReverse(reverse: ClientHttp2Session): void {
    const old = this.#reverse;
    this.#reverse = reverse;
    this.#reverseAckAt = Date.now();
    this.#reversePinging = false;
    this.#reverseBytesSeen = 0;
    this.#reverseWrittenSeen = 0;
    this.#reverseHeardAt = Date.now();
    if (old && !old.destroyed) old.close();
    reverse.on('close', () => {
      if (this.#reverse === reverse) this.#reverse = undefined;
    });
    reverse.on('error', (err) => this.log.debug({ err: err.message }, 'reverse session error'));
    this.emit('reverse');
  }

  /** Keepalive of the reverse session, by the main session's rules, from the
   * same sweep. It matters more here: two Node HTTP/2 peers that both write
   * more than the TCP buffers between them hold can lock up for good (node:http2
   * stops reading its socket while one of its writes is pending), and nothing
   * else would notice on a session the agent only serves. A reverse session
   * that stops answering is destroyed: its streams reset, visibly, and the
   * agent opens a new one. */
  sweepReverse(now: number, probeAfterMs: number, timeoutMs: number, onPing: () => void): void {
    const r = this.#reverse;
    if (!r || r.destroyed) return;
    // Bytes from the agent count as a sign of life here too
    // (readSinceLastVisit), and so does its taking our data: this is the
    // session we send it data on, and while a write of ours waits we read
    // nothing, its PINGs included (tookFromUsSinceLastVisit).
    const read = bytesReadOf(r);
    if (read !== this.#reverseBytesSeen) {
      this.#reverseBytesSeen = read;
      this.#reverseHeardAt = now;
    }
    const written = bytesWrittenOf(r);
    if (written - this.#reverseWrittenSeen >= WRITE_PROOF_BYTES) this.#reverseHeardAt = now;
    this.#reverseWrittenSeen = written;
    if (now - Math.max(this.#reverseAckAt, this.#reverseHeardAt) > timeoutMs) {
      this.log.warn({ timeoutMs }, 'reverse session stopped answering pings; dropping it');
      r.destroy();
      return;
    }
    // Agents PING their reverse session every interval, so a PING of ours is
    // a probe of one gone quiet (or of an earlier agent that does not): ours
    // would queue behind the data we send it, theirs do not.
    if (this.#reversePinging || now - Math.max(this.#reverseAckAt, this.#reverseHeardAt) < probeAfterMs) return;
    this.#reversePinging = true;
    onPing();
    try {
      r.ping((err) => {
        if (this.#reverse !== r) return;
        this.#reversePinging = false;
        if (!err) this.#reverseAckAt = Date.now();
      });
    } catch {
      this.#reversePinging = false;
    }
  }

  /** The reverse session, asking the agent for one if it holds none. */
  async reverse(): Promise<ClientHttp2Session> {
    if (this.#reverse && !this.#reverse.destroyed && !this.#reverse.closed) return this.#reverse;
    if (this.closed) throw new ZtmError(ErrorCodes.OFFLINE, `endpoint ${this.endpoint} is offline`);
    this.sendControl({ type: 'reverse-request' });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new ZtmError(ErrorCodes.TIMEOUT, `endpoint ${this.endpoint} did not open its reverse session`));
      }, REVERSE_WAIT_MS);
      timer.unref();
      const onReverse = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(new ZtmError(ErrorCodes.OFFLINE, `endpoint ${this.endpoint} went offline`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off('reverse', onReverse);
        this.off('close', onClose);
      };
      this.on('reverse', onReverse);
      this.on('close', onClose);
    });
    return this.#reverse as unknown as ClientHttp2Session;
  }

  /** Open a stream to the agent over its reverse session. */
  async openStream(path: string, extra: OutgoingHttpHeaders = {}): Promise<ClientHttp2Stream> {
    const rev = await this.reverse();
    return rev.request({ ':method': 'POST', ':path': path, [Headers.version]: String(PROTOCOL_VERSION), ...extra });
  }

  /** Graceful: no new streams, live ones finish. */
  close(reason: string): void {
    if (this.closed) return;
    this.#closeReason ??= reason;
    this.#control?.end();
    this.main.close();
    this.#reverse?.close();
    // A peer that never finishes its streams cannot hold us forever.
    setTimeout(() => this.destroy(), 30_000).unref();
    this.#finish(reason);
  }

  /** Now. */
  destroy(err?: ZtmError): void {
    if (err) this.#closeReason ??= err.message;
    if (!this.main.destroyed) this.main.destroy(undefined, h2.NGHTTP2_CANCEL);
    if (this.#reverse && !this.#reverse.destroyed) this.#reverse.destroy();
    this.#finish(this.#closeReason ?? 'destroyed');
  }

  #finish(reason: string): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    const why = this.#closeReason ?? reason;
    this.log.info({ reason: why, durationMs: Date.now() - this.connectedAt }, 'session closed');
    this.emit('close', why);
  }
}

/** Bytes written so far to the session's socket (0 once it is gone). A write
 * is counted when handed to the socket, and node:http2 hands over its next
 * only once the last has completed. */
function bytesWrittenOf(session: ServerHttp2Session | ClientHttp2Session): number {
  try {
    return session.socket?.bytesWritten ?? 0;
  } catch {
    return 0;
  }
}

/** Bytes read so far from the session's socket (0 once it is gone). */
function bytesReadOf(session: ServerHttp2Session | ClientHttp2Session): number {
  try {
    return session.socket?.bytesRead ?? 0;
  } catch {
    return 0;
  }
}
