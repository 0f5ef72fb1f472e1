export { createAgent, type Agent, type AgentDeps } from './agent.js';
export { parseAgentConfig, loadAgentConfig, ConfigError, type AgentConfig } from './config/agent-config.js';
export { join, type JoinResult } from './identity/join.js';
export { loadIdentity, agentPaths, type AgentIdentity } from './identity/identity-store.js';
export { createLogger, silentLogger } from './log.js';
export type { TunnelView } from './tunnel/tunnel-manager.js';
export type { EndStats } from './tunnel/end-stats.js';
