/**
 * The little DER enrolment needs: an agent writing its PKCS#10 request, the
 * hub reading it and writing the endpoint certificate, all of a fixed shape.
 * @peculiar/x509 did these through generic ASN.1 schemas at ≈ 9.5 ms of the
 * hub's CPU per enrolment on this machine (docs/performance.md); with this,
 * ≈ 0.7 ms, most of it OpenSSL decoding the key and checking the signature.
 * Rare certificates (the CA's, the hub's) are still made with @peculiar/x509.
 * Used as `der.seq(…)` (proto's index exports it as a namespace).
 */

/** One tag-length-value: `start` of the tag, `body` of the contents, `end` past them. */
export interface Tlv {
  tag: number;
  start: number;
  body: number;
  end: number;
}

/** Read the TLV at `at`, strictly: definite lengths in their shortest form,
 * inside `der` (or before `limit`), the tag `tag` when given. Throws an Error
 * naming `what` on anything else. */
export function readTlv(der: Uint8Array, at: number, tag: number | undefined, what: string, limit = der.length): Tlv {
  if (at + 2 > limit) throw new Error(`${what}: truncated`);
  const t = der[at] as number;
  if (tag !== undefined && t !== tag) throw new Error(`${what}: tag 0x${t.toString(16)} where 0x${tag.toString(16)} expected`);
  let len = der[at + 1] as number;
  let head = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3 || at + 2 + n > limit) throw new Error(`${what}: bad length`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (der[at + 2 + i] as number);
    if (len < 0x80 || (der[at + 2] as number) === 0) throw new Error(`${what}: length not in its shortest form`);
    head += n;
  }
  if (at + head + len > limit) throw new Error(`${what}: truncated`);
  return { tag: t, start: at, body: at + head, end: at + head + len };
}

function lengthBytes(n: number): number[] {
  if (n < 0x80) return [n];
  const out: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) out.unshift(v & 0xff);
  return [0x80 | out.length, ...out];
}

/** A TLV of `tag` around `parts`. */
export function tlv(tag: number, ...parts: Uint8Array[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag, ...lengthBytes(body.length)]), body]);
}

export const seq = (...parts: Uint8Array[]): Buffer => tlv(0x30, ...parts);
export const set = (...parts: Uint8Array[]): Buffer => tlv(0x31, ...parts);
export const octetString = (bytes: Uint8Array): Buffer => tlv(0x04, bytes);
/** A BIT STRING of whole bytes. */
export const bitString = (bytes: Uint8Array): Buffer => tlv(0x03, Buffer.from([0]), bytes);
export const TRUE = Buffer.from([0x01, 0x01, 0xff]);

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const out: number[] = [(arcs[0] as number) * 40 + (arcs[1] as number)];
  for (const arc of arcs.slice(2)) {
    const b: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) b.unshift(0x80 | (v & 0x7f));
    out.push(...b);
  }
  return tlv(0x06, Buffer.from(out));
}

/** A non-negative INTEGER from its big-endian magnitude (hex). */
export function unsignedInteger(hex: string): Buffer {
  let bytes = Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex');
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  bytes = bytes.subarray(i);
  if (bytes.length === 0) bytes = Buffer.from([0]);
  return tlv(0x02, (bytes[0] as number) & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes);
}

/** RFC 5280's Time: UTCTime through 2049, GeneralizedTime after; whole seconds. */
export function time(ms: number): Buffer {
  const d = new Date(ms);
  const p = (n: number, w = 2) => String(n).padStart(w, '0');
  const y = d.getUTCFullYear();
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  return y >= 1950 && y < 2050 ? tlv(0x17, Buffer.from(`${p(y % 100)}${rest}`, 'latin1')) : tlv(0x18, Buffer.from(`${p(y, 4)}${rest}`, 'latin1'));
}

/** A directory string as @peculiar/x509 writes one: PrintableString where its
 * characters allow, UTF8String otherwise. */
export function directoryString(s: string): Buffer {
  return /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(s) ? tlv(0x13, Buffer.from(s, 'latin1')) : tlv(0x0c, Buffer.from(s, 'utf8'));
}

/** PEM text around DER bytes, 64 characters a line. */
export function pem(bytes: Uint8Array, label: string): string {
  const b64 = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

/** Object identifiers of enrolment. */
export const OID = {
  ecdsaWithSha256: oid('1.2.840.10045.4.3.2'),
  commonName: oid('2.5.4.3'),
  organization: oid('2.5.4.10'),
  basicConstraints: oid('2.5.29.19'),
  keyUsage: oid('2.5.29.15'),
  extKeyUsage: oid('2.5.29.37'),
  subjectAltName: oid('2.5.29.17'),
  clientAuth: oid('1.3.6.1.5.5.7.3.2'),
};
/** The AlgorithmIdentifier of ECDSA with SHA-256 (no parameters). */
export const ECDSA_SHA256 = seq(OID.ecdsaWithSha256);
