/**
 * The hub's configuration: one zod schema gives both the TypeScript type and
 * the validator. Unknown keys are rejected; every problem is reported with its
 * path; durations may be written "30s"; defaults live here and nowhere else.
 */
import { ConfigError, DEFAULT_MAX_FILE_BYTES, durationMs, hostPortSchema, loadConfig, logLevelSchema, parseConfig } from '@ztm/proto';
import { z } from 'zod';

export const HubConfigSchema = z.strictObject({
  /** Address the hub listens on for agents (TLS 1.3, HTTP/2, mutual TLS). */
  listen: hostPortSchema.default('0.0.0.0:8888'),
  logLevel: logLevelSchema.default('info'),
  /** Opt-in Prometheus/health listener, host:port. */
  metrics: hostPortSchema.optional(),
  keepaliveInterval: durationMs('15s'),
  keepaliveTimeout: durationMs('30s'),
  handshakeTimeout: durationMs('10s'),
  /** Lifetime of endpoint certificates; agents renew at two thirds of it. */
  certLifetime: durationMs('30d'),
  /** Default lifetime of a permit's join token. */
  permitTtl: durationMs('1h'),
  /** Largest file an agent may publish, in bytes. */
  maxFileSize: z.number().int().positive().default(DEFAULT_MAX_FILE_BYTES),
  /** File uploads and downloads the hub serves at once; more wait (429, retried). */
  maxTransfers: z.number().int().positive().default(32),
  /** On SIGTERM, how long relayed streams may run on before they are dropped. */
  shutdownGrace: durationMs('10s'),
  /** TLS connections without a client certificate (enrolment) held at once. */
  maxUnauthenticated: z.number().int().positive().default(256),
  /** Agent sessions held at once; more are refused with ZTM_ERR_TOO_MANY (retried). */
  maxAgents: z.number().int().positive().default(20_000),
  /** TCP connections held at once, in any state (TLS handshakes included). */
  maxConnections: z.number().int().positive().default(40_000),
  /** Concurrent streams one agent session may open (relayed connections). */
  maxStreamsPerSession: z.number().int().positive().default(10_000),
  /** Enrolment attempts per client address per minute. */
  enrolPerMinute: z.number().int().positive().default(30),
  /** Users whose endpoints may manage the tunnels of any endpoint (others: only their own user's). */
  admins: z.array(z.string().regex(/^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/, 'must be a user name')).default([]),
  /** Multicluster services: a cluster with no online agent keeps its exports this long. */
  mcsLeaseTtl: durationMs('30s'),
});

export type HubConfigInput = z.input<typeof HubConfigSchema>;
export type HubConfig = Readonly<z.output<typeof HubConfigSchema>>;
export { ConfigError };

export const parseHubConfig = (raw: unknown): HubConfig => parseConfig(HubConfigSchema, raw);
export const loadHubConfig = (file: string | undefined, overrides: Record<string, unknown> = {}): HubConfig => loadConfig(HubConfigSchema, file, overrides);
