/**
 * How a client of the hub (an agent, the bench's load generator) trusts the
 * hub's certificate and presents its own.
 *
 * The mesh CA is not put in the dialling TLS context's trust store. Where it
 * is, OpenSSL completes the client's certificate chain from that store on
 * every handshake (there is no switch for it in node), so every agent sent the
 * CA along with its own certificate, and the hub keeps a parsed copy of what a
 * client sent for the connection's life: ≈ 3 KiB of the hub's memory per
 * idle agent (docs/performance.md), and a second certificate to decode per
 * handshake. The hub has the CA; the certificate alone is enough for it.
 *
 * So the context trusts nothing, OpenSSL's verdict on the hub is ignored, and
 * `hubCertificateError` checks the hub's certificate against the mesh CA once
 * the handshake is done and before a byte of the application is written:
 * issued and signed by the mesh CA itself (a hub's certificate always is),
 * both within their validity, made for a server (an agent's certificate, from
 * the same CA, is for clients only), and naming the address dialled.
 */
import { X509Certificate } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';

/** Extended key usage a hub's certificate must carry (TLS server authentication). */
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';

export interface HubDialIdentity {
  /** PEM of this endpoint's certificate alone; omit for a dial without one (joining). */
  cert?: string;
  key?: string;
  alpn: string;
  /** Host name dialled, for SNI (none for an IP address). */
  host: string;
}

/** The TLS context of a dial to the hub: this endpoint's certificate and key,
 * TLS 1.3, and an empty trust store (above). */
export function hubSecureContext(o: { cert?: string; key?: string }): tls.SecureContext {
  return tls.createSecureContext({ ca: [], cert: o.cert, key: o.key, minVersion: 'TLSv1.3' });
}

/**
 * The context of one identity's dials, kept for its reconnects: OpenSSL 3
 * takes ≈ 2 ms of CPU to make one (the certificate and key decoded, the
 * cipher lists parsed), a tenth of a whole handshake's, and node makes a new
 * one for every `tls.connect` given a certificate and key. A new certificate
 * (renewal) or key gets a new context.
 */
export class HubDialContext {
  #cert: string | undefined;
  #key: string | undefined;
  #context: tls.SecureContext | undefined;

  for(o: { cert?: string; key?: string }): tls.SecureContext {
    if (!this.#context || this.#cert !== o.cert || this.#key !== o.key) {
      this.#context = hubSecureContext(o);
      this.#cert = o.cert;
      this.#key = o.key;
    }
    return this.#context;
  }
}

/** TLS options for a dial to the hub; check the result with `hubCertificateError`.
 * `context`: the identity's kept context (HubDialContext); else one is made. */
export function hubTlsOptions(o: HubDialIdentity & { context?: tls.SecureContext }): tls.ConnectionOptions {
  return {
    secureContext: o.context ?? hubSecureContext(o),
    // OpenSSL's verdict is ignored: the context trusts nothing, and the hub
    // is checked by hubCertificateError instead.
    rejectUnauthorized: false,
    ALPNProtocols: [o.alpn],
    servername: net.isIP(o.host) ? undefined : o.host,
  };
}

export type HubCertificateError = Error & { code: string };

function problem(code: string, message: string): HubCertificateError {
  return Object.assign(new Error(message), { code });
}

/** Every certificate of a PEM bundle (a mesh CA file may one day hold two, as
 * `ca: [bundle]` of a TLS context would read it). Throws on none or garbage. */
export function parseCaBundle(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!blocks) throw new Error('no PEM certificate in it');
  return blocks.map((b) => new X509Certificate(b));
}

/**
 * Why the hub at the other end of `socket` is not to be trusted, with an
 * OpenSSL-style code, or undefined when it is. `cas` is the mesh CA (each
 * certificate of its file); `host` the name or address dialled.
 */
export function hubCertificateError(socket: tls.TLSSocket, cas: readonly X509Certificate[], host: string, now = Date.now()): HubCertificateError | undefined {
  const cert = socket.getPeerX509Certificate();
  if (!cert) return problem('NO_PEER_CERTIFICATE', 'the hub presented no certificate');
  const ca = cas.find((c) => cert.checkIssued(c));
  if (!ca) {
    if (cert.checkIssued(cert)) return problem('DEPTH_ZERO_SELF_SIGNED_CERT', 'the hub presented a self-signed certificate');
    return problem('UNABLE_TO_GET_ISSUER_CERT_LOCALLY', `the hub's certificate was issued by ${JSON.stringify(cert.issuer)}, not by this mesh's CA`);
  }
  if (!cert.verify(ca.publicKey)) return problem('CERT_SIGNATURE_FAILURE', "the signature on the hub's certificate is not the mesh CA's");
  for (const [what, c] of [
    ["the hub's certificate", cert],
    ["the mesh CA's certificate", ca],
  ] as const) {
    // X509Certificate's "Nov 26 19:31:27 2026 GMT"; an unreadable date fails both tests.
    const from = Date.parse(c.validFrom);
    const to = Date.parse(c.validTo);
    if (!(from <= now)) return problem('CERT_NOT_YET_VALID', `${what} is not valid before ${c.validFrom}`);
    if (!(now <= to)) return problem('CERT_HAS_EXPIRED', `${what} expired ${c.validTo}`);
  }
  const usages = cert.keyUsage;
  if (!usages?.includes(SERVER_AUTH)) return problem('INVALID_PURPOSE', "the hub's certificate is not made for a server (an endpoint's certificate?)");
  const named = net.isIP(host) ? cert.checkIP(host) : cert.checkHost(host, { subject: 'never' });
  if (named === undefined)
    return problem('ERR_TLS_CERT_ALTNAME_INVALID', `the hub's certificate does not name ${host} (it names ${cert.subjectAltName ?? 'nothing'})`);
  return undefined;
}
