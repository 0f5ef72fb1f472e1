/** Tunnel ends persisted in DATA/tunnels.json (atomic writes), restored at start. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, ZtmError } from '@ztm/proto';
import { writeFileAtomic } from '../identity/identity-store.js';
import type { InboundSpec, OutboundSpec } from './tunnel-spec.js';

export interface TunnelFile {
  version: 1;
  inbound: InboundSpec[];
  outbound: OutboundSpec[];
}

export const tunnelFilePath = (dir: string): string => join(dir, 'tunnels.json');

export function readTunnelFile(dir: string): TunnelFile {
  const p = tunnelFilePath(dir);
  if (!existsSync(p)) return { version: 1, inbound: [], outbound: [] };
  try {
    const f = JSON.parse(readFileSync(p, 'utf8')) as Partial<TunnelFile>;
    return { version: 1, inbound: f.inbound ?? [], outbound: f.outbound ?? [] };
  } catch (err) {
    throw new ZtmError(ErrorCodes.CONFIG, `${p} is damaged (${(err as Error).message}); fix or remove it`);
  }
}

export function writeTunnelFile(dir: string, f: TunnelFile): void {
  writeFileAtomic(tunnelFilePath(dir), `${JSON.stringify(f, null, 2)}\n`, 0o600);
}
