/** The SubjectPublicKeyInfo read straight from a certificate's DER (how the hub
 * binds a connecting agent to its enrolled key) is the key Node decodes, and
 * its hash is the one enrolment records from the CSR. */
import { X509Certificate } from 'node:crypto';
import t from 'tap';
import { CertificateAuthority, createCa, spkiOfCertificate, spkiSha256 } from '../src/ca/certificate-authority.js';
import { EC_ALG, generateKeyPair, x509 } from '../src/ca/x509.js';

const mesh = 'spki-test';
const ca = new CertificateAuthority(mesh, await createCa(mesh));
const keys = await generateKeyPair();
const csrPem = (await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=whoever', keys, signingAlgorithm: EC_ALG })).toString('pem');
const checked = await ca.checkCsr(csrPem);

const exported = (pem: string) => new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' });
const raw = (pem: string) => new X509Certificate(pem).raw;

t.test('endpoint certificates, with and without a cluster', async (t) => {
  for (const cluster of [null, 'east']) {
    const issued = await ca.issueEndpointCertificate(checked, 'alpha', 'alice', 86_400_000, cluster);
    t.same(Buffer.from(spkiOfCertificate(raw(issued.certPem))), exported(issued.certPem), `the same bytes as Node's export (cluster ${cluster})`);
    t.equal(issued.spkiSha256, checked.spkiSha256, 'its hash is the one enrolment took from the CSR');
    t.equal(spkiSha256(raw(issued.certPem)), checked.spkiSha256, 'and the one a connecting agent is checked against');
  }
});

t.test('the CA and server certificates (other extensions, other lengths)', async (t) => {
  t.same(Buffer.from(spkiOfCertificate(raw(ca.certPem))), exported(ca.certPem), 'CA certificate');
  const server = await ca.issueServerCertificate(['hub.example', '127.0.0.1']);
  t.same(Buffer.from(spkiOfCertificate(raw(server.certPem))), exported(server.certPem), 'server certificate');
});

t.test('anything else is refused, never misread', async (t) => {
  const der = raw(ca.certPem);
  t.throws(() => spkiOfCertificate(Buffer.from('not a certificate')), /tag|DER/, 'garbage');
  t.throws(() => spkiOfCertificate(der.subarray(0, 120)), /truncated|DER/, 'truncated');
  t.throws(() => spkiOfCertificate(Buffer.alloc(0)), /truncated/, 'empty');
  const bad = Buffer.from(der);
  bad[4] = 0x31; // tbsCertificate is no longer a SEQUENCE
  t.throws(() => spkiOfCertificate(bad), /tag 0x31/, 'wrong tag');
});
