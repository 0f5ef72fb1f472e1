/**
 * `ztm-agent join`: check the permit here (shape, signature, expiry), make the
 * key on this device, send a CSR with the permit's one-time token, store the
 * certificate that comes back.
 */
import * as http2 from 'node:http2';
import {
  ALPN_SESSION,
  type EnrolResponse,
  ErrorCodes,
  Paths,
  ZtmError,
  checkPermitExpiry,
  http2SessionOptions,
  isFatal,
  parsePermit,
  verifyPermitSignature,
} from '@ztm/proto';
import { dialTls } from '../session/dial.js';
import { requestJson } from '../session/h2-json.js';
import { hasIdentity, loadIdentity, saveIdentity } from './identity-store.js';
import { createCsrPem, generateKeyPem } from './keys.js';

export interface JoinOptions {
  /** Use this hub address instead of the permit's (NAT, port forward). */
  hub?: string;
  timeoutMs?: number;
  /** Cluster agents: the cluster id to bind into the certificate. */
  cluster?: string;
}

export interface JoinResult {
  mesh: string;
  endpoint: string;
  certExpires: string;
  hub: string;
  cluster?: string;
}

export async function join(dir: string, permitText: string, opts: JoinOptions = {}): Promise<JoinResult> {
  const permit = parsePermit(permitText);
  verifyPermitSignature(permit);
  checkPermitExpiry(permit);

  let keyPem: string | undefined;
  if (hasIdentity(dir)) {
    const old = loadIdentity(dir);
    if (old.mesh !== permit.mesh || old.endpoint !== permit.endpoint) {
      throw new ZtmError(ErrorCodes.ALREADY_ENROLLED, `${dir} is already enrolled as ${old.endpoint} in mesh ${old.mesh}; use another --data directory`);
    }
    keyPem = old.keyPem; // re-enrolment of the same device keeps its key
  }
  keyPem ??= await generateKeyPem();
  const csr = await createCsrPem(keyPem, permit.endpoint);

  const hubs = opts.hub ? [opts.hub] : permit.hubs;
  let lastError: ZtmError | undefined;
  for (const hub of hubs) {
    let session: http2.ClientHttp2Session | undefined;
    try {
      const socket = await dialTls(hub, { ca: permit.ca, alpn: ALPN_SESSION, timeoutMs: opts.timeoutMs });
      session = http2.connect(`https://${hub}`, { createConnection: () => socket, ...http2SessionOptions });
      session.on('error', () => {});
      const out = await requestJson<EnrolResponse>(
        session,
        'POST',
        Paths.enrol,
        { permit, csr, ...(opts.cluster ? { cluster: opts.cluster } : {}) },
        opts.timeoutMs,
      );
      saveIdentity(dir, {
        mesh: out.mesh,
        endpoint: out.endpoint,
        hubs: permit.hubs,
        keyPem,
        certPem: out.certificate,
        caPem: out.ca,
        enrolledAt: new Date().toISOString(),
      });
      return { mesh: out.mesh, endpoint: out.endpoint, certExpires: out.certExpires, hub, ...(opts.cluster ? { cluster: opts.cluster } : {}) };
    } catch (err) {
      lastError = err instanceof ZtmError ? err : new ZtmError(ErrorCodes.HUB_UNREACHABLE, String(err));
      if (isFatal(lastError.code)) throw lastError; // the hub said no: another address will say the same
    } finally {
      session?.close();
    }
  }
  throw lastError ?? new ZtmError(ErrorCodes.HUB_UNREACHABLE, 'no hub address to try');
}
