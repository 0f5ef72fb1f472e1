/** How an agent and the hub trust each other on a dial (proto hub-trust.ts):
 * the agent presents its certificate alone (the hub has the CA, and keeps
 * whatever a client sends for the connection's life), and checks the hub's
 * certificate itself against the mesh CA after the handshake. Every reason to
 * refuse a hub is tried on a real TLS connection. */
import { KeyObject, X509Certificate, createHash, createPrivateKey, createPublicKey, sign, webcrypto } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { CertificateAuthority, createCa } from '@ztm/hub';
import { opensslSerialHex } from '../packages/hub/src/ca/certificate-authority.js';
import {
  ALPN_SESSION,
  ErrorCodes,
  HubDialContext,
  ZtmError,
  certChainPem,
  clusterUri,
  der,
  endpointUri,
  hubCertificateError,
  hubTlsOptions,
  userUri,
} from '@ztm/proto';
import t, { type Test } from 'tap';
import { createCsrPem, generateKeyPem } from '../packages/agent/src/identity/keys.js';
import { dialTls } from '../packages/agent/src/session/dial.js';
import { EC_ALG, exportPrivateKeyPem, generateKeyPair, importPrivateKeyPem, x509 } from '../packages/hub/src/ca/x509.js';

const ca = new CertificateAuthority('trust-test', await createCa('trust-test'));
const otherCa = await createCa('other');
const other = new CertificateAuthority('other', otherCa);
// Another CA under the very same name: only its key tells it apart.
const impostor = new CertificateAuthority('trust-test', await createCa('trust-test'));
const hub = await ca.issueServerCertificate(['127.0.0.1']);
const keys = await generateKeyPair();
const csrPem = (await x509.Pkcs10CertificateRequestGenerator.create({ name: 'CN=alpha', keys, signingAlgorithm: EC_ALG })).toString('pem');
const csr = await ca.checkCsr(csrPem);
const agent = { ...(await ca.issueEndpointCertificate(csr, 'alpha', 'alice', 86_400_000, null)), keyPem: await exportPrivateKeyPem(keys.privateKey) };
const caCerts = [new X509Certificate(ca.certPem)];

interface Served {
  port: number;
  /** What each client presented: its CN, and its issuer's where the client sent or the server holds it. */
  seen: Array<{ authorized: boolean; cn: unknown; issuerCn: unknown }>;
  /** The serial number of each client's certificate, in order. */
  serials: string[];
}

/** A TLS server as the hub runs one (client certificate asked for), presenting `cert`. */
async function serve(t: Test, cert: string, key: string, trust: string[], reject = false): Promise<Served> {
  const seen: Served['seen'] = [];
  const serials: string[] = [];
  const srv = tls.createServer({ key, cert, ca: trust, requestCert: true, rejectUnauthorized: reject, minVersion: 'TLSv1.3', ALPNProtocols: [ALPN_SESSION] });
  srv.on('secureConnection', (s) => {
    const peer = s.getPeerCertificate(true);
    seen.push({ authorized: s.authorized, cn: peer.subject?.CN, issuerCn: peer.issuerCertificate?.subject?.CN });
    serials.push(peer.serialNumber);
    s.end();
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => srv.close());
  return { port: (srv.address() as AddressInfo).port, seen, serials };
}

/** A dial with the agents' options; resolves with the check's verdict for `host`. */
function verdict(port: number, host: string, now?: number): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const c = tls.connect({ ...hubTlsOptions({ alpn: ALPN_SESSION, cert: agent.certPem, key: agent.keyPem, host: '127.0.0.1' }), host: '127.0.0.1', port });
    c.on('secureConnect', () => {
      resolve(hubCertificateError(c, caCerts, host, now)?.code);
      c.end();
    });
    c.on('error', reject);
  });
}

/** The agents' own dial (hub-client.ts), with this mesh's agent identity. */
const agentDial = (port: number) => dialTls(`127.0.0.1:${port}`, { ca: ca.certPem, cert: agent.certPem, key: agent.keyPem, alpn: ALPN_SESSION });

/** Until the server has seen `n` clients (it finishes its side of a handshake after the client). */
async function seenBy(s: Served, n: number): Promise<Served['seen']> {
  for (let i = 0; i < 100 && s.seen.length < n; i++) await new Promise((r) => setTimeout(r, 20));
  return s.seen;
}

t.test("an endpoint certificate: @peculiar/x509's bytes, signed by the CA, and the record is what OpenSSL reads", async (t) => {
  // The hub writes endpoint certificates itself (ca/der.ts). Each is compared
  // with the one @peculiar/x509 makes of the same fields, byte for byte up to
  // the signature; node:crypto checks the signature against the CA; the
  // record the hub files (serial, key hash, validity) is what OpenSSL reads
  // from the certificate at a handshake.
  const caMaterial = await createCa('trust-test');
  const own = new CertificateAuthority('trust-test', caMaterial);
  const caX509 = new x509.X509Certificate(caMaterial.certPem);
  const caNode = new X509Certificate(caMaterial.certPem);
  const signingKey = await importPrivateKeyPem(caMaterial.keyPem);
  const tbsOf = (bytes: Buffer) => {
    const outer = der.readTlv(bytes, 0, 0x30, 'certificate');
    const tbs = der.readTlv(bytes, outer.body, 0x30, 'tbs');
    return bytes.subarray(tbs.start, tbs.end).toString('hex');
  };
  const cases: Array<[string, string, number, string | null]> = [
    ['alpha', 'alice', 86_400_000, null],
    ['db-1.east_2', 'ops', 30 * 86_400_000, 'east'],
    ['x', 'x', 1_000, 'c'],
    ['long-lived', 'bob', 40 * 365 * 86_400_000, null], // past 2049: GeneralizedTime
  ];
  for (let i = 0; i < 24; i++) cases.push([`e${i}`, `u${i}`, 1_000 + i * 7_777_777, i % 2 ? `c${i}` : null]);
  let same = 0;
  for (const [endpoint, user, lifetime, cluster] of cases) {
    const issued = await own.issueEndpointCertificate(csr, endpoint, user, lifetime, cluster);
    const parsed = new X509Certificate(issued.certPem);
    const spki = parsed.publicKey.export({ type: 'spki', format: 'der' });
    const record = { serial: issued.serial, spkiSha256: issued.spkiSha256, notBefore: issued.notBefore, notAfter: issued.notAfter };
    const openssl = {
      serial: parsed.serialNumber.toUpperCase(),
      spkiSha256: createHash('sha256').update(spki).digest('hex'),
      notBefore: Date.parse(parsed.validFrom),
      notAfter: Date.parse(parsed.validTo),
    };
    const reference = await x509.X509CertificateGenerator.create({
      serialNumber: parsed.serialNumber,
      subject: `CN=${endpoint},O=ztm mesh trust-test`,
      issuer: caX509.subject,
      notBefore: new Date(issued.notBefore),
      notAfter: new Date(issued.notAfter),
      publicKey: (await own.checkCsr(csrPem)).spki,
      signingKey: signingKey as never,
      signingAlgorithm: EC_ALG,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([
          { type: 'url', value: endpointUri('trust-test', endpoint) },
          { type: 'url', value: userUri('trust-test', user) },
          ...(cluster ? [{ type: 'url' as const, value: clusterUri('trust-test', cluster) }] : []),
        ]),
      ],
    });
    const ok =
      tbsOf(parsed.raw) === tbsOf(Buffer.from(reference.rawData)) &&
      parsed.verify(caNode.publicKey) &&
      parsed.checkIssued(caNode) &&
      JSON.stringify(record) === JSON.stringify(openssl);
    if (!ok) {
      t.equal(tbsOf(parsed.raw), tbsOf(Buffer.from(reference.rawData)), `${endpoint}: tbsCertificate as @peculiar/x509 writes it`);
      t.ok(parsed.verify(caNode.publicKey), `${endpoint}: signed by the CA`);
      t.same(record, openssl, `${endpoint}: the record`);
      return;
    }
    same++;
  }
  t.equal(same, cases.length, `${cases.length} certificates: the same bytes, signed by the CA, the record as OpenSSL reads it`);
  // Serials OpenSSL prints without the sign byte, two digits a byte.
  t.equal(opensslSerialHex('00ff01'), 'FF01');
  t.equal(opensslSerialHex('7f'), '7F');
  t.equal(opensslSerialHex('0000'), '00');
  t.equal(opensslSerialHex('abc'), '0ABC');
});

t.test("an agent's CSR: @peculiar/x509's bytes, signed by its key, accepted by the hub", async (t) => {
  const infoOf = (pemText: string) => {
    const bytes = Buffer.from(pemText.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
    const outer = der.readTlv(bytes, 0, 0x30, 'request');
    const info = der.readTlv(bytes, outer.body, 0x30, 'info');
    return bytes.subarray(info.start, info.end).toString('hex');
  };
  for (const name of ['alpha', 'db-1.east_2']) {
    const keyPem = await generateKeyPem();
    const mine = await createCsrPem(keyPem, name);
    const key = createPrivateKey(keyPem);
    t.equal(key.asymmetricKeyDetails?.namedCurve, 'prime256v1', `${name}: a P-256 key`);
    const reference = await x509.Pkcs10CertificateRequestGenerator.create({
      name: `CN=${name}`,
      keys: {
        privateKey: await webcrypto.subtle.importKey('pkcs8', key.export({ type: 'pkcs8', format: 'der' }), EC_ALG, false, ['sign']),
        publicKey: await webcrypto.subtle.importKey('spki', createPublicKey(key).export({ type: 'spki', format: 'der' }), EC_ALG, true, ['verify']),
      } as never,
      signingAlgorithm: EC_ALG,
    });
    t.equal(infoOf(mine), infoOf(reference.toString('pem')), `${name}: the request info as @peculiar/x509 writes it`);
    t.ok(await new x509.Pkcs10CertificateRequest(mine).verify(), `${name}: @peculiar/x509 verifies its signature`);
    const checked = await ca.checkCsr(mine);
    const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
    t.equal(checked.spkiSha256, createHash('sha256').update(spki).digest('hex'), `${name}: the hub binds its key`);
  }
});

t.test('a CSR is refused, typed, for each way it can be wrong', async (t) => {
  const request = Buffer.from(csrPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  const pem = (b: Buffer) => `-----BEGIN CERTIFICATE REQUEST-----\n${b.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  const refused = async (text: string, why: RegExp, name: string) => {
    try {
      await ca.checkCsr(text);
      t.fail(`${name}: accepted`);
    } catch (err) {
      t.ok(err instanceof ZtmError && err.code === ErrorCodes.CSR_INVALID && why.test(err.message), `${name}: ${(err as Error).message}`);
    }
  };
  t.ok((await ca.checkCsr(csrPem)).spkiSha256, 'the request itself is accepted');
  await refused('not a csr', /not a PEM PKCS#10/, 'text');
  await refused(pem(Buffer.concat([request, Buffer.from([0])])), /not a PEM PKCS#10/, 'a byte after it');
  await refused(pem(request.subarray(0, request.length - 1)), /not a PEM PKCS#10/, 'a byte short');
  const flipped = Buffer.from(request);
  flipped.writeUInt8(flipped.readUInt8(flipped.length - 5) ^ 1, flipped.length - 5);
  await refused(pem(flipped), /does not verify|does not parse/, 'its signature altered');
  const info = Buffer.from(request);
  const at = info.indexOf(Buffer.from('alpha'));
  info[at] = 'A'.charCodeAt(0);
  await refused(pem(info), /does not verify/, 'its subject altered');
  // Well signed, but a field after the attributes: refused as malformed.
  const key = KeyObject.from(keys.privateKey);
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const extra = der.seq(
    Buffer.from([0x02, 0x01, 0x00]),
    der.seq(der.set(der.seq(der.OID.commonName, der.directoryString('alpha')))),
    spki,
    Buffer.from([0xa0, 0x00]),
    Buffer.from([0x05, 0x00]),
  );
  await refused(pem(der.seq(extra, der.ECDSA_SHA256, der.bitString(sign('sha256', extra, key)))), /not a PEM PKCS#10/, 'a field after the attributes');
  const rsaAlg = { name: 'RSASSA-PKCS1-v1_5', modulusLength: 1024, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
  const rsaCsr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=rsa',
    keys: (await webcrypto.subtle.generateKey(rsaAlg, true, ['sign', 'verify'])) as never,
    signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
  });
  await refused(rsaCsr.toString('pem'), /must be ECDSA P-256/, 'an RSA key');
  const p256 = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const sha384 = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=sha384',
    keys: p256 as never,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' },
  });
  await refused(sha384.toString('pem'), /signed with ECDSA and SHA-256/, 'signed with SHA-384');
  const p384 = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify']);
  const p384Csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=p384',
    keys: p384 as never,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
  });
  await refused(p384Csr.toString('pem'), /must be ECDSA P-256/, 'a P-384 key');
});

t.test('an agent presents its certificate alone, and the hub, holding the CA, accepts it', async (t) => {
  // A server that trusts nothing sees only what the client sent.
  const bare = await serve(t, certChainPem(hub.certPem, ca.certPem), hub.keyPem, []);
  (await agentDial(bare.port)).end();
  t.same(await seenBy(bare, 1), [{ authorized: false, cn: 'alpha', issuerCn: undefined }], 'the certificate, without its issuer');
  // The control: a client that gives TLS the chain sends the CA along, and
  // the same server sees it.
  await new Promise<void>((resolve, reject) => {
    const c = tls.connect({
      port: bare.port,
      host: '127.0.0.1',
      ca: [ca.certPem],
      cert: certChainPem(agent.certPem, ca.certPem),
      key: agent.keyPem,
      minVersion: 'TLSv1.3',
      ALPNProtocols: [ALPN_SESSION],
    });
    c.on('secureConnect', () => resolve(void c.end()));
    c.on('error', reject);
  });
  t.equal((await seenBy(bare, 2))[1]?.issuerCn, new X509Certificate(ca.certPem).subject.match(/CN=(.*)/)?.[1], 'a chain would have carried the CA');

  const asHub = await serve(t, certChainPem(hub.certPem, ca.certPem), hub.keyPem, [ca.certPem], true);
  (await agentDial(asHub.port)).end();
  t.same(
    (await seenBy(asHub, 1)).map((s) => [s.authorized, s.cn]),
    [[true, 'alpha']],
    'the hub verifies the agent from its own copy of the CA',
  );
});

t.test('each reason to refuse a hub, on a real connection', async (t) => {
  const good = await serve(t, certChainPem(hub.certPem, ca.certPem), hub.keyPem, [ca.certPem]);
  t.equal(await verdict(good.port, 'localhost'), undefined, 'its certificate names localhost too');
  t.equal(await verdict(good.port, 'elsewhere.example'), 'ERR_TLS_CERT_ALTNAME_INVALID', 'a name the certificate does not carry');
  t.equal(await verdict(good.port, '127.0.0.1', Date.now() + 900 * 86_400_000), 'CERT_HAS_EXPIRED', 'after its end');
  t.equal(await verdict(good.port, '127.0.0.1', Date.now() - 86_400_000), 'CERT_NOT_YET_VALID', 'before its start');
  t.equal(await verdict(good.port, '127.0.0.1', Date.now() + 3700 * 86_400_000), 'CERT_HAS_EXPIRED', 'after the CA ends (the hub certificate too)');

  const endpoint = await serve(t, certChainPem(agent.certPem, ca.certPem), agent.keyPem, [ca.certPem]);
  t.equal(await verdict(endpoint.port, '127.0.0.1'), 'INVALID_PURPOSE', "an endpoint's certificate from the same CA");

  const otherHub = await other.issueServerCertificate(['127.0.0.1']);
  const foreign = await serve(t, certChainPem(otherHub.certPem, other.certPem), otherHub.keyPem, [ca.certPem]);
  t.equal(await verdict(foreign.port, '127.0.0.1'), 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', "another mesh's hub");

  const selfSigned = await serve(t, otherCa.certPem, otherCa.keyPem, [ca.certPem]);
  t.equal(await verdict(selfSigned.port, '127.0.0.1'), 'DEPTH_ZERO_SELF_SIGNED_CERT', 'a self-signed certificate');

  const impostorHub = await impostor.issueServerCertificate(['127.0.0.1']);
  const sameName = await serve(t, certChainPem(impostorHub.certPem, impostor.certPem), impostorHub.keyPem, [ca.certPem]);
  t.match(await verdict(sameName.port, '127.0.0.1'), /^(UNABLE_TO_GET_ISSUER_CERT_LOCALLY|CERT_SIGNATURE_FAILURE)$/, 'a CA of the same name and another key');
});

t.test("the agent's dial refuses such a hub with a message that says what to check", async (t) => {
  const good = await serve(t, certChainPem(hub.certPem, ca.certPem), hub.keyPem, [ca.certPem]);
  const socket = await agentDial(good.port);
  t.ok(socket.encrypted, 'a hub of the mesh');
  socket.destroy();
  const bundle = `${other.certPem.trimEnd()}\n${ca.certPem}`;
  const fromBundle = await dialTls(`127.0.0.1:${good.port}`, { ca: bundle, cert: agent.certPem, key: agent.keyPem, alpn: ALPN_SESSION });
  t.ok(fromBundle.encrypted, 'a CA file of two certificates: any of them may have issued the hub');
  fromBundle.destroy();

  const endpoint = await serve(t, certChainPem(agent.certPem, ca.certPem), agent.keyPem, [ca.certPem]);
  const refused = await agentDial(endpoint.port).catch((e: unknown) => e);
  t.ok(refused instanceof ZtmError && refused.code === ErrorCodes.HUB_UNTRUSTED, 'HUB_UNTRUSTED');
  t.match(String((refused as Error).message), /does not vouch for \(INVALID_PURPOSE: .*not made for a server.*\): the address is wrong/);

  const garbled = await dialTls(`127.0.0.1:${good.port}`, { ca: 'not a certificate', alpn: ALPN_SESSION }).catch((e: unknown) => e);
  t.ok(garbled instanceof ZtmError && garbled.code === ErrorCodes.CONFIG, 'an unreadable CA is a configuration error');
});

t.test('an agent keeps its TLS context across reconnects; a renewed certificate gets a new one', async (t) => {
  // OpenSSL 3 spends ≈ 2 ms of CPU making a context: made once per identity.
  const contexts = new HubDialContext();
  const first = contexts.for({ cert: agent.certPem, key: agent.keyPem });
  t.equal(contexts.for({ cert: agent.certPem, key: agent.keyPem }), first, 'the same identity: the same context');
  const renewed = await ca.issueEndpointCertificate(csr, 'alpha', 'alice', 86_400_000, null);
  t.not(contexts.for({ cert: renewed.certPem, key: agent.keyPem }), first, 'a new certificate: a new context');

  // The agents' own dial, against a server as the hub runs one.
  const asHub = await serve(t, certChainPem(hub.certPem, ca.certPem), hub.keyPem, [ca.certPem], true);
  const contextOf = (s: tls.TLSSocket) => (s as unknown as { _handle?: { _secureContext?: unknown } })._handle?._secureContext;
  const dial = async (cert: string) => {
    const s = await dialTls(`127.0.0.1:${asHub.port}`, { ca: ca.certPem, cert, key: agent.keyPem, alpn: ALPN_SESSION });
    const c = contextOf(s);
    s.end();
    return c;
  };
  const a = await dial(agent.certPem);
  const b = await dial(agent.certPem);
  t.ok(a !== undefined && a === b, 'two dials of one identity share one context');
  const c = await dial(renewed.certPem);
  t.not(c, a, 'after renewal, another');
  await seenBy(asHub, 3);
  const serial = (pem: string) => new X509Certificate(pem).serialNumber;
  t.same(asHub.serials, [serial(agent.certPem), serial(agent.certPem), serial(renewed.certPem)], 'and the hub sees the renewed certificate at once');
});
