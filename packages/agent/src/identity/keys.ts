/** Key pair and CSR made on the device with node:crypto. The private key
 * never leaves this machine. The request is written with proto's DER helpers
 * in the shape @peculiar/x509 gave it (test/hub-trust.test.ts compares them):
 * loading that library and its ASN.1 schemas took longer than the rest of a
 * join, and the load generator of the bench makes thousands of these. */
import { createPrivateKey, createPublicKey, generateKeyPair, sign } from 'node:crypto';
import { promisify } from 'node:util';
import { der } from '@ztm/proto';

const generateKeyPairAsync = promisify(generateKeyPair);

/** A new ECDSA P-256 private key, PKCS#8 PEM. */
export async function generateKeyPem(): Promise<string> {
  const { privateKey } = await generateKeyPairAsync('ec', { namedCurve: 'P-256' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
}

/** A CSR for the key in `keyPem`, signed by it (proof of possession). The
 * subject is informative only: the hub stamps identity from its own records. */
export async function createCsrPem(keyPem: string, endpoint: string): Promise<string> {
  const key = createPrivateKey(keyPem);
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const info = der.seq(
    Buffer.from([0x02, 0x01, 0x00]), // version 1
    der.seq(der.set(der.seq(der.OID.commonName, der.directoryString(endpoint)))),
    spki,
    Buffer.from([0xa0, 0x00]), // no attributes
  );
  const request = der.seq(info, der.ECDSA_SHA256, der.bitString(sign('sha256', info, { key, dsaEncoding: 'der' })));
  return der.pem(request, 'CERTIFICATE REQUEST');
}
