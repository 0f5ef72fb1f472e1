/**
 * A keepalive PING whose answer is not waited for: at most one an interval,
 * at most a few unanswered. For a PING that must reach the peer while its
 * answer may queue behind data going the other way (docs/protocol.md,
 * Liveness): the agent's on its reverse session, the hub's to a busy agent.
 */
import type { Http2Session } from 'node:http2';

/** Unanswered heartbeat PINGs before the next is skipped (node:http2 allows 10). */
export const HEARTBEATS_OUTSTANDING = 3;

export class Heartbeat {
  #at: number;
  #outstanding = 0;

  /** `startAt`: as if a PING went then (the first goes an interval later). */
  constructor(startAt = Number.NEGATIVE_INFINITY) {
    this.#at = startAt;
  }

  /** PING `session` if an interval has passed since the last and few are unanswered; whether one went. */
  beat(session: Http2Session, now: number, intervalMs: number): boolean {
    if (now - this.#at < intervalMs || this.#outstanding >= HEARTBEATS_OUTSTANDING) return false;
    this.#at = now;
    this.#outstanding++;
    try {
      session.ping(() => this.#outstanding--);
    } catch {
      this.#outstanding--;
    }
    return true;
  }
}
