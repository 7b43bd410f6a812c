import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import net from 'node:net';
import { connect as connectTls, createSecureContext, TLSSocket } from 'node:tls';
import { certificateFacts } from '../shared/pki/certificate.ts';
import { verifiedChain, verifyFailure, type VerifyFailure } from '../shared/pki/verify.ts';
import type { Listener } from '../shared/config/schemas.ts';
import { tlsOptions } from '../worker/smtp/server.ts';
import { peerCertificate } from '../worker/smtp/peer-certificate.ts';
import { keyMatchesCertificate, parsePemCertificates, parsePrivateKeyPem } from '../shared/pki/pem.ts';
import { certificateTokenValues } from '../shared/directory/tokens.ts';
import { createPki, OID_TEST_ATTR, type CaHandle, type Issued, type Pki } from './helpers/pki.ts';

const execFileAsync = promisify(execFile);

/** What openssl says about a certificate file. */
async function opensslFacts(certPath: string): Promise<{ serial: string; subject: string; issuer: string; fingerprint: string }> {
  const { stdout } = await execFileAsync('openssl', ['x509', '-in', certPath, '-noout', '-serial', '-subject', '-issuer', '-nameopt', 'RFC2253', '-fingerprint', '-sha256']);
  const field = (re: RegExp): string => {
    const m = re.exec(stdout);
    assert.ok(m, `openssl output lacks ${re}: ${stdout}`);
    return m[1];
  };
  return {
    serial: field(/^serial=(.*)$/m),
    subject: field(/^subject=(.*)$/m),
    issuer: field(/^issuer=(.*)$/m),
    fingerprint: field(/Fingerprint=(.*)$/m).replace(/:/g, ''),
  };
}

describe('x509', () => {
  let pki: Pki;
  const day = 24 * 3600_000;

  before(async () => {
    pki = await createPki();
  });
  after(async () => {
    await pki?.cleanup();
  });

  describe('certificate facts versus openssl', () => {
    const cases: Array<{ name: string; make: () => Promise<Issued>; expect?: Partial<Record<'cn' | 'serial' | 'email' | 'upn', string | null>> }> = [
      { name: 'default client (root-issued)', make: () => pki.client(), expect: { cn: 'LAST.FIRST.1234567890', email: 'first.last@example.mil', upn: '1234567890@mil' } },
      { name: 'short serial 0A1B (intermediate-issued)', make: () => pki.client({ serial: '0A1B', issuer: 'intermediate' }), expect: { serial: '0A1B' } },
      { name: 'serial with first byte >= 0x80', make: () => pki.client({ serial: '80FF0102030405060708' }), expect: { serial: '80FF0102030405060708' } },
      { name: 'serial FF', make: () => pki.client({ serial: 'FF' }), expect: { serial: 'FF' } },
      { name: 'serial 01', make: () => pki.client({ serial: '01' }), expect: { serial: '01' } },
      { name: 'serial given with leading 00 and odd length', make: () => pki.client({ serial: '000a1b2' }), expect: { serial: 'A1B2' } },
      {
        name: 'filter-injection CN, emailAddress in subject, no SAN',
        make: () => pki.client({ cn: '*)(uid=*))(|(uid=*', email: null, upn: null, subjectExtra: '/emailAddress=subject@example.mil' }),
        expect: { cn: '*)(uid=*))(|(uid=*', email: 'subject@example.mil', upn: null },
      },
      {
        name: 'RFC 4514 specials and multi-valued RDN',
        make: () => pki.client({ cn: 'Doe, John "JD" <x>;y\\z+w', subjectExtra: '/O=#hash+UID=jdoe/OU= lead', email: null }),
        expect: { cn: 'Doe, John "JD" <x>;y\\z+w', email: null },
      },
      { name: 'no CN', make: () => pki.client({ cn: null, upn: null }), expect: { cn: null, upn: null } },
      { name: 'RSA 2048 key', make: () => pki.client({ keyType: 'rsa', issuer: 'intermediate' }), expect: { cn: 'LAST.FIRST.1234567890' } },
      { name: 'server certificate', make: () => pki.server({ cn: 'gateway.example.com' }), expect: { cn: 'gateway.example.com', email: null, upn: null } },
      { name: 'root CA', make: async () => pki.root, expect: { cn: 'Test Root CA' } },
    ];

    for (const c of cases) {
      test(c.name, async () => {
        const cert = await c.make();
        const f = certificateFacts(cert.x509);
        const o = await opensslFacts(cert.certPath);
        assert.equal(f.serial, o.serial);
        assert.equal(f.serial, cert.serial);
        assert.equal(f.subjectDn, o.subject);
        assert.equal(f.issuerDn, o.issuer);
        assert.equal(f.fingerprint, o.fingerprint);
        assert.ok(f.der.equals(cert.x509.raw));
        assert.equal(f.notBefore.getTime(), new Date(cert.x509.validFrom).getTime());
        assert.equal(f.notAfter.getTime(), new Date(cert.x509.validTo).getTime());
        if (c.expect?.cn !== undefined) assert.equal(f.subjectCn, c.expect.cn);
        if (c.expect?.serial !== undefined) assert.equal(f.serial, c.expect.serial);
        if (c.expect?.email !== undefined) assert.equal(f.email, c.expect.email);
        if (c.expect?.upn !== undefined) assert.equal(f.upn, c.expect.upn);
        // A DER Buffer gives the same facts as the X509Certificate.
        assert.deepEqual(certificateFacts(cert.x509.raw), f);
      });
    }

    test('leading zero nibble is kept, sign byte dropped', async () => {
      const c = await pki.client({ serial: '0A1B' });
      assert.equal(certificateFacts(c.x509).serial, '0A1B');
      const d = await pki.client({ serial: '00FF' });
      assert.equal(d.x509.raw.includes(Buffer.from([0x02, 0x02, 0x00, 0xff])), true, 'DER carries the sign byte');
      assert.equal(certificateFacts(d.x509).serial, 'FF');
    });

    test('subject DN of specials is escaped per RFC 4514', async () => {
      const c = await pki.client({ cn: '#lead, and trail ', email: null, upn: null });
      assert.equal(certificateFacts(c.x509).subjectDn, 'CN=\\#lead\\, and trail\\ ,OU=PKI,O=certgate test,C=US');
    });

    test('attribute without a short name is OID=#hex', async () => {
      const c = await pki.client({ subjectExtra: '/testAttr=foo' });
      const f = certificateFacts(c.x509);
      assert.equal(f.subjectDn, `${OID_TEST_ATTR}=#0C03666F6F,CN=LAST.FIRST.1234567890,OU=PKI,O=certgate test,C=US`);
    });

    test('most specific CN wins when there are several', async () => {
      const c = await pki.client({ cn: 'outer', subjectExtra: '/CN=inner' });
      assert.equal(certificateFacts(c.x509).subjectCn, 'inner');
    });

    test('SAN rfc822Name wins over subject emailAddress', async () => {
      const c = await pki.client({ email: 'san@example.mil', subjectExtra: '/emailAddress=subject@example.mil' });
      assert.equal(certificateFacts(c.x509).email, 'san@example.mil');
    });

    test('non-ASCII UPN and CN decode as UTF-8', async () => {
      const c = await pki.client({ cn: 'MÜLLER.JÖRG.1234567890', upn: 'jörg@mil' });
      const f = certificateFacts(c.x509);
      assert.equal(f.subjectCn, 'MÜLLER.JÖRG.1234567890');
      assert.equal(f.upn, 'jörg@mil');
      assert.equal(f.subjectDn, 'CN=MÜLLER.JÖRG.1234567890,OU=PKI,O=certgate test,C=US');
    });

    test('tokenValues maps the facts to the SPEC 2.2 tokens', async () => {
      /** The subject key identifier as `openssl x509 -ext subjectKeyIdentifier` prints it, without colons. */
      const opensslSki = async (certPath: string): Promise<string> => {
        const { stdout } = await execFileAsync('openssl', ['x509', '-in', certPath, '-noout', '-ext', 'subjectKeyIdentifier']);
        return (stdout.trim().split('\n').at(-1) ?? '').replace(/[\s:]/g, '');
      };
      const c = await pki.client({ serial: '0A1B', issuer: 'intermediate' });
      const f = certificateFacts(c.x509);
      assert.deepEqual(certificateTokenValues(f), {
        cn: 'LAST.FIRST.1234567890',
        sn: '0A1B',
        s: 'CN=LAST.FIRST.1234567890,OU=PKI,O=certgate test,C=US',
        i: 'CN=Test Intermediate CA,O=certgate test,C=US',
        e: 'first.last@example.mil',
        upn: '1234567890@mil',
        fp: f.fingerprint,
        ir: 'C=US,O=certgate test,CN=Test Intermediate CA',
        sr: '1B0A',
        ski: await opensslSki(c.certPath),
      });
      assert.match(f.subjectKeyId ?? '', /^[0-9A-F]{40}$/);
      assert.match(f.fingerprint, /^[0-9A-F]{64}$/);
      const bare = certificateTokenValues(certificateFacts((await pki.client({ cn: null, email: null, upn: null })).x509));
      assert.equal(bare.cn, null);
      assert.equal(bare.e, null);
      assert.equal(bare.upn, null);
    });

    test('{ir} reverses the RDNs, {sr} the serial bytes (a DER sign byte stays dropped)', async () => {
      const c = await pki.client({ serial: '80FF01', issuer: 'intermediate' });
      const t = certificateTokenValues(certificateFacts(c.x509));
      assert.equal(t.sn, '80FF01');
      assert.equal(t.sr, '01FF80');
      assert.equal(t.ir, t.i?.split(',').reverse().join(','));
      const root = certificateTokenValues(certificateFacts(pki.root.x509));
      assert.equal(root.ir, root.i?.split(',').reverse().join(','));
    });

    test('a Buffer that is not a certificate throws', () => {
      assert.throws(() => certificateFacts(Buffer.from('garbage')), /not a certificate/);
    });
  });

  describe('PEM input', () => {
    test('parses a bundle, ignoring text between blocks', () => {
      const text = `subject=root\n${pki.root.certPem}\n# comment\n${pki.intermediate.certPem}`;
      const certs = parsePemCertificates(text);
      assert.equal(certs.length, 2);
      assert.ok(certs[0].raw.equals(pki.root.x509.raw));
      assert.ok(certs[1].raw.equals(pki.intermediate.x509.raw));
    });

    test('malformed input throws a clear error', () => {
      const body = pki.root.certPem;
      const b64 = body.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
      const bad: Array<[string, RegExp]> = [
        ['', /empty/],
        ['   \n', /empty/],
        ['garbage', /no PEM certificate/],
        [body.replace('-----END CERTIFICATE-----', ''), /BEGIN line without its END/],
        [body.replace('-----END CERTIFICATE-----', '-----END X509 CRL-----'), /closed by END/],
        [body.replace(/\n[A-Za-z0-9+/]{10}/, '\n!!!!!!!!!!'), /not valid base64/],
        [`-----BEGIN CERTIFICATE-----\n${b64.slice(0, 200)}\n-----END CERTIFICATE-----\n`, /certificate #1 is invalid/],
        [`-----BEGIN CERTIFICATE-----\n${Buffer.from('hello world, not DER').toString('base64')}\n-----END CERTIFICATE-----\n`, /certificate #1 is invalid/],
        [pki.root.keyPem, /PRIVATE KEY, expected CERTIFICATE/],
        [body + pki.root.keyPem, /#2 is PRIVATE KEY/],
      ];
      for (const [input, re] of bad) assert.throws(() => parsePemCertificates(input), re, JSON.stringify(input.slice(0, 60)));
    });

    test('a certificate with trailing bytes inside the block is refused', () => {
      const der = Buffer.concat([pki.root.x509.raw, Buffer.from([0, 0])]);
      const pem = `-----BEGIN CERTIFICATE-----\n${der.toString('base64')}\n-----END CERTIFICATE-----\n`;
      assert.throws(() => parsePemCertificates(pem), /trailing data|invalid/);
    });

    test('private keys', async () => {
      const key = parsePrivateKeyPem(pki.root.keyPem);
      assert.equal(key.type, 'private');
      assert.equal(key.asymmetricKeyType, 'ec');
      assert.throws(() => parsePrivateKeyPem(''), /empty/);
      assert.throws(() => parsePrivateKeyPem('nope'), /no PEM private key/);
      assert.throws(() => parsePrivateKeyPem(pki.root.certPem), /CERTIFICATE, expected PRIVATE KEY/);
      assert.throws(() => parsePrivateKeyPem(pki.root.keyPem.replace(/\n[A-Za-z0-9+/]{8}/, '\nAAAAAAAA')), /invalid private key/);
      const encPath = join(pki.dir, 'enc.pem');
      await execFileAsync('openssl', ['pkcs8', '-topk8', '-in', pki.root.keyPath, '-out', encPath, '-passout', 'pass:secret', '-v2', 'aes-256-cbc']);
      const encrypted = await readFile(encPath, 'utf8');
      assert.throws(() => parsePrivateKeyPem(encrypted), /encrypted private keys are not supported/);
      const rsa = await pki.client({ keyType: 'rsa' });
      assert.equal(parsePrivateKeyPem(rsa.keyPem).asymmetricKeyType, 'rsa');
    });

    test('keyMatchesCertificate', async () => {
      const c = await pki.client();
      assert.equal(keyMatchesCertificate(c.keyPem, c.certPem), true);
      assert.equal(keyMatchesCertificate(c.keyPem, c.chainPem), true);
      assert.equal(keyMatchesCertificate(pki.root.keyPem, c.certPem), false);
      assert.throws(() => keyMatchesCertificate('junk', c.certPem), /private key/);
      assert.throws(() => keyMatchesCertificate(c.keyPem, 'junk'), /certificate/);
    });
  });

  describe('client certificate verification: OpenSSL in the handshake, its verdict mapped (shared/pki/verify.ts)', () => {
    let expiredInt: CaHandle;
    let subInt: CaHandle;

    before(async () => {
      [expiredInt, subInt] = await Promise.all([
        pki.ca({ name: 'expired-int', cn: 'Expired Intermediate CA', issuer: 'root', notBefore: new Date(Date.now() - 30 * day), notAfter: new Date(Date.now() - day) }),
        pki.ca({ name: 'sub-int', cn: 'Sub Intermediate CA', issuer: 'intermediate' }),
      ]);
    });

    /** A mutual-TLS handshake as a listener makes it (tlsOptions: ca + allowPartialTrustChain, smtp-server's TLSSocket). */
    async function handshake(o: { leaf: { x509: X509Certificate; keyPem: string }; presented?: X509Certificate[]; trusted: X509Certificate[]; session?: boolean }): Promise<{ reason: VerifyFailure | null; code: string | null; chain: X509Certificate[] }> {
      const server = await pki.server();
      const context = createSecureContext({ ...tlsOptions(listenerWith(o.trusted)), key: server.keyPem, cert: server.certPem });
      return new Promise((resolve, reject) => {
        const srv = net.createServer((raw) => {
          const socket = new TLSSocket(raw, { secureContext: context, isServer: true, requestCert: true, rejectUnauthorized: false });
          socket.on('error', reject);
          socket.on('secure', () => {
            const err = (socket as unknown as { _handle: { verifyError(): { code?: string } | null } })._handle.verifyError();
            const code = err?.code ?? null;
            // The chain of this handshake's own certificates, or (`session`) what a session uses: kept by
            // fingerprint in worker/smtp/peer-certificate.ts, authorized set as smtp-server sets it.
            // One or the other: Node's getPeerX509Certificate() hands the sent chain over once per socket.
            let chain: X509Certificate[] = [];
            if (o.session) {
              socket.authorized = code === null;
              const peer = peerCertificate(socket, o.trusted);
              if (peer && code === null) chain = peer.chain();
            } else {
              const leaf = socket.getPeerX509Certificate();
              if (leaf && code === null) chain = verifiedChain(leaf, o.trusted);
            }
            resolve({ reason: code === null ? null : verifyFailure(code), code, chain });
            socket.end();
            srv.close();
          });
        });
        srv.listen(0, '127.0.0.1', () => {
          const port = (srv.address() as net.AddressInfo).port;
          const certs = [o.leaf.x509, ...(o.presented ?? [])].map((c) => c.toString()).join('');
          const client = connectTls({ host: '127.0.0.1', port, key: o.leaf.keyPem, cert: certs, rejectUnauthorized: false });
          client.on('error', () => undefined);
          client.on('data', () => undefined);
          client.on('end', () => client.end());
        });
      });
    }

    function listenerWith(trusted: X509Certificate[]): Listener {
      return { tls: { certificatePem: 'x', clientCaPem: trusted.map((c) => c.toString()).join('') } } as unknown as Listener;
    }

    async function assertFail(o: Parameters<typeof handshake>[0], reason: VerifyFailure, code?: string): Promise<void> {
      const r = await handshake(o);
      assert.equal(r.reason, reason, `OpenSSL said ${r.code}`);
      if (code) assert.equal(r.code, code);
    }

    async function assertValid(o: Parameters<typeof handshake>[0]): Promise<X509Certificate[]> {
      const r = await handshake(o);
      assert.equal(r.code, null, `OpenSSL said ${r.code}`);
      return r.chain;
    }

    const fingerprints = (chain: X509Certificate[]) => chain.map((x) => x.fingerprint256);

    test('root-issued certificate is valid; the chain for the revocation check ends at the anchor', async () => {
      const c = await pki.client();
      assert.deepEqual(fingerprints(await assertValid({ leaf: c, trusted: [pki.root.x509] })), fingerprints([c.x509, pki.root.x509]));
    });

    test('intermediate presented by the client', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const chain = await assertValid({ leaf: c, presented: [pki.intermediate.x509], trusted: [pki.root.x509, pki.foreign.x509] });
      assert.deepEqual(fingerprints(chain), fingerprints([c.x509, pki.intermediate.x509, pki.root.x509]));
    });

    test('intermediate only in the trusted bundle (an anchor too)', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const chain = await assertValid({ leaf: c, trusted: [pki.root.x509, pki.intermediate.x509] });
      assert.deepEqual(fingerprints(chain), fingerprints([c.x509, pki.intermediate.x509]), 'the chain ends at the first anchor');
      const presented = await assertValid({ leaf: c, presented: [pki.intermediate.x509], trusted: [pki.root.x509, pki.intermediate.x509] });
      assert.deepEqual(fingerprints(presented), fingerprints([c.x509, pki.intermediate.x509]), 'whether or not the client presents it');
      assert.deepEqual(fingerprints(await assertValid({ leaf: c, trusted: [pki.intermediate.x509] })), fingerprints([c.x509, pki.intermediate.x509]));
    });

    test('intermediate missing everywhere → untrusted-issuer', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      await assertFail({ leaf: c, trusted: [pki.root.x509] }, 'untrusted-issuer');
    });

    test('expired leaf', async () => {
      const c = await pki.client({ notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) });
      await assertFail({ leaf: c, trusted: [pki.root.x509] }, 'expired', 'CERT_HAS_EXPIRED');
    });

    test('not-yet-valid leaf', async () => {
      const c = await pki.client({ notBefore: new Date(Date.now() + day), notAfter: new Date(Date.now() + 10 * day) });
      await assertFail({ leaf: c, trusted: [pki.root.x509] }, 'not-yet-valid', 'CERT_NOT_YET_VALID');
    });

    test('expired intermediate', async () => {
      const c = await pki.client({ issuer: expiredInt });
      await assertFail({ leaf: c, presented: [expiredInt.x509], trusted: [pki.root.x509] }, 'expired', 'CERT_HAS_EXPIRED');
    });

    test('foreign CA → untrusted-issuer, even when the client presents its root', async () => {
      const c = await pki.client({ issuer: 'foreign' });
      await assertFail({ leaf: c, presented: [pki.foreign.x509], trusted: [pki.root.x509, pki.intermediate.x509] }, 'untrusted-issuer');
    });

    test('keyUsage keyCertSign only → bad-key-usage', async () => {
      const c = await pki.client({ keyUsage: 'critical,keyCertSign' });
      await assertFail({ leaf: c, trusted: [pki.root.x509] }, 'bad-key-usage', 'INVALID_PURPOSE');
    });

    test('keyAgreement alone is fit for client authentication (an ECDH key)', async () => {
      const c = await pki.client({ keyUsage: 'critical,digitalSignature,keyAgreement' });
      await assertValid({ leaf: c, trusted: [pki.root.x509] });
    });

    test('EKU serverAuth only → bad-key-usage', async () => {
      const c = await pki.client({ extendedKeyUsage: 'serverAuth' });
      await assertFail({ leaf: c, trusted: [pki.root.x509] }, 'bad-key-usage', 'INVALID_PURPOSE');
    });

    test('no keyUsage/EKU extensions at all is acceptable', async () => {
      await assertValid({ leaf: await pki.client({ keyUsage: null, extendedKeyUsage: null }), trusted: [pki.root.x509] });
    });

    test('anyExtendedKeyUsage alone → bad-key-usage (OpenSSL, as RFC 5280 §4.2.1.12 allows)', async () => {
      await assertFail({ leaf: await pki.client({ extendedKeyUsage: 'anyExtendedKeyUsage' }), trusted: [pki.root.x509] }, 'bad-key-usage', 'INVALID_PURPOSE');
      await assertValid({ leaf: await pki.client({ extendedKeyUsage: 'clientAuth,anyExtendedKeyUsage' }), trusted: [pki.root.x509] });
    });

    test('self-signed leaf → untrusted-issuer', async () => {
      const self = await pki.ca({ name: 'self-leaf', cn: 'LAST.FIRST.1234567890', basicConstraints: 'CA:FALSE', keyUsage: 'critical,digitalSignature' });
      await assertFail({ leaf: self, trusted: [pki.root.x509] }, 'untrusted-issuer', 'DEPTH_ZERO_SELF_SIGNED_CERT');
    });

    test('issuer that is not a CA → refused (OpenSSL: its purpose check fails)', async () => {
      const notCa = await pki.client({ cn: 'Plain Leaf', keyUsage: null, extendedKeyUsage: null });
      const fakeCa: CaHandle = { ...notCa, name: 'plain-leaf', parent: pki.root };
      const c = await pki.client({ issuer: fakeCa });
      await assertFail({ leaf: c, presented: [notCa.x509], trusted: [pki.root.x509] }, 'bad-key-usage', 'INVALID_PURPOSE');
    });

    test('issuer whose key usage lacks keyCertSign → refused (OpenSSL code unnamed by Node)', async () => {
      const noSign = await pki.ca({ name: 'no-certsign', cn: 'No CertSign CA', issuer: 'root', keyUsage: 'critical,cRLSign' });
      const c = await pki.client({ issuer: noSign });
      await assertFail({ leaf: c, presented: [noSign.x509], trusted: [pki.root.x509] }, 'untrusted-issuer', 'UNSPECIFIED');
    });

    test('path length constraint of the intermediate (pathlen:0) is enforced', async () => {
      const c = await pki.client({ issuer: subInt });
      await assertFail({ leaf: c, presented: [subInt.x509, pki.intermediate.x509], trusted: [pki.root.x509] }, 'not-a-ca', 'PATH_LENGTH_EXCEEDED');
      // With the sub-CA itself trusted the constraint above it does not apply.
      await assertValid({ leaf: c, trusted: [subInt.x509] });
    });

    test('tampered signature → bad-signature', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const der = Buffer.from(c.x509.raw);
      der[der.length - 3] ^= 0x01; // inside the ECDSA signature's s value
      await assertFail({ leaf: { x509: new X509Certificate(der), keyPem: c.keyPem }, presented: [pki.intermediate.x509], trusted: [pki.root.x509] }, 'bad-signature', 'CERT_SIGNATURE_FAILURE');
    });

    test('a renewed intermediate (same name and key): the valid one is chosen over the expired one', async () => {
      const old = await pki.ca({
        name: 'old-int',
        subject: '/C=US/O=certgate test/CN=Test Intermediate CA',
        issuer: 'root',
        reuseKeyOf: pki.intermediate,
        notBefore: new Date(Date.now() - 30 * day),
        notAfter: new Date(Date.now() - day),
      });
      const c = await pki.client({ issuer: 'intermediate' });
      await assertValid({ leaf: c, presented: [old.x509, pki.intermediate.x509], trusted: [pki.root.x509] });
      await assertFail({ leaf: c, presented: [old.x509], trusted: [pki.root.x509] }, 'expired');
    });

    test('cross-certification loop terminates', async () => {
      const a = await pki.ca({ name: 'loop-a', cn: 'Loop A' });
      const b = await pki.ca({ name: 'loop-b', cn: 'Loop B', issuer: a });
      const a2 = await pki.ca({ name: 'loop-a2', subject: '/C=US/O=certgate test/CN=Loop A', issuer: b, reuseKeyOf: a });
      const b2 = await pki.ca({ name: 'loop-b2', subject: '/C=US/O=certgate test/CN=Loop B', issuer: a2, reuseKeyOf: b });
      const c = await pki.client({ issuer: b });
      const presented = [a.x509, b.x509, a2.x509, b2.x509];
      await assertFail({ leaf: c, presented, trusted: [pki.root.x509] }, 'untrusted-issuer');
      const chain = await assertValid({ leaf: c, presented, trusted: [a.x509] });
      assert.ok(chain.length <= 10, 'the revocation chain walk is bounded');
    });

    test('many irrelevant presented certificates do not break path search', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const junk = Array.from({ length: 10 }, () => [pki.foreign.x509, expiredInt.x509, subInt.x509]).flat();
      const chain = await assertValid({ leaf: c, presented: [...junk, pki.intermediate.x509], trusted: [pki.root.x509] });
      // The revocation check follows issuance, not the order the client sent its certificates in.
      assert.deepEqual(fingerprints(chain), fingerprints([c.x509, pki.intermediate.x509, pki.root.x509]));
    });

    test("a session keeps a certificate's chain only from a verified handshake (peer-certificate.ts)", async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const trusted = [pki.root.x509];
      // Refused first (its intermediate left out): nothing of that handshake may serve the next.
      assert.equal((await handshake({ leaf: c, trusted, session: true })).code, 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY');
      const sent = await handshake({ leaf: c, presented: [pki.foreign.x509, pki.intermediate.x509], trusted, session: true });
      const expected = fingerprints([c.x509, pki.intermediate.x509, pki.root.x509]);
      assert.deepEqual(fingerprints(sent.chain), expected);
      // Kept: the same certificate later, sent with its intermediate alone, gets the same chain.
      const again = await handshake({ leaf: c, presented: [pki.intermediate.x509], trusted, session: true });
      assert.deepEqual(fingerprints(again.chain), expected);
      assert.equal(again.chain, sent.chain);
    });

    test('server certificate (serverAuth EKU) is not a client certificate', async () => {
      await assertFail({ leaf: await pki.server(), trusted: [pki.root.x509] }, 'bad-key-usage', 'INVALID_PURPOSE');
    });

    test('RSA client under an RSA CA', async () => {
      const rsaCa = await pki.ca({ name: 'rsa-ca', cn: 'RSA Root CA', keyType: 'rsa' });
      const c = await pki.client({ issuer: rsaCa, keyType: 'rsa' });
      await assertValid({ leaf: c, trusted: [rsaCa.x509] });
      await writeFile(join(pki.dir, 'rsa-client.pem'), c.certPem);
      assert.equal(keyMatchesCertificate(c.keyPem, c.certPem), true);
    });

    test('every OpenSSL code maps to a reason; unknown codes still refuse', () => {
      assert.equal(verifyFailure('CERT_HAS_EXPIRED'), 'expired');
      assert.equal(verifyFailure('UNABLE_TO_GET_ISSUER_CERT_LOCALLY'), 'untrusted-issuer');
      assert.equal(verifyFailure('PATH_LENGTH_EXCEEDED'), 'not-a-ca');
      assert.equal(verifyFailure('SOMETHING_NEW'), 'untrusted-issuer');
      assert.equal(verifyFailure(null), 'untrusted-issuer');
    });
  });
});
