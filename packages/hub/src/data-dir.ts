/**
 * The hub's data directory: CA and hub key pairs (keys 0600), the registry,
 * the admin socket. `init` creates it once; everything else loads it.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { ErrorCodes, MESH_NAME_PATTERN, ZtmError } from '@ztm/proto';
import { CertificateAuthority, createCa } from './ca/certificate-authority.js';
import type { KeyAndCert } from './ca/certificate-authority.js';
import { hubPaths } from './data-paths.js';
import { Registry } from './registry/registry.js';

export { defaultHubDataDir, hubPaths } from './data-paths.js';

export interface HubData {
  ca: CertificateAuthority;
  serverCert: KeyAndCert;
  registry: Registry;
  mesh: string;
  names: string[];
  paths: ReturnType<typeof hubPaths>;
}

function writeSecret(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

export async function initHubData(dir: string, mesh: string, names: string[]): Promise<HubData> {
  if (!MESH_NAME_PATTERN.test(mesh)) throw new ZtmError(ErrorCodes.CONFIG, `mesh name ${JSON.stringify(mesh)} is not valid: use a lowercase DNS label`);
  if (names.length === 0) throw new ZtmError(ErrorCodes.CONFIG, '--names needs at least one host:port that agents can reach');
  for (const n of names) {
    if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(n)) throw new ZtmError(ErrorCodes.CONFIG, `--names: ${JSON.stringify(n)} is not host:port`);
  }
  const p = hubPaths(dir);
  if (existsSync(p.caKey) || existsSync(p.db)) {
    throw new ZtmError(ErrorCodes.CONFIG, `${dir} already holds a hub; use another --data directory or remove it`);
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caMaterial = await createCa(mesh);
  writeSecret(p.caKey, caMaterial.keyPem);
  writeFileSync(p.caCert, caMaterial.certPem);
  const ca = new CertificateAuthority(mesh, caMaterial);
  const serverCert = await ca.issueServerCertificate(names);
  writeSecret(p.hubKey, serverCert.keyPem);
  writeFileSync(p.hubCert, serverCert.certPem);
  const registry = new Registry(p.db);
  registry.setMeta('mesh', mesh);
  registry.setMeta('names', JSON.stringify(names));
  return { ca, serverCert, registry, mesh, names, paths: p };
}

export function loadHubData(dir: string): HubData {
  const p = hubPaths(dir);
  if (!existsSync(p.db) || !existsSync(p.caKey)) {
    throw new ZtmError(ErrorCodes.NOT_ENROLLED, `${dir} holds no hub: run ztm-hub init --data ${dir} --names HOST:PORT first`);
  }
  const registry = new Registry(p.db);
  const mesh = registry.getMeta('mesh');
  const names = JSON.parse(registry.getMeta('names') ?? '[]') as string[];
  if (!mesh) throw new ZtmError(ErrorCodes.CONFIG, `${p.db} has no mesh name: the data directory is damaged`);
  const ca = new CertificateAuthority(mesh, { certPem: readFileSync(p.caCert, 'utf8'), keyPem: readFileSync(p.caKey, 'utf8') });
  const serverCert = { certPem: readFileSync(p.hubCert, 'utf8'), keyPem: readFileSync(p.hubKey, 'utf8') };
  return { ca, serverCert, registry, mesh, names, paths: p };
}
