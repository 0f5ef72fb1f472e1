/**
 * Tunnel ends as the agent holds them, validated from CLI, admin API, YAML or
 * the persisted file, with errors that name the bad value.
 */
import {
  ErrorCodes,
  type HostPort,
  type TunnelId,
  ZtmError,
  formatHostPort,
  isValidName,
  parseListen,
  parseTarget,
  parseTunnelId,
  tunnelKey,
} from '@ztm/proto';

export interface InboundSpec {
  tunnel: string; // tcp/NAME
  listen: string[]; // [IP:]PORT
  exits: string[];
}

export interface OutboundSpec {
  tunnel: string;
  targets: string[]; // HOST:PORT
  allowEndpoints: string[];
  allowUsers: string[];
}

export interface InboundEnd {
  id: TunnelId;
  key: string;
  listen: HostPort[];
  exits: string[];
}

export interface OutboundEnd {
  id: TunnelId;
  key: string;
  targets: HostPort[];
  allowEndpoints: string[];
  allowUsers: string[];
}

const strings = (v: unknown, what: string): string[] => {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new ZtmError(ErrorCodes.BAD_REQUEST, `${what} must be a list of strings`);
  return v as string[];
};

const names = (v: unknown, what: string): string[] => {
  const list = strings(v, what);
  for (const n of list) if (!isValidName(n)) throw new ZtmError(ErrorCodes.BAD_REQUEST, `${what}: ${JSON.stringify(n)} is not a valid endpoint or user name`);
  return list;
};

export function toInbound(spec: Partial<InboundSpec>): InboundEnd {
  const id = parseTunnelId(String(spec.tunnel ?? ''));
  const listen = strings(spec.listen, 'listen').map(parseListen);
  if (listen.length === 0) throw new ZtmError(ErrorCodes.BAD_REQUEST, `inbound ${tunnelKey(id)} needs at least one --listen [IP:]PORT`);
  return { id, key: tunnelKey(id), listen, exits: names(spec.exits, 'exit') };
}

export function toOutbound(spec: Partial<OutboundSpec>): OutboundEnd {
  const id = parseTunnelId(String(spec.tunnel ?? ''));
  const targets = strings(spec.targets, 'target').map(parseTarget);
  if (targets.length === 0) throw new ZtmError(ErrorCodes.BAD_REQUEST, `outbound ${tunnelKey(id)} needs at least one --target HOST:PORT`);
  return { id, key: tunnelKey(id), targets, allowEndpoints: names(spec.allowEndpoints, 'allow-endpoint'), allowUsers: names(spec.allowUsers, 'allow-user') };
}

export const inboundSpec = (e: InboundEnd): InboundSpec => ({ tunnel: e.key, listen: e.listen.map(formatHostPort), exits: e.exits });
export const outboundSpec = (e: OutboundEnd): OutboundSpec => ({
  tunnel: e.key,
  targets: e.targets.map(formatHostPort),
  allowEndpoints: e.allowEndpoints,
  allowUsers: e.allowUsers,
});
