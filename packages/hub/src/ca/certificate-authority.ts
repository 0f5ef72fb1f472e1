/**
 * The mesh CA: made once by `ztm-hub init`, key kept on the hub (0600).
 * Issues the hub's server certificate and endpoint client certificates from
 * CSRs made on the devices, and signs permits.
 */
import { type KeyObject, X509Certificate, createHash, createPrivateKey, createPublicKey, randomBytes, sign, verify } from 'node:crypto';
import { isIP } from 'node:net';
import { ErrorCodes, ZtmError, clusterUri, der as D, endpointUri, userUri } from '@ztm/proto';
import type { CryptoKey } from './x509.js';

const { ECDSA_SHA256, OID, TRUE, bitString, directoryString, octetString, readTlv, seq, set, time, tlv, unsignedInteger } = D;
type Tlv = D.Tlv;

/** @peculiar/x509 and its ASN.1 schemas, for the CA's and the hub's own
 * certificates only: loaded when one is made (init), not by a hub that serves
 * or a CLI command that signs a permit. */
const x509Module = () => import('./x509.js');

/** A positive 128-bit serial number without a leading zero byte, hex. */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] as number) & 0x7f || 1;
  return bytes.toString('hex');
}

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
  const { EC_ALG, exportPrivateKeyPem, generateKeyPair, x509 } = await x509Module();
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
  const f = tbsFields(der);
  return der.subarray(f.spki.start, f.spki.end);
}

/** The fields of a DER certificate's tbsCertificate up to its key. */
function tbsFields(der: Uint8Array): { subject: Tlv; spki: Tlv } {
  const what = 'certificate DER';
  const SEQ = 0x30;
  const certificate = readTlv(der, 0, SEQ, what);
  const tbs = readTlv(der, certificate.body, SEQ, what, certificate.end);
  const next = (at: number, tag?: number) => readTlv(der, at, tag, what, tbs.end);
  let at = tbs.body;
  if (der[at] === 0xa0) at = next(at).end; // [0] version
  at = next(at, 0x02).end; // serialNumber
  at = next(at, SEQ).end; // signature
  const issuer = next(at, SEQ);
  const validity = next(issuer.end, SEQ);
  const subject = next(validity.end, SEQ);
  const spki = next(subject.end, SEQ);
  return { subject, spki };
}

/** A PKCS#10 request checked by `checkCsr`: its key, as the bytes it carries,
 * and their SHA-256 (hex), which binds an endpoint name to the key. */
export interface CheckedCsr {
  spki: Buffer;
  spkiSha256: string;
}

/** Parse a PEM PKCS#10 request and check it signs itself with an ECDSA P-256
 * key. Every way it can be wrong is a typed CSR_INVALID. */
function parseCsr(csrPem: string): CheckedCsr {
  const m = /^\s*-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([A-Za-z0-9+/=\s]*)-----END (?:NEW )?CERTIFICATE REQUEST-----\s*$/.exec(csrPem);
  const der = m ? Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64') : null;
  let info: Tlv;
  let spki: Tlv;
  let signature: Buffer;
  let ecdsaSha256 = false;
  try {
    if (!der || der.length === 0) throw new Error('no PEM CERTIFICATE REQUEST block');
    const what = 'certificate request DER';
    const request = readTlv(der, 0, 0x30, what);
    if (request.end !== der.length) throw new Error(`${what}: bytes after the request`);
    info = readTlv(der, request.body, 0x30, what, request.end);
    const algorithm = readTlv(der, info.end, 0x30, what, request.end);
    const bits = readTlv(der, algorithm.end, 0x03, what, request.end);
    if (bits.end !== request.end) throw new Error(`${what}: fields after the signature`);
    const version = readTlv(der, info.body, 0x02, what, info.end);
    if (version.end - version.body !== 1 || der[version.body] !== 0) throw new Error(`${what}: version is not 1`);
    const subject = readTlv(der, version.end, 0x30, what, info.end);
    spki = readTlv(der, subject.end, 0x30, what, info.end);
    const rest = spki.end < info.end ? readTlv(der, spki.end, 0xa0, what, info.end).end : spki.end; // [0] attributes
    if (rest !== info.end) throw new Error(`${what}: fields after the attributes`);
    ecdsaSha256 = der.subarray(algorithm.start, algorithm.end).equals(ECDSA_SHA256);
    if (bits.end - bits.body < 2 || der[bits.body] !== 0) throw new Error(`${what}: signature is not whole bytes`);
    signature = der.subarray(bits.body + 1, bits.end);
  } catch (err) {
    throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request is not a PEM PKCS#10 CSR', { cause: err });
  }
  const spkiBytes = der.subarray(spki.start, spki.end);
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spkiBytes, format: 'der', type: 'spki' });
  } catch (err) {
    throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request is damaged (its key or signature does not parse)', { cause: err });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request key must be ECDSA P-256');
  }
  if (!ecdsaSha256) throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request must be signed with ECDSA and SHA-256');
  let ok = false;
  try {
    ok = verify('sha256', der.subarray(info.start, info.end), { key, dsaEncoding: 'der' }, signature);
  } catch (err) {
    throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request is damaged (its key or signature does not parse)', { cause: err });
  }
  if (!ok) throw new ZtmError(ErrorCodes.CSR_INVALID, 'certificate request signature does not verify');
  return { spki: Buffer.from(spkiBytes), spkiSha256: createHash('sha256').update(spkiBytes).digest('hex') };
}

export class CertificateAuthority {
  readonly certPem: string;
  readonly mesh: string;
  readonly #keyPem: string;
  #key: CryptoKey | undefined;
  /** The CA key parsed once, for permits and endpoint certificates (parsing
   * the PEM per permit was most of a permit's cost). */
  #keyObject: KeyObject | undefined;
  /** The CA's subject as its certificate holds it: every issuer name. */
  readonly #issuerName: Buffer;

  constructor(mesh: string, material: KeyAndCert) {
    this.mesh = mesh;
    this.certPem = material.certPem;
    this.#keyPem = material.keyPem;
    const caDer = new X509Certificate(material.certPem).raw;
    const { subject } = tbsFields(caDer);
    this.#issuerName = Buffer.from(caDer.subarray(subject.start, subject.end));
  }

  async #signingKey(): Promise<CryptoKey> {
    this.#key ??= await (await x509Module()).importPrivateKeyPem(this.#keyPem);
    return this.#key;
  }

  #privateKey(): KeyObject {
    this.#keyObject ??= createPrivateKey(this.#keyPem);
    return this.#keyObject;
  }

  /** Sign permit bytes (ECDSA P-256 / SHA-256, DER), base64. */
  signBytes(bytes: Buffer): string {
    return sign('sha256', bytes, this.#privateKey()).toString('base64');
  }

  /** The hub's TLS server certificate, for the host parts of its names. */
  async issueServerCertificate(names: readonly string[], lifetimeMs = 825 * 86_400_000): Promise<KeyAndCert> {
    const { EC_ALG, exportPrivateKeyPem, generateKeyPair, x509 } = await x509Module();
    const keys = await generateKeyPair();
    const hosts = new Set<string>(['localhost', '127.0.0.1', '::1']);
    for (const n of names) hosts.add(hostOf(n));
    const sans: import('./x509.js').x509.JsonGeneralName[] = [...hosts].map((h) => (isIP(h) ? { type: 'ip', value: h } : { type: 'dns', value: h }));
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: `CN=ztm hub ${this.mesh},O=ztm`,
      issuer: new x509.Name(this.#issuerName),
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

  /** Parse and verify a CSR; returns its key and the key's SPKI hash. */
  async checkCsr(csrPem: string): Promise<CheckedCsr> {
    return parseCsr(csrPem);
  }

  /** Issue an endpoint's client certificate. Identity (CN, SAN URI) comes from
   * the hub's records, never from the CSR's subject. A cluster agent's
   * certificate names its cluster too (third SAN URI, see proto mcs.ts). */
  async issueEndpointCertificate(csr: CheckedCsr, endpoint: string, user: string, lifetimeMs: number, cluster?: string | null): Promise<IssuedCertificate> {
    const now = Date.now();
    // Backdate for clock skew, but by no more than a tenth of the lifetime, so
    // short-lived certificates still renew at two thirds of their real life.
    const backdate = Math.min(BACKDATE_MS, Math.floor(lifetimeMs / 10));
    // Whole seconds, as the certificate holds them.
    const notBefore = Math.floor((now - backdate) / 1000) * 1000;
    const notAfter = Math.floor((now + lifetimeMs) / 1000) * 1000;
    const serial = randomSerial();
    const extension = (id: Buffer, critical: boolean, value: Buffer) => seq(id, ...(critical ? [TRUE] : []), octetString(value));
    const uri = (u: string) => tlv(0x86, Buffer.from(u, 'latin1'));
    // The shape @peculiar/x509 gave these certificates, byte for byte
    // (test/hub-trust.test.ts builds one both ways).
    const tbs = seq(
      tlv(0xa0, Buffer.from([0x02, 0x01, 0x02])), // v3
      unsignedInteger(serial),
      ECDSA_SHA256,
      this.#issuerName,
      seq(time(notBefore), time(notAfter)),
      seq(set(seq(OID.commonName, directoryString(endpoint))), set(seq(OID.organization, directoryString(`ztm mesh ${this.mesh}`)))),
      csr.spki,
      tlv(
        0xa3,
        seq(
          extension(OID.basicConstraints, true, seq()),
          extension(OID.keyUsage, true, Buffer.from([0x03, 0x02, 0x07, 0x80])), // digitalSignature
          extension(OID.extKeyUsage, false, seq(OID.clientAuth)),
          extension(
            OID.subjectAltName,
            false,
            seq(uri(endpointUri(this.mesh, endpoint)), uri(userUri(this.mesh, user)), ...(cluster ? [uri(clusterUri(this.mesh, cluster))] : [])),
          ),
        ),
      ),
    );
    const der = seq(tbs, ECDSA_SHA256, bitString(sign('sha256', tbs, { key: this.#privateKey(), dsaEncoding: 'der' })));
    return {
      certPem: D.pem(der, 'CERTIFICATE'),
      serial: opensslSerialHex(serial),
      spkiSha256: csr.spkiSha256,
      notBefore,
      notAfter,
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
