/**
 * Control-stream messages. One control stream per session (POST /v1/control),
 * carrying frames (codec.ts) both ways for the session's life.
 *
 * Each message: who sends it, when, and what answer it expects.
 */
import { z } from 'zod';
import { ErrorCodes, ZtmError } from './errors.js';
import { ClusterId, McsExports, McsImports, McsStatus } from './mcs.js';

/** agent → hub, first frame on the control stream. Answer: `welcome`, or an
 * `error` frame and the stream closed. */
export const Hello = z.strictObject({
  type: z.literal('hello'),
  version: z.number().int().positive(),
  agentVersion: z.string().max(64),
  labels: z.record(z.string().max(63), z.string().max(255)).default({}),
});

/** hub → agent, answer to `hello`. Tells the agent who the hub thinks it is
 * (from its certificate) and the keepalive it will apply. No answer. */
export const Welcome = z.strictObject({
  type: z.literal('welcome'),
  version: z.number().int().positive(),
  mesh: z.string(),
  endpoint: z.string(),
  sessionId: z.string(),
  hubTime: z.string(),
  keepaliveIntervalMs: z.number().int().positive(),
  keepaliveTimeoutMs: z.number().int().positive(),
  certExpires: z.string(),
});

/** hub → agent, when the hub needs to open streams to the agent and the
 * agent holds no reverse session. Answer: the agent dials the reverse session
 * (ALPN `ztm-rev/1`); no frame. */
export const ReverseRequest = z.strictObject({
  type: z.literal('reverse-request'),
});

/** hub → agent, when the endpoint's certificate or the endpoint itself is
 * revoked. The hub closes the session right after; the agent must stop and
 * not reconnect. No answer. */
export const Revoked = z.strictObject({
  type: z.literal('revoked'),
  reason: z.string().max(512),
});

/** either way, before closing a stream on a protocol error. No answer. */
export const ErrorMessage = z.strictObject({
  type: z.literal('error'),
  code: z.string().max(64),
  message: z.string().max(1024),
});

const Name = z.string().regex(/^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/);
const EndpointName = Name;

/** agent → hub, after `welcome` and whenever its outbound ends change: the
 * whole set (small; replaces the previous one). The hub routes relayed
 * connections only to outbound ends it was told about here. No answer. */
export const OutboundEnds = z.strictObject({
  type: z.literal('outbound-ends'),
  ends: z
    .array(
      z.strictObject({
        protocol: z.enum(['tcp', 'udp']),
        name: Name,
        allowEndpoints: z.array(EndpointName).max(1024).default([]),
        allowUsers: z.array(Name).max(1024).default([]),
      }),
    )
    .max(4096),
});

/** agent → hub, after `welcome` and whenever its inbound ends change: for the
 * hub's status views only. No answer. */
export const InboundEnds = z.strictObject({
  type: z.literal('inbound-ends'),
  ends: z
    .array(
      z.strictObject({
        protocol: z.enum(['tcp', 'udp']),
        name: Name,
        listen: z.array(z.string().max(64)).max(64),
        exits: z.array(EndpointName).max(64).default([]),
      }),
    )
    .max(4096),
});

export const AgentMessage = z.discriminatedUnion('type', [Hello, OutboundEnds, InboundEnds, ErrorMessage, McsExports]);
/** hub → agent, right after `welcome` (full: the whole catalogue, tombstones
 * included) and on every publish/unpublish (a delta). Agents fetch what they
 * lack and remove what was unpublished. No answer. */
export const FilesMessage = z.strictObject({
  type: z.literal('files'),
  full: z.boolean(),
  entries: z
    .array(
      z.strictObject({
        name: z.string().max(255),
        sha256: z.string().regex(/^[0-9a-f]{64}$/),
        size: z.number().int().nonnegative(),
        publisher: z.string().max(63),
        user: z.string().max(63),
        publishedAt: z.string(),
        deleted: z.boolean(),
        version: z.number().int().nonnegative(),
      }),
    )
    .max(100_000),
});
export type FilesMessage = z.infer<typeof FilesMessage>;

export const HubMessage = z.discriminatedUnion('type', [Welcome, ReverseRequest, Revoked, ErrorMessage, FilesMessage, McsImports, McsStatus]);

export type Hello = z.infer<typeof Hello>;
export type Welcome = z.infer<typeof Welcome>;
export type ReverseRequest = z.infer<typeof ReverseRequest>;
export type Revoked = z.infer<typeof Revoked>;
export type ErrorMessage = z.infer<typeof ErrorMessage>;
export type AgentMessage = z.infer<typeof AgentMessage>;
export type OutboundEnds = z.infer<typeof OutboundEnds>;
export type InboundEnds = z.infer<typeof InboundEnds>;
export type HubMessage = z.infer<typeof HubMessage>;

/** Validate a decoded value against a schema; a mismatch is a typed error
 * naming the first bad path. */
export function parseMessage<T>(schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const where = issue?.path.length ? issue.path.join('.') : '(root)';
  throw new ZtmError(ErrorCodes.BAD_MESSAGE, `bad message at ${where}: ${issue?.message ?? 'invalid'}`);
}

/** Bodies of the request/response routes (paths.ts). */
export const EnrolRequest = z.strictObject({
  permit: z.unknown(),
  csr: z.string().max(8192),
  /** Cluster agents only (`ztm-agent join --kubeconfig`): the cluster id to bind
   * into the certificate (mcs.ts). */
  cluster: ClusterId.optional(),
});
export const EnrolResponse = z.strictObject({
  certificate: z.string(),
  ca: z.string(),
  endpoint: z.string(),
  mesh: z.string(),
  certExpires: z.string(),
});
export const RenewRequest = z.strictObject({ csr: z.string().max(8192) });
export const RenewResponse = z.strictObject({ certificate: z.string(), certExpires: z.string() });

export type EnrolRequest = z.infer<typeof EnrolRequest>;
export type EnrolResponse = z.infer<typeof EnrolResponse>;
export type RenewRequest = z.infer<typeof RenewRequest>;
export type RenewResponse = z.infer<typeof RenewResponse>;
