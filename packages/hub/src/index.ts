export { createHub, type Hub, type HubDeps } from './hub.js';
export { parseHubConfig, loadHubConfig, ConfigError, type HubConfig, type HubConfigInput } from './config/hub-config.js';
export { initHubData, loadHubData, hubPaths, type HubData } from './data-dir.js';
export { CertificateAuthority, createCa } from './ca/certificate-authority.js';
export { Registry } from './registry/registry.js';
export { createLogger, silentLogger } from './log.js';
