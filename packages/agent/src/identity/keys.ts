/** Key pair and CSR made on the device with @peculiar/x509 on WebCrypto. The
 * private key never leaves this machine. */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const EC_ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

function pem(der: ArrayBuffer, label: string): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

export async function generateKeyPem(): Promise<string> {
  const keys = (await webcrypto.subtle.generateKey(EC_ALG, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  return pem(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey), 'PRIVATE KEY');
}

/** A CSR for the key in `keyPem`. The subject is informative only: the hub
 * stamps identity from its own records. */
export async function createCsrPem(keyPem: string, endpoint: string): Promise<string> {
  const { createPrivateKey, createPublicKey } = await import('node:crypto');
  const priv = createPrivateKey(keyPem);
  const spki = createPublicKey(priv).export({ type: 'spki', format: 'der' });
  const pkcs8 = priv.export({ type: 'pkcs8', format: 'der' });
  const privateKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, EC_ALG, false, ['sign']);
  const publicKey = await webcrypto.subtle.importKey('spki', spki, EC_ALG, true, ['verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${endpoint}`,
    keys: { privateKey, publicKey } as never,
    signingAlgorithm: EC_ALG,
  });
  return csr.toString('pem');
}
