/**
 * The agent's configuration: one zod schema for type and validator, unknown
 * keys rejected, every problem reported with its path, defaults here only.
 */
import { CLUSTER_ID_PATTERN, ConfigError, durationMs, hostPortSchema, loadConfig, logLevelSchema, parseConfig } from '@ztm/proto';
import { z } from 'zod';

export const AgentConfigSchema = z.strictObject({
  logLevel: logLevelSchema.default('info'),
  /** Hub addresses to use instead of the permit's. */
  hubs: z.array(hostPortSchema).min(1).optional(),
  labels: z.record(z.string().max(63), z.string().max(255)).default({}),
  metrics: hostPortSchema.optional(),
  keepaliveInterval: durationMs('15s'),
  keepaliveTimeout: durationMs('30s'),
  reconnectBase: durationMs('250ms'),
  reconnectMax: durationMs('30s'),
  /** Tunnel ends declared here are opened at start (run-time ones persist in tunnels.json). */
  tunnels: z
    .strictObject({
      inbound: z.array(z.strictObject({ tunnel: z.string(), listen: z.array(z.string()).min(1), exits: z.array(z.string()).default([]) })).default([]),
      outbound: z
        .array(
          z.strictObject({
            tunnel: z.string(),
            targets: z.array(z.string()).min(1),
            allowEndpoints: z.array(z.string()).default([]),
            allowUsers: z.array(z.string()).default([]),
          }),
        )
        .default([]),
    })
    .default({ inbound: [], outbound: [] }),
  /** On SIGTERM, how long tunnelled connections may run on before they are dropped. */
  shutdownGrace: durationMs('10s'),
  /** Where received mesh files appear under their names (default DATA/files). */
  filesDir: z.string().min(1).optional(),
  /** UDP flows idle this long are closed. */
  udpIdleTimeout: durationMs('60s'),
  /** Kubernetes mode (multicluster services, k8s/): on with a kubeconfig or in-cluster config. */
  kubeconfig: z.string().min(1).optional(),
  kubernetesInCluster: z.boolean().default(false),
  /** Cluster id when the cluster has no ClusterProperty (the certificate's binds). */
  clusterId: z.string().regex(CLUSTER_ID_PATTERN, 'must be a DNS label of at most 63 characters').optional(),
  /** Address pods reach this agent on (its pod IP): imported EndpointSlices name it. */
  advertiseAddress: z.union([z.ipv4(), z.ipv6()]).optional(),
});

export type AgentConfigInput = z.input<typeof AgentConfigSchema>;
export type AgentConfig = Readonly<z.output<typeof AgentConfigSchema>>;
export { ConfigError };

export const parseAgentConfig = (raw: unknown): AgentConfig => parseConfig(AgentConfigSchema, raw);
export const loadAgentConfig = (file: string | undefined, overrides: Record<string, unknown> = {}): AgentConfig =>
  loadConfig(AgentConfigSchema, file, overrides);
