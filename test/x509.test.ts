import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  certificateFacts,
  keyMatchesCertificate,
  parsePemCertificates,
  parsePrivateKeyPem,
  validateClientCertificate,
  type ChainResult,
} from '../shared/pki/certificate.ts';
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

function assertFail(r: ChainResult, reason: string, detail?: RegExp): void {
  assert.equal(r.ok, false, `expected ${reason}, got a valid chain`);
  if (r.ok) return;
  assert.equal(r.reason, reason, r.detail);
  if (detail) assert.match(r.detail, detail);
}

describe('x509', () => {
  let pki: Pki;
  const now = (): Date => new Date();
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
      });
      assert.match(f.fingerprint, /^[0-9A-F]{64}$/);
      const bare = certificateTokenValues(certificateFacts((await pki.client({ cn: null, email: null, upn: null })).x509));
      assert.equal(bare.cn, null);
      assert.equal(bare.e, null);
      assert.equal(bare.upn, null);
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

  describe('client certificate validation', () => {
    let expiredInt: CaHandle;
    let subInt: CaHandle;

    before(async () => {
      [expiredInt, subInt] = await Promise.all([
        pki.ca({ name: 'expired-int', cn: 'Expired Intermediate CA', issuer: 'root', notBefore: new Date(Date.now() - 30 * day), notAfter: new Date(Date.now() - day) }),
        pki.ca({ name: 'sub-int', cn: 'Sub Intermediate CA', issuer: 'intermediate' }),
      ]);
    });

    test('root-issued certificate is valid', async () => {
      const c = await pki.client();
      const r = validateClientCertificate({ leaf: c.x509, presented: [c.x509], trusted: [pki.root.x509], now: now() });
      assert.ok(r.ok, r.ok ? '' : r.detail);
      assert.deepEqual(r.chain.map((x) => x.fingerprint256), [c.x509, pki.root.x509].map((x) => x.fingerprint256));
    });

    test('intermediate presented by the client', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const presented = parsePemCertificates(c.chainPem);
      assert.equal(presented.length, 2);
      const r = validateClientCertificate({ leaf: c.x509, presented, trusted: [pki.root.x509, pki.foreign.x509], now: now() });
      assert.ok(r.ok, r.ok ? '' : r.detail);
      assert.equal(r.chain.length, 3);
      assert.ok(r.chain[1].raw.equals(pki.intermediate.x509.raw));
      assert.ok(r.chain[2].raw.equals(pki.root.x509.raw));
    });

    test('intermediate only in the trusted bundle (an anchor too)', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const r = validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509, pki.intermediate.x509], now: now() });
      assert.ok(r.ok, r.ok ? '' : r.detail);
      assert.ok(r.chain[1].raw.equals(pki.intermediate.x509.raw));
      const only = validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.intermediate.x509], now: now() });
      assert.ok(only.ok);
    });

    test('intermediate missing everywhere → untrusted-issuer', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: now() }), 'untrusted-issuer');
    });

    test('expired leaf', async () => {
      const c = await pki.client({ notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: now() }), 'expired', /^certificate .* expired/);
    });

    test('not-yet-valid leaf', async () => {
      const c = await pki.client({ notBefore: new Date(Date.now() + day), notAfter: new Date(Date.now() + 10 * day) });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: now() }), 'not-yet-valid');
      // ...and valid once its time has come
      const later = validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: new Date(Date.now() + 2 * day) });
      assert.ok(later.ok);
    });

    test('expired intermediate', async () => {
      const c = await pki.client({ issuer: expiredInt });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [expiredInt.x509], trusted: [pki.root.x509], now: now() }), 'expired', /issuer certificate .*Expired Intermediate/);
    });

    test('foreign CA → untrusted-issuer, even when the client presents its root', async () => {
      const c = await pki.client({ issuer: 'foreign' });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [pki.foreign.x509], trusted: [pki.root.x509, pki.intermediate.x509], now: now() }), 'untrusted-issuer');
    });

    test('keyUsage keyCertSign only → bad-key-usage', async () => {
      const c = await pki.client({ keyUsage: 'critical,keyCertSign' });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: now() }), 'bad-key-usage', /key usage/);
    });

    test('keyAgreement alone is fit for client authentication', async () => {
      const c = await pki.client({ keyUsage: 'critical,keyAgreement' });
      assert.ok(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: now() }).ok);
    });

    test('EKU serverAuth only → bad-key-usage', async () => {
      const c = await pki.client({ extendedKeyUsage: 'serverAuth' });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [pki.root.x509], now: now() }), 'bad-key-usage', /extended key usage/);
    });

    test('no keyUsage/EKU extensions at all is acceptable; anyExtendedKeyUsage too', async () => {
      const bare = await pki.client({ keyUsage: null, extendedKeyUsage: null });
      assert.ok(validateClientCertificate({ leaf: bare.x509, presented: [], trusted: [pki.root.x509], now: now() }).ok);
      const any = await pki.client({ extendedKeyUsage: 'anyExtendedKeyUsage' });
      assert.ok(validateClientCertificate({ leaf: any.x509, presented: [], trusted: [pki.root.x509], now: now() }).ok);
    });

    test('self-signed leaf → untrusted-issuer (also when pinned in the bundle)', async () => {
      const self = await pki.ca({ name: 'self-leaf', cn: 'LAST.FIRST.1234567890', basicConstraints: 'CA:FALSE', keyUsage: 'critical,digitalSignature' });
      assertFail(validateClientCertificate({ leaf: self.x509, presented: [self.x509], trusted: [pki.root.x509], now: now() }), 'untrusted-issuer');
      assertFail(validateClientCertificate({ leaf: self.x509, presented: [], trusted: [self.x509], now: now() }), 'untrusted-issuer');
    });

    test('issuer that is not a CA → not-a-ca', async () => {
      const notCa = await pki.client({ cn: 'Plain Leaf', keyUsage: null, extendedKeyUsage: null });
      const fakeCa: CaHandle = { ...notCa, name: 'plain-leaf', parent: pki.root };
      const c = await pki.client({ issuer: fakeCa });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [notCa.x509], trusted: [pki.root.x509], now: now() }), 'not-a-ca', /not a CA/);
    });

    test('issuer whose key usage lacks keyCertSign → not-a-ca', async () => {
      const noSign = await pki.ca({ name: 'no-certsign', cn: 'No CertSign CA', issuer: 'root', keyUsage: 'critical,cRLSign' });
      const c = await pki.client({ issuer: noSign });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [noSign.x509], trusted: [pki.root.x509], now: now() }), 'not-a-ca', /keyCertSign/);
    });

    test('path length constraint of the intermediate (pathlen:0) is enforced', async () => {
      const c = await pki.client({ issuer: subInt });
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [subInt.x509, pki.intermediate.x509], trusted: [pki.root.x509], now: now() }), 'not-a-ca', /path length/);
      // With the sub-CA itself trusted the constraint above it does not apply.
      assert.ok(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [subInt.x509], now: now() }).ok);
    });

    test('tampered signature → bad-signature', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const der = Buffer.from(c.x509.raw);
      der[der.length - 3] ^= 0x01; // inside the ECDSA signature's s value
      const tampered = new X509Certificate(der);
      assertFail(validateClientCertificate({ leaf: tampered, presented: [pki.intermediate.x509], trusted: [pki.root.x509], now: now() }), 'bad-signature');
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
      const both = validateClientCertificate({ leaf: c.x509, presented: [old.x509, pki.intermediate.x509], trusted: [pki.root.x509], now: now() });
      assert.ok(both.ok, both.ok ? '' : both.detail);
      assert.ok(both.chain[1].raw.equals(pki.intermediate.x509.raw));
      assertFail(validateClientCertificate({ leaf: c.x509, presented: [old.x509], trusted: [pki.root.x509], now: now() }), 'expired');
    });

    test('cross-certification loop terminates', async () => {
      const a = await pki.ca({ name: 'loop-a', cn: 'Loop A' });
      const b = await pki.ca({ name: 'loop-b', cn: 'Loop B', issuer: a });
      const a2 = await pki.ca({ name: 'loop-a2', subject: '/C=US/O=certgate test/CN=Loop A', issuer: b, reuseKeyOf: a });
      const b2 = await pki.ca({ name: 'loop-b2', subject: '/C=US/O=certgate test/CN=Loop B', issuer: a2, reuseKeyOf: b });
      const c = await pki.client({ issuer: b });
      const presented = [a.x509, b.x509, a2.x509, b2.x509];
      assertFail(validateClientCertificate({ leaf: c.x509, presented, trusted: [pki.root.x509], now: now() }), 'untrusted-issuer');
      const r = validateClientCertificate({ leaf: c.x509, presented, trusted: [a.x509], now: now() });
      assert.ok(r.ok, r.ok ? '' : r.detail);
    });

    test('many irrelevant presented certificates do not break path search', async () => {
      const c = await pki.client({ issuer: 'intermediate' });
      const junk = Array.from({ length: 50 }, () => [pki.foreign.x509, expiredInt.x509, subInt.x509]).flat();
      const r = validateClientCertificate({ leaf: c.x509, presented: [...junk, pki.intermediate.x509], trusted: [pki.root.x509], now: now() });
      assert.ok(r.ok, r.ok ? '' : r.detail);
    });

    test('server certificate (serverAuth EKU) is not a client certificate', async () => {
      const s = await pki.server();
      assertFail(validateClientCertificate({ leaf: s.x509, presented: [], trusted: [pki.root.x509], now: now() }), 'bad-key-usage');
    });

    test('RSA client under an RSA CA', async () => {
      const rsaCa = await pki.ca({ name: 'rsa-ca', cn: 'RSA Root CA', keyType: 'rsa' });
      const c = await pki.client({ issuer: rsaCa, keyType: 'rsa' });
      assert.ok(validateClientCertificate({ leaf: c.x509, presented: [], trusted: [rsaCa.x509], now: now() }).ok);
      await writeFile(join(pki.dir, 'rsa-client.pem'), c.certPem);
      assert.equal(keyMatchesCertificate(c.keyPem, c.certPem), true);
    });
  });
});
