/**
 * The mesh CA: made once by `ztm-hub init`, key kept on the hub (0600).
 * Issues the hub's server certificate and endpoint client certificates from
 * CSRs made on the devices, and signs permits.
 */
import { type KeyObject, createHash, createPrivateKey, sign } from 'node:crypto';
import { isIP } from 'node:net';
import { ErrorCodes, ZtmError, clusterUri, endpointUri, userUri } from '@ztm/proto';
import { type CryptoKey, EC_ALG, exportPrivateKeyPem, generateKeyPair, importPrivateKeyPem, randomSerial, x509 } from './x509.js';

export interface KeyAndCert {
  certPem: string;
  keyPem: string;
}

export interface IssuedCertificate {
  certPem: string;
  /** Uppercase hex, as node:crypto's X509Certificate reports it. */
  serial: string;
  spkiSha256: string;
  notBefore: number;
  notAfter: number;
}

/** Allow for clocks a little behind ours. */
const BACKDATE_MS = 5 * 60_000;

export async function createCa(mesh: string, lifetimeMs = 10 * 365 * 86_400_000): Promise<KeyAndCert> {
  const keys = await generateKeyPair();
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: `CN=ztm mesh ${mesh} CA,O=ztm`,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + lifetimeMs),
    keys,
    signingAlgorithm: EC_ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/** SHA-256 of the DER SubjectPublicKeyInfo, hex: binds an endpoint name to its
 * key (the same bytes a CSR carries, hashed by `checkCsr`). */
export function spkiSha256(certDer: Uint8Array): string {
  return createHash('sha256').update(spkiOfCertificate(certDer)).digest('hex');
}

/** The SubjectPublicKeyInfo of a DER certificate, as the bytes it holds: the
 * seventh field of tbsCertificate, or the sixth without the optional version.
 * Read straight from the DER because decoding the key into a KeyObject and
 * encoding it again cost the hub ≈ 0.1 ms of each handshake (OpenSSL 3's
 * decoder lookup; docs/performance.md). Throws on anything that is not a
 * well-formed certificate of that shape. */
export function spkiOfCertificate(der: Uint8Array): Uint8Array {
  const tlv = (at: number, tag?: number) => {
    if (at + 2 > der.length) throw new Error('certificate DER truncated');
    const t = der[at] as number;
    if (tag !== undefined && t !== tag) throw new Error(`certificate DER: tag 0x${t.toString(16)} where 0x${tag.toString(16)} expected`);
    let len = der[at + 1] as number;
    let head = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      if (n < 1 || n > 3 || at + 2 + n > der.length) throw new Error('certificate DER: bad length');
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + (der[at + 2 + i] as number);
      head += n;
    }
    if (at + head + len > der.length) throw new Error('certificate DER truncated');
    return { tag: t, start: at, body: at + head, end: at + head + len };
  };
  const SEQ = 0x30;
  const certificate = tlv(0, SEQ);
  const tbs = tlv(certificate.body, SEQ);
  let at = tbs.body;
  if (der[at] === 0xa0) at = tlv(at).end; // [0] version
  at = tlv(at, 0x02).end; // serialNumber
  for (let i = 0; i < 4; i++) at = tlv(at, SEQ).end; // signature, issuer, validity, subject
  const spki = tlv(at, SEQ);
  if (spki.end > tbs.end) throw new Error('certificate DER: SubjectPublicKeyInfo outside tbsCertificate');
  return der.subarray(spki.start, spki.end);
}

export class CertificateAuthority {
  readonly certPem: string;
  readonly mesh: string;
  readonly #keyPem: string;
  #key: CryptoKey | undefined;
  /** The CA key parsed once, for permit signatures (parsing the PEM per
   * permit was most of a permit's cost). */
  #keyObject: KeyObject | undefined;
  #cert: x509.X509Certificate;

  constructor(mesh: string, material: KeyAndCert) {
    this.mesh = mesh;
    this.certPem = material.certPem;
    this.#keyPem = material.keyPem;
    this.#cert = new x509.X509Certificate(material.certPem);
  }

  async #signingKey(): Promise<CryptoKey> {
    this.#key ??= await importPrivateKeyPem(this.#keyPem);
    return this.#key;
  }

  /** Sign permit bytes (ECDSA P-256 / SHA-256, DER), base64. */
  signBytes(bytes: Buffer): string {
    this.#keyObject ??= createPrivateKey(this.#keyPem);
    return sign('sha256', bytes, this.#keyObject).toString('base64');
  }

  /** The hub's TLS server certificate, for the host parts of its names. */
  async issueServerCertificate(names: readonly string[], lifetimeMs = 825 * 86_400_000): Promise<KeyAndCert> {
    const keys = await generateKeyPair();
    const hosts = new Set<string>(['localhost', '127.0.0.1', '::1']);
    for (const n of names) hosts.add(hostOf(n));
    const sans: x509.JsonGeneralName[] = [...hosts].map((h) => (isIP(h) ? { type: 'ip', value: h } : { type: 'dns', value: h }));
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=ztm hub ${this.mesh},O=ztm`,
      issuer: this.#cert.subject,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + lifetimeMs),
      publicKey: keys.publicKey,
      signingKey: (await this.#signingKey()) as never,
      signingAlgorithm: EC_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        new x509.SubjectAlternativeNameExtension(sans),
      ],
    });
    return { certPem: cert.toString('pem'), keyPem: await exportPrivateKeyPem(keys.privateKey) };
  }

  /** Parse and verify a CSR; returns its public key's SPKI hash. */
  async checkCsr(csrPem: string): Promise<{ csr: x509.Pkcs10CertificateRequest; spkiSha256: string }> {
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(csrPem);
    } catch (err) {
      throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request is not a PEM PKCS#10 CSR', { cause: err });
    }
    // A damaged CSR can make the key parse or signature check throw: that is
    // a bad CSR (typed), never an internal error.
    let ok = false;
    let spki: Buffer;
    try {
      const alg = csr.publicKey.algorithm as { name: string; namedCurve?: string };
      if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-256') {
        throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request key must be ECDSA P-256');
      }
      ok = await csr.verify();
      spki = Buffer.from(csr.publicKey.rawData);
    } catch (err) {
      if (err instanceof ZtmError) throw err;
      throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request is damaged (its key or signature does not parse)', { cause: err });
    }
    if (!ok) throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request signature does not verify');
    return { csr, spkiSha256: createHash('sha256').update(spki).digest('hex') };
  }

  /** Issue an endpoint's client certificate. Identity (CN, SAN URI) comes from
   * the hub's records, never from the CSR's subject. A cluster agent's
   * certificate names its cluster too (third SAN URI, see proto mcs.ts). */
  async issueEndpointCertificate(
    csr: x509.Pkcs10CertificateRequest,
    endpoint: string,
    user: string,
    lifetimeMs: number,
    cluster?: string | null,
  ): Promise<IssuedCertificate> {
    const now = Date.now();
    // Backdate for clock skew, but by no more than a tenth of the lifetime, so
    // short-lived certificates still renew at two thirds of their real life.
    const backdate = Math.min(BACKDATE_MS, Math.floor(lifetimeMs / 10));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=${endpoint},O=ztm mesh ${this.mesh}`,
      issuer: this.#cert.subject,
      notBefore: new Date(now - backdate),
      notAfter: new Date(now + lifetimeMs),
      publicKey: csr.publicKey,
      signingKey: (await this.#signingKey()) as never,
      signingAlgorithm: EC_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([
          { type: 'url', value: endpointUri(this.mesh, endpoint) },
          { type: 'url', value: userUri(this.mesh, user) },
          ...(cluster ? [{ type: 'url' as const, value: clusterUri(this.mesh, cluster) }] : []),
        ]),
      ],
    });
    // The record's fields from the certificate just built, read as OpenSSL
    // reads them at a handshake (test/hub-trust.test.ts compares the two).
    // Parsing it again with node:crypto's X509Certificate cost ≈ 1.1 ms of the
    // hub's CPU per enrolment, a seventh of the whole (docs/performance.md).
    return {
      certPem: cert.toString('pem'),
      serial: opensslSerialHex(cert.serialNumber),
      spkiSha256: spkiSha256(new Uint8Array(cert.rawData)),
      notBefore: cert.notBefore.getTime(),
      notAfter: cert.notAfter.getTime(),
    };
  }
}

/** A serial number's hex as OpenSSL gives it (node:crypto's
 * `X509Certificate.serialNumber`, a peer certificate's `serialNumber`): the
 * INTEGER's bytes without the zero bytes that only keep it positive, two
 * digits a byte, uppercase. */
export function opensslSerialHex(hex: string): string {
  const even = hex.length % 2 ? `0${hex}` : hex;
  return even.replace(/^(?:00)+(?=[0-9a-fA-F]{2})/, '').toUpperCase();
}

export function hostOf(hostPort: string): string {
  const m = /^\[(.+)\]:\d+$/.exec(hostPort) ?? /^(.+):\d+$/.exec(hostPort);
  return m?.[1] ?? hostPort;
}
