/** The hub gives TLS its certificate with its issuer (certChainPem), so that
 * OpenSSL does not build the chain on every handshake. The chain must stay a
 * valid one: leaf first, then the mesh CA, accepted by a peer that trusts
 * only that CA, both ways, and refused by another mesh. (Agents present their
 * certificate alone: test/hub-trust.test.ts.) */
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { certChainPem } from '@ztm/proto';
import t from 'tap';
import { CertificateAuthority, createCa } from '../src/ca/certificate-authority.js';
import { EC_ALG, exportPrivateKeyPem, generateKeyPair, x509 } from '../src/ca/x509.js';

const ca = new CertificateAuthority('chain-test', await createCa('chain-test'));
const other = new CertificateAuthority('other', await createCa('other'));
const server = await ca.issueServerCertificate(['127.0.0.1']);
const keys = await generateKeyPair();
const csrPem = (await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=alpha', keys, signingAlgorithm: EC_ALG })).toString('pem');
const agent = await ca.issueEndpointCertificate(await ca.checkCsr(csrPem), 'alpha', 'alice', 86_400_000, null);
const agentKey = await exportPrivateKeyPem(keys.privateKey);

t.test('leaf first, then the CA that issued it', async (t) => {
  const pems = certChainPem(agent.certPem, ca.certPem).match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
  t.equal(pems.length, 2);
  const [leaf, issuer] = pems.map((p) => new X509Certificate(p));
  t.ok(leaf?.checkIssued(issuer as X509Certificate), 'the second issued the first');
  t.equal(leaf?.fingerprint256, new X509Certificate(agent.certPem).fingerprint256);
});

t.test('a mutual TLS handshake on chains, trusting only the mesh CA', async (t) => {
  const srv = tls.createServer({
    key: server.keyPem,
    cert: certChainPem(server.certPem, ca.certPem),
    ca: [ca.certPem],
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.3',
  });
  const seen: Array<{ authorized: boolean; cn: unknown }> = [];
  srv.on('secureConnection', (s) => {
    seen.push({ authorized: s.authorized, cn: s.getPeerCertificate().subject?.CN });
    s.end();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => srv.close());
  const port = (srv.address() as AddressInfo).port;
  const dial = (trust: string) =>
    new Promise<boolean>((resolve, reject) => {
      const c = tls.connect({ port, host: '127.0.0.1', ca: [trust], cert: certChainPem(agent.certPem, ca.certPem), key: agentKey, minVersion: 'TLSv1.3' });
      c.on('secureConnect', () => resolve(c.authorized));
      c.on('data', () => {});
      c.on('error', reject);
    });
  t.equal(await dial(ca.certPem), true, 'the agent verifies the hub');
  await new Promise((r) => setTimeout(r, 50));
  t.same(seen, [{ authorized: true, cn: 'alpha' }], 'the hub verifies the agent');
  await t.rejects(dial(other.certPem), /self[- ]signed|unable to (verify|get)/i, 'an agent of another mesh refuses the hub');
});
