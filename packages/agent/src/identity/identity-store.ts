/**
 * The agent's identity on disk: key (0600, made here), certificate, mesh CA,
 * and what the permit said (mesh, endpoint, hub addresses). Writes are atomic
 * (temp file + rename) so a crash never leaves half a certificate.
 */
import { X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ADMIN_SOCKET_NAME, ErrorCodes, ZtmError } from '@ztm/proto';

export const defaultAgentDataDir = (): string => process.env.ZTM_DATA || join(homedir(), '.ztm', 'agent');

export function agentPaths(dir: string) {
  return {
    dir,
    key: join(dir, 'key.pem'),
    cert: join(dir, 'cert.pem'),
    ca: join(dir, 'ca.pem'),
    identity: join(dir, 'identity.json'),
    adminSocket: join(dir, ADMIN_SOCKET_NAME),
    state: join(dir, 'state.json'),
  };
}

export interface AgentIdentity {
  mesh: string;
  endpoint: string;
  hubs: string[];
  keyPem: string;
  certPem: string;
  caPem: string;
  enrolledAt: string;
}

export function writeFileAtomic(path: string, data: string, mode = 0o644): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

export function hasIdentity(dir: string): boolean {
  return existsSync(agentPaths(dir).identity);
}

export function loadIdentity(dir: string): AgentIdentity {
  const p = agentPaths(dir);
  if (!existsSync(p.identity)) {
    throw new ZtmError(ErrorCodes.NOT_ENROLLED, `${dir} holds no enrolled agent: run ztm-agent join --permit FILE --data ${dir} first`);
  }
  const meta = JSON.parse(readFileSync(p.identity, 'utf8')) as { mesh: string; endpoint: string; hubs: string[]; enrolledAt: string };
  return {
    ...meta,
    keyPem: readFileSync(p.key, 'utf8'),
    certPem: readFileSync(p.cert, 'utf8'),
    caPem: readFileSync(p.ca, 'utf8'),
  };
}

export function saveIdentity(dir: string, id: AgentIdentity): void {
  const p = agentPaths(dir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileAtomic(p.key, id.keyPem, 0o600);
  writeFileAtomic(p.cert, id.certPem);
  writeFileAtomic(p.ca, id.caPem);
  writeFileAtomic(p.identity, `${JSON.stringify({ mesh: id.mesh, endpoint: id.endpoint, hubs: id.hubs, enrolledAt: id.enrolledAt }, null, 2)}\n`);
}

export function saveCertificate(dir: string, certPem: string): void {
  writeFileAtomic(agentPaths(dir).cert, certPem);
}

export function certificateTimes(certPem: string): { notBefore: number; notAfter: number; serial: string } {
  const c = new X509Certificate(certPem);
  return { notBefore: Date.parse(c.validFrom), notAfter: Date.parse(c.validTo), serial: c.serialNumber.toUpperCase() };
}
