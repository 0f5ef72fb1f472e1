/**
 * Limits and transport tuning shared by hub and agent. Each value says why.
 */

/** Largest control-stream frame. Control messages are small (hello, catalog
 * deltas); anything larger is a bug or an attack, and is refused before the
 * bytes are buffered. */
export const MAX_CONTROL_FRAME_BYTES = 256 * 1024;

/** Largest JSON request body the hub or an admin API reads (permits, CSRs). */
export const MAX_REQUEST_BODY_BYTES = 64 * 1024;

/** HTTP/2 tuning, set explicitly on both sides of every session.
 *
 * Measured on a two-hop Node relay (shared/ARCHITECTURE.md §5): the default
 * 65,535-byte stream window caps one stream at ≈ 1.4 Gbit/s on loopback and far
 * less on a high-latency link; 1 MiB per stream and 8 MiB per session reached
 * 1.9–2.2 Gbit/s, larger windows changed nothing. */
export const HTTP2_STREAM_WINDOW_BYTES = 1024 * 1024;
export const HTTP2_SESSION_WINDOW_BYTES = 8 * 1024 * 1024;
/** What the streams of one session that are paused for a full destination
 * may have been sent before they paused, together (splice.ts): a paused
 * stream still takes in its window's worth, so with more than 16 of them in
 * one session the session asks its peer (SETTINGS) for a window half as
 * large, then a quarter, down to `MIN_HTTP2_STREAM_WINDOW_BYTES`. 128
 * connections into a reader that stopped, one after another, grew the hub by
 * 174 MiB and the exit by 170 without it, by 113 and 124 with it; connections
 * that back up all at once have each been sent a full window first. */
export const HTTP2_SESSION_STREAM_WINDOW_BUDGET_BYTES = 16 * 1024 * 1024;
/** What the open data streams of one session (tunnelled connections) may
 * have been sent before they are read, together: a session with more than 32
 * open asks its peer for a window half as large, a quarter from 65, down to
 * `MIN_HTTP2_STREAM_WINDOW_BYTES` (splice.ts). The backlog count above
 * narrows only once streams have stopped, and streams that stop together
 * (one target stalling under many connections) have each been sent a full
 * window by then. Four times the session window: a session's streams never
 * have more than that in flight, so many busy at once lose nothing; one
 * transfer beside 32 idle connections gets half the window. */
export const HTTP2_SESSION_OPEN_STREAM_WINDOW_BUDGET_BYTES = 32 * 1024 * 1024;
/** The narrowest stream window a session asks for (from 256 stuck streams). */
export const MIN_HTTP2_STREAM_WINDOW_BYTES = 64 * 1024;
/** Default frame size: larger frames measured no gain. */
export const HTTP2_MAX_FRAME_BYTES = 16 * 1024;
/** Streams one session may hold open at once; beyond it the peer gets
 * REFUSED_STREAM and may retry on another session. */
export const HTTP2_MAX_CONCURRENT_STREAMS = 10_000;
/** Header blocks are tiny here; a large one is abuse. */
export const HTTP2_MAX_HEADER_LIST_BYTES = 16 * 1024;

/** Socket/stream buffer high-water mark: ≈ 1 MiB measured +46 % throughput and a
 * third less hub CPU per Gbit/s, by moving bigger writes per syscall. */
export const DATA_HIGH_WATER_MARK_BYTES = 1024 * 1024;

/** What the relayed connections of one process may hold in their buffers
 * together when their destinations are full or deeply queued (splice.ts): up to 8 such
 * directions (iperf3 -P 8) get `DATA_HIGH_WATER_MARK_BYTES` each, more share
 * this, down to `MIN_DATA_HIGH_WATER_MARK_BYTES`. Without it 64 connections
 * pushing through the mesh grew the entrance by 215 MiB, 128 by 370; with
 * it by 116 and 124 (the rest is what 64 connections cost anyway: the hub
 * and the exit grew by 44–51 MiB in the same runs). */
export const SPLICE_BUFFER_BUDGET_BYTES = 32 * 1024 * 1024;
/** The smallest high-water mark a relayed connection gets: one socket read
 * (from 128 backlogged directions on, each holds about 256 KiB). */
export const MIN_DATA_HIGH_WATER_MARK_BYTES = 64 * 1024;

/** What the hub sends an exit of a tunnel's first bytes before the exit has
 * answered, keeping a copy for the next exit if it refuses; past it the
 * entrance waits for the answer. A request of most protocols fits. */
export const EARLY_REPLAY_BYTES = 64 * 1024;

/** nghttp2's per-session memory cap (MB). Past it, the session answers new
 * streams — and, on a client, new responses — with ENHANCE_YOUR_CALM. Node's
 * default of 10 MB was hit by 500 concurrent tunnelled connections, each with
 * up to a stream window in flight. Memory is bounded by the flow-control
 * windows and high-water marks; this is the safety net above them. */
export const HTTP2_MAX_SESSION_MEMORY_MB = 256;

/** Settings object for node:http2 (both sides). */
export const http2Settings = {
  initialWindowSize: HTTP2_STREAM_WINDOW_BYTES,
  maxFrameSize: HTTP2_MAX_FRAME_BYTES,
  maxConcurrentStreams: HTTP2_MAX_CONCURRENT_STREAMS,
  maxHeaderListSize: HTTP2_MAX_HEADER_LIST_BYTES,
  enablePush: false,
} as const;

/** Session options for every node:http2 session we create, client or server. */
export const http2SessionOptions = {
  settings: http2Settings,
  maxSessionMemory: HTTP2_MAX_SESSION_MEMORY_MB,
} as const;

/** Keepalive defaults: a peer not heard from for `KEEPALIVE_TIMEOUT_MS` is
 * gone. kill -9 of an agent closes its socket and is seen at once; the timeout
 * covers silent network loss and a frozen process.
 *
 * The agent drives it: it PINGs the hub every interval (the larger of its own
 * and the one in the hub's welcome) and takes the answer, a PING of the hub's
 * or any bytes from the hub as proof of life. The hub answers PINGs inside
 * nghttp2, with no JavaScript, and counts any bytes from the agent as proof
 * of life (its socket's `bytesRead`, read by one sweep timer); it PINGs only
 * an agent it has not heard from for two intervals (or, if sooner, half an
 * interval before the timeout): an agent of an earlier release, which PINGed
 * only when the hub was silent, or a stuck one.
 *
 * Idle agents cost the hub one PING and one answer each per interval, ≈ 35 µs
 * of its CPU each (a TLS record each way, two syscalls): at 10,000 agents that
 * was 4.5 % of a core with the hub PINGing every 10 s, 3.5 % with the agents
 * PINGing, and is ≈ 2.3 % at 15 s (docs/performance.md). 15 s keeps NAT and
 * firewall state alive (their idle timeouts for TCP are minutes) with a
 * margin of two for the 30 s timeout, which is ZTM's own online window. */
export const KEEPALIVE_INTERVAL_MS = 15_000;
export const KEEPALIVE_TIMEOUT_MS = 30_000;

/** A TLS client must finish its handshake in this time or be dropped. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** A session that enrols (no client certificate) lives at most this long. */
export const ENROL_SESSION_TIMEOUT_MS = 30_000;

/** Re-dial backoff of the agent: full jitter, capped. */
export const RECONNECT_BASE_MS = 250;
export const RECONNECT_MAX_MS = 30_000;
/** Cap while the hub's host refuses connections (ECONNREFUSED: up, but the hub
 * is not listening, as during a restart): a refused dial costs the hub
 * nothing, and the bar is a tunnel usable ≤ 2 s after the hub is back.
 * Timeouts and resets keep the full backoff, which is what settles a herd on
 * a hub that is up but busy. */
export const RECONNECT_REFUSED_MAX_MS = 2_000;

/** Endpoint names: DNS-label-like, so they fit certificates, logs and URLs. */
export const ENDPOINT_NAME_PATTERN = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;
export const MESH_NAME_PATTERN = ENDPOINT_NAME_PATTERN;
