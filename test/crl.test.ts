import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPrivateKey, sign } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  RevokedSerials,
  crlSummary,
  isNewerOrSame,
  parseCrl,
  parseAndVerifyCrlOffThread,
  parseCrlOffThread,
  verifyCrlSignature,
  type ParsedCrl,
} from '../shared/pki/crl/parse.ts';
import { certificateFacts } from '../shared/pki/certificate.ts';
import { children, readTlv } from '../shared/pki/der.ts';
import { createPki, type CaHandle, type Pki } from './helpers/pki.ts';
import { tlv } from './helpers/der.ts';

const execFileAsync = promisify(execFile);

// --- a few DER building blocks to craft CRLs openssl will not make ---------

const oidDer = (dotted: string): Buffer => {
  const arcs = dotted.split('.').map(Number);
  const out = [arcs[0] * 40 + arcs[1]];
  for (const a of arcs.slice(2)) {
    const b: number[] = [a & 0x7f];
    for (let x = Math.floor(a / 128); x > 0; x = Math.floor(x / 128)) b.unshift(0x80 | (x & 0x7f));
    out.push(...b);
  }
  return tlv(0x06, Buffer.from(out));
};

const ext = (oid: string, critical: boolean, value: Buffer): Buffer =>
  tlv(0x30, oidDer(oid), ...(critical ? [tlv(0x01, Buffer.from([0xff]))] : []), tlv(0x04, value));

/** The child elements (full TLVs) of a constructed element. */
function parts(der: Buffer): Buffer[] {
  const t = readTlv(der, 0, der.length);
  return children(der, t).map((c) => der.subarray(c.start, c.end));
}

/** Splits a CRL into its TBSCertList elements. */
function tbsParts(crl: Buffer): { version: Buffer; alg: Buffer; issuer: Buffer; thisUpdate: Buffer; nextUpdate: Buffer; revoked: Buffer | null; exts: Buffer } {
  const [tbs] = parts(crl);
  const p = parts(tbs);
  assert.equal(p.length, 7, 'expected a v2 CRL with nextUpdate, entries and extensions');
  return { version: p[0], alg: p[1], issuer: p[2], thisUpdate: p[3], nextUpdate: p[4], revoked: p[5], exts: p[6] };
}

/** A CertificateList over `tbsElements`, signed with the CA's (EC) key. */
function signCrl(ca: CaHandle, alg: Buffer, tbsElements: Buffer[]): Buffer {
  const tbs = tlv(0x30, ...tbsElements);
  const sig = sign('sha256', tbs, createPrivateKey(ca.keyPem));
  return tlv(0x30, tbs, alg, tlv(0x03, Buffer.from([0]), sig));
}

/** crlExtensions [0] with the original extensions plus `extra`. */
function withExtensions(exts: Buffer, ...extra: Buffer[]): Buffer {
  const [seq] = parts(exts);
  return tlv(0xa0, tlv(0x30, ...parts(seq), ...extra));
}

const revokedEntry = (serialContent: Buffer, entryExts?: Buffer): Buffer =>
  tlv(0x30, tlv(0x02, serialContent), tlv(0x17, Buffer.from('260101000000Z')), ...(entryExts ? [entryExts] : []));

describe('crl', () => {
  let pki: Pki;
  let alice: { serial: string };
  const thisUpdate = new Date('2026-11-01T10:00:00Z');
  const nextUpdate = new Date('2026-11-08T10:00:00Z');
  let der: Buffer;
  let pem: Buffer;
  const revokedSerials = ['0A1B', '80FF0102030405060708', '01', '7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'];

  before(async () => {
    pki = await createPki();
    alice = await pki.client({ issuer: 'intermediate', serial: '0A1B' });
    const entries = revokedSerials.map((serial, i) => ({ serial, date: new Date(Date.UTC(2026, 9, 1 + i)), reason: i === 0 ? 'keyCompromise' : undefined }));
    [der, pem] = await Promise.all([
      pki.crl('intermediate', entries, { crlNumber: 5, thisUpdate, nextUpdate, format: 'der' }),
      pki.crl('intermediate', entries, { crlNumber: 5, thisUpdate, nextUpdate, format: 'pem' }),
    ]);
  });
  after(async () => {
    await pki?.cleanup();
  });

  describe('parseCrl', () => {
    function checkFields(crl: ParsedCrl, file: Buffer): void {
      assert.equal(crl.issuerDn, 'CN=Test Intermediate CA,O=certgate test,C=US');
      assert.equal(crl.issuerDn, certificateFacts(pki.intermediate.x509).subjectDn);
      assert.equal(crl.thisUpdate.toISOString(), thisUpdate.toISOString());
      assert.equal(crl.nextUpdate?.toISOString(), nextUpdate.toISOString());
      assert.equal(crl.crlNumber, 5n);
      assert.equal(crl.revokedCount, 4);
      assert.equal(crl.revoked.count, 4);
      assert.equal(crl.signatureAlgorithmOid, '1.2.840.10045.4.3.2');
      assert.equal(crl.sha256, createHash('sha256').update(file).digest('hex'));
      assert.equal(crl.bytes, file.length);
      assert.equal(crl.tbs[0], 0x30);
      assert.ok(crl.signature.length > 60);
    }

    test('DER fields', () => {
      checkFields(parseCrl(der, 'asn1'), der);
    });

    test('PEM fields (same CRL content)', () => {
      const crl = parseCrl(pem, 'pem');
      checkFields(crl, pem);
      assert.ok(crl.tbs.subarray(0, 10).length === 10);
    });

    test('issuer name DER and authority key id match the CA', async () => {
      const crl = parseCrl(der, 'asn1');
      assert.ok(pki.intermediate.x509.raw.includes(crl.issuerNameDer), 'issuer Name DER is the CA subject DER');
      const { stdout } = await execFileAsync('openssl', ['x509', '-in', pki.intermediate.certPath, '-noout', '-ext', 'subjectKeyIdentifier']);
      const ski = /([0-9A-F]{2}(:[0-9A-F]{2})+)/.exec(stdout)?.[1].replace(/:/g, '');
      assert.equal(crl.authorityKeyId, ski);
    });

    test('revoked lookup and serial normalisation', () => {
      const { revoked } = parseCrl(der, 'asn1');
      for (const s of revokedSerials) assert.equal(revoked.has(s), true, s);
      assert.equal(revoked.has(alice.serial), true);
      assert.equal(revoked.has('A1B'), true, 'without the leading zero nibble');
      assert.equal(revoked.has('0a1b'), true, 'lowercase');
      assert.equal(revoked.has('000A1B'), true, 'redundant leading zero byte');
      assert.equal(revoked.has('0080FF0102030405060708'), true, 'with the DER sign byte');
      assert.equal(revoked.has('1'), true);
      assert.equal(revoked.has('0A1C'), false);
      assert.equal(revoked.has('0A'), false);
      assert.equal(revoked.has('0A1B00'), false);
      assert.equal(revoked.has('80FF01020304050607'), false);
      assert.equal(revoked.has('02'), false);
      assert.equal(revoked.has('-0A1B'), false, 'a negative serial is another number');
      assert.equal(revoked.hasBytes(Buffer.from([0x00, 0x0a, 0x1b])), true);
      assert.equal(revoked.hasBytes(Buffer.from([0x0a, 0x1b])), true);
      assert.throws(() => revoked.has(''), TypeError);
      assert.throws(() => revoked.has('xyz'), TypeError);
      assert.throws(() => revoked.has('0A:1B'), TypeError);
    });

    test('RevokedSerials.fromSerials, negative serials, transfer round trip', () => {
      const set = RevokedSerials.fromSerials(['0A1B', '-01', 'FF', ...Array.from({ length: 1000 }, (_, i) => (i + 0x1000).toString(16))]);
      assert.equal(set.has('A1B'), true);
      assert.equal(set.has('-01'), true);
      assert.equal(set.has('01'), false);
      assert.equal(set.has('00FF'), true);
      assert.equal(set.has('13E7'), true);
      assert.equal(set.has('13E8'), false);
      const { data, transferList } = set.toTransfer();
      const moved = structuredClone(data, { transfer: transferList });
      assert.equal(data.keys.byteLength, 0, 'the buffers moved');
      const back = RevokedSerials.fromTransfer(moved);
      assert.equal(back.count, 1003);
      assert.equal(back.has('0A1B'), true);
      assert.equal(back.has('13E7'), true);
      assert.equal(back.has('0A1C'), false);
      assert.throws(() => RevokedSerials.fromTransfer({ ...moved, count: 10_000_000 }), /invalid/);
      assert.throws(() => RevokedSerials.fromTransfer({ ...moved, table: new ArrayBuffer(24) }), /invalid/);
    });

    test('CRL without entries and without CRL number; nextUpdate in the past still parses', async () => {
      const past = new Date('2020-01-08T00:00:00Z');
      const crl = parseCrl(await pki.crl('root', [], { crlNumber: null, thisUpdate: new Date('2020-01-01T00:00:00Z'), nextUpdate: past }), 'asn1');
      assert.equal(crl.revokedCount, 0);
      assert.equal(crl.revoked.has('0A1B'), false);
      assert.equal(crl.crlNumber, null);
      assert.equal(crl.nextUpdate?.toISOString(), past.toISOString());
      assert.equal(crl.issuerDn, 'CN=Test Root CA,O=certgate test,C=US');
    });

    test('garbage, truncated and wrong-type inputs throw clear errors', () => {
      const cases: Array<[Buffer, 'asn1' | 'pem', RegExp]> = [
        [Buffer.alloc(0), 'asn1', /not a CRL: empty/],
        [Buffer.from('hello, I am not a CRL at all'), 'asn1', /not a CRL/],
        [Buffer.from([0x30, 0x80, 0, 0]), 'asn1', /not a CRL: .*indefinite/],
        [der.subarray(0, der.length - 10), 'asn1', /CrlError: truncated CRL: /],
        [der.subarray(0, Math.floor(der.length / 2)), 'asn1', /truncated/],
        [Buffer.concat([der, Buffer.from([0])]), 'asn1', /trailing data/],
        [pki.root.x509.raw, 'asn1', /not a CRL: this is a certificate/],
        [pem, 'asn1', /PEM, but the source says asn1/],
        [der, 'pem', /looks like DER, but the source says pem/],
        [Buffer.from(pki.root.certPem), 'pem', /PEM holds CERTIFICATE, no X509 CRL/],
        [Buffer.from('just text'), 'pem', /no -----BEGIN X509 CRL----- block/],
        [Buffer.from(pem.toString().replace('-----END X509 CRL-----', '')), 'pem', /not a CRL: malformed PEM/],
        [Buffer.concat([pem, pem]), 'pem', /2 CRLs/],
        [Buffer.from(pem.toString().replace(/\n[A-Za-z0-9+/]{4}/, '\n****')), 'pem', /not valid base64/],
      ];
      for (const [data, type, re] of cases) assert.throws(() => parseCrl(data, type), re, `${type} ${data.subarray(0, 20).toString('hex')}`);
      // Every truncation point fails, none is accepted or crashes differently.
      for (let n = 1; n < der.length; n += 7) assert.throws(() => parseCrl(der.subarray(0, n), 'asn1'), /truncated|not a CRL/);
    });
  });

  describe('crafted CRLs', () => {
    test('no nextUpdate → null; the re-signed CRL verifies', async () => {
      const p = tbsParts(der);
      const crl = parseCrl(signCrl(pki.intermediate, p.alg, [p.version, p.alg, p.issuer, p.thisUpdate, p.revoked!, p.exts]), 'asn1');
      assert.equal(crl.nextUpdate, null);
      assert.equal(crl.revokedCount, 4);
      assert.equal((await verifyCrlSignature(crl, [pki.intermediate.x509]))?.fingerprint256, pki.intermediate.x509.fingerprint256);
    });

    test('v1 CRL (no version, no extensions)', async () => {
      const p = tbsParts(der);
      const crl = parseCrl(signCrl(pki.intermediate, p.alg, [p.alg, p.issuer, p.thisUpdate, p.nextUpdate, p.revoked!]), 'asn1');
      assert.equal(crl.crlNumber, null);
      assert.equal(crl.authorityKeyId, null);
      assert.equal(crl.revoked.has('0A1B'), true);
      assert.ok(await verifyCrlSignature(crl, [pki.root.x509, pki.intermediate.x509]));
    });

    test('non-minimal serial encodings in entries are normalised', () => {
      const p = tbsParts(der);
      const revoked = tlv(0x30, revokedEntry(Buffer.from([0x00, 0x0a, 0x1b])), revokedEntry(Buffer.from([0x00, 0x00, 0x80])));
      const crl = parseCrl(signCrl(pki.intermediate, p.alg, [p.version, p.alg, p.issuer, p.thisUpdate, p.nextUpdate, revoked, p.exts]), 'asn1');
      assert.equal(crl.revoked.has('0A1B'), true);
      assert.equal(crl.revoked.has('80'), true);
    });

    test('non-critical unknown extension is fine', () => {
      const p = tbsParts(der);
      const exts = withExtensions(p.exts, ext('1.3.6.1.4.1.55555.9', false, tlv(0x05, Buffer.alloc(0))));
      const crl = parseCrl(signCrl(pki.intermediate, p.alg, [p.version, p.alg, p.issuer, p.thisUpdate, p.nextUpdate, p.revoked!, exts]), 'asn1');
      assert.equal(crl.crlNumber, 5n);
    });

    test('CRLs that would say less than they seem are refused', () => {
      const p = tbsParts(der);
      const make = (exts: Buffer, revoked: Buffer = p.revoked!): Buffer => signCrl(pki.intermediate, p.alg, [p.version, p.alg, p.issuer, p.thisUpdate, p.nextUpdate, revoked, exts]);
      const cases: Array<[Buffer, RegExp]> = [
        [make(withExtensions(p.exts, ext('2.5.29.27', true, tlv(0x02, Buffer.from([4]))))), /delta CRLs are not supported/],
        [make(withExtensions(p.exts, ext('1.3.6.1.4.1.55555.9', true, tlv(0x05, Buffer.alloc(0))))), /unsupported critical extension 1\.3\.6\.1\.4\.1\.55555\.9/],
        [make(withExtensions(p.exts, ext('2.5.29.28', true, tlv(0x30, tlv(0x82, Buffer.from([0xff])))))), /CA certificates only/],
        [make(withExtensions(p.exts, ext('2.5.29.28', true, tlv(0x30, tlv(0x83, Buffer.from([0x07, 0x80])))))), /onlySomeReasons/],
        [make(withExtensions(p.exts, ext('2.5.29.28', true, tlv(0x30, tlv(0x84, Buffer.from([0xff])))))), /indirect CRL/],
        [make(p.exts, tlv(0x30, revokedEntry(Buffer.from([1]), tlv(0x30, ext('2.5.29.29', true, tlv(0x30)))))), /indirect CRL entries/],
        [signCrl(pki.intermediate, tlv(0x30, oidDer('1.2.840.10045.4.3.3')), [p.version, p.alg, p.issuer, p.thisUpdate, p.nextUpdate, p.revoked!, p.exts]), /signature algorithm inside and outside/],
        [signCrl(pki.intermediate, p.alg, [tlv(0x02, Buffer.from([2])), p.alg, p.issuer, p.thisUpdate, p.nextUpdate, p.revoked!, p.exts]), /unsupported version/],
        [signCrl(pki.intermediate, p.alg, [p.version, p.alg, p.issuer, tlv(0x17, Buffer.from('261301000000Z')), p.nextUpdate]), /invalid date|malformed/],
      ];
      for (const [data, re] of cases) assert.throws(() => parseCrl(data, 'asn1'), re);
      // An empty (non-DER) revokedCertificates SEQUENCE is read as "none revoked".
      assert.equal(parseCrl(make(p.exts, tlv(0x30)), 'asn1').revokedCount, 0);
      // Only the IDP flags that narrow the scope are refused; a plain distribution point name is fine.
      const idpName = ext('2.5.29.28', true, tlv(0x30, tlv(0xa0, tlv(0xa0, tlv(0x86, Buffer.from('http://crl.example.mil/x.crl'))))));
      assert.equal(parseCrl(make(withExtensions(p.exts, idpName)), 'asn1').revokedCount, 4);
    });
  });

  describe('signature', () => {
    test('verifies with the issuing CA only', async () => {
      const crl = parseCrl(der, 'asn1');
      const all = [pki.foreign.x509, pki.root.x509, pki.intermediate.x509];
      assert.equal((await verifyCrlSignature(crl, all))?.fingerprint256, pki.intermediate.x509.fingerprint256);
      assert.equal((await verifyCrlSignature(crl, [pki.foreign.x509])), null);
      assert.equal((await verifyCrlSignature(crl, [pki.root.x509])), null);
      assert.equal((await verifyCrlSignature(crl, [])), null);
      assert.equal((await verifyCrlSignature(crl, all))?.fingerprint256, pki.intermediate.x509.fingerprint256);
            const rootCrl = parseCrl(await pki.crl('root', [{ serial: '0A1B' }]), 'asn1');
      assert.equal((await verifyCrlSignature(rootCrl, all))?.fingerprint256, pki.root.x509.fingerprint256);
    });

    test('a CA with the same name but another key does not verify', async () => {
      const impostor = await pki.ca({ name: 'impostor', subject: '/C=US/O=certgate test/CN=Test Intermediate CA' });
      const crl = parseCrl(der, 'asn1');
      assert.equal((await verifyCrlSignature(crl, [impostor.x509])), null);
      // ...and the impostor's own CRL does not verify with the real CA.
      const forged = parseCrl(await pki.crl(impostor, [{ serial: '0A1B' }]), 'asn1');
      assert.equal(forged.issuerDn, crl.issuerDn);
      assert.equal((await verifyCrlSignature(forged, [pki.intermediate.x509])), null);
    });

    test('tampered bytes → null', async () => {
      const crl = parseCrl(der, 'asn1');
      const at = der.indexOf(Buffer.from([0x02, 0x02, 0x0a, 0x1b]));
      assert.ok(at > 0);
      const t1 = Buffer.from(der);
      t1[at + 3] ^= 0x01; // serial 0A1B → 0A1A: still parses
      const p1 = parseCrl(t1, 'asn1');
      assert.equal(p1.revoked.has('0A1A'), true);
      assert.equal((await verifyCrlSignature(p1, [pki.intermediate.x509])), null);
      const t2 = Buffer.from(der);
      t2[t2.length - 2] ^= 0x01; // inside the signature
      assert.equal((await verifyCrlSignature(parseCrl(t2, 'asn1'), [pki.intermediate.x509])), null);
      assert.ok(await verifyCrlSignature(crl, [pki.intermediate.x509]));
    });

    test('RSA CA: sha256WithRSA, sha384WithRSA, RSASSA-PSS', async () => {
      const rsaCa = await pki.ca({ name: 'rsa-crl-ca', cn: 'RSA CRL CA', keyType: 'rsa' });
      const variants = [
        { opts: {}, oid: '1.2.840.113549.1.1.11' },
        { opts: { md: 'sha384' as const }, oid: '1.2.840.113549.1.1.12' },
        { opts: { sigopt: ['rsa_padding_mode:pss', 'rsa_pss_saltlen:32'] }, oid: '1.2.840.113549.1.1.10' },
      ];
      for (const v of variants) {
        const crl = parseCrl(await pki.crl(rsaCa, [{ serial: '0A1B' }], v.opts), 'asn1');
        assert.equal(crl.signatureAlgorithmOid, v.oid);
        assert.equal((await verifyCrlSignature(crl, [pki.root.x509, rsaCa.x509]))?.fingerprint256, rsaCa.x509.fingerprint256, v.oid);
        assert.equal(await (await verifyCrlSignature(crl, [pki.intermediate.x509])), null);
      }
    });

    test('a CA certificate without cRLSign is not accepted as CRL signer', async () => {
      const noCrlSign = await pki.ca({ name: 'no-crlsign', cn: 'No CRLSign CA', keyUsage: 'critical,keyCertSign' });
      const crl = parseCrl(await pki.crl(noCrlSign, []), 'asn1');
      assert.equal((await verifyCrlSignature(crl, [noCrlSign.x509])), null);
    });
  });

  describe('isNewerOrSame', () => {
    const at = (iso: string): Date => new Date(iso);
    test('by CRL number when both have one', () => {
      assert.equal(isNewerOrSame({ crlNumber: 6n, thisUpdate: at('2026-01-01') }, { crlNumber: 5n, thisUpdate: at('2026-02-01') }), true);
      assert.equal(isNewerOrSame({ crlNumber: 5n, thisUpdate: at('2026-03-01') }, { crlNumber: 6n, thisUpdate: at('2026-02-01') }), false);
      assert.equal(isNewerOrSame({ crlNumber: 5n, thisUpdate: at('2026-01-01') }, { crlNumber: 5n, thisUpdate: at('2026-01-01') }), true);
    });
    test('else by thisUpdate', () => {
      assert.equal(isNewerOrSame({ crlNumber: null, thisUpdate: at('2026-02-01') }, { crlNumber: 9n, thisUpdate: at('2026-01-01') }), true);
      assert.equal(isNewerOrSame({ crlNumber: 10n, thisUpdate: at('2025-12-01') }, { crlNumber: null, thisUpdate: at('2026-01-01') }), false);
      assert.equal(isNewerOrSame({ crlNumber: null, thisUpdate: at('2026-01-01') }, { crlNumber: null, thisUpdate: at('2026-01-01') }), true);
    });
    test('nothing in use: anything goes', () => {
      assert.equal(isNewerOrSame({ crlNumber: null, thisUpdate: at('2000-01-01') }, null), true);
    });
    test('with parsed CRLs', async () => {
      const older = parseCrl(await pki.crl('root', [], { crlNumber: 7 }), 'asn1');
      const newer = parseCrl(await pki.crl('root', [], { crlNumber: 8 }), 'asn1');
      assert.equal(isNewerOrSame(newer, older), true);
      assert.equal(isNewerOrSame(older, newer), false);
    });
  });

  describe('parseCrlOffThread', () => {
    function same(a: ParsedCrl, b: ParsedCrl): void {
      assert.deepEqual(crlSummary(a), crlSummary(b));
      assert.equal(a.authorityKeyId, b.authorityKeyId);
      assert.equal(a.signatureAlgorithmOid, b.signatureAlgorithmOid);
      assert.ok(a.tbs.equals(b.tbs));
      assert.ok(a.signature.equals(b.signature));
      assert.ok(a.issuerNameDer.equals(b.issuerNameDer));
      assert.equal(a.revoked.count, b.revoked.count);
    }

    test('returns what parseCrl returns (DER and PEM), usable for lookup and verification', async () => {
      for (const [data, type] of [[der, 'asn1'], [pem, 'pem']] as const) {
        const off = await parseCrlOffThread(data, type);
        same(off, parseCrl(data, type));
        for (const s of revokedSerials) assert.equal(off.revoked.has(s), true);
        assert.equal(off.revoked.has('0A1C'), false);
        assert.ok(await verifyCrlSignature(off, [pki.intermediate.x509]));
      }
      assert.equal(der[0], 0x30, 'the caller\'s buffer is untouched');
    });

    test('a larger CRL (buffers transferred, not copied back)', async () => {
      const big = await pki.bigCrl(20_000);
      const off = await parseCrlOffThread(big.der, 'asn1');
      same(off, parseCrl(big.der, 'asn1'));
      assert.equal(off.revokedCount, 20_000);
      for (const i of [0, 1, 9_999, 19_999]) assert.equal(off.revoked.has(big.serialAt(i)), true);
      assert.equal(off.revoked.has(big.serialAt(20_000)), false);
      assert.ok(await verifyCrlSignature(off, [pki.intermediate.x509]));
    });

    test('errors come back as rejections', async () => {
      await assert.rejects(parseCrlOffThread(Buffer.from('garbage'), 'asn1'), /not a CRL/);
      await assert.rejects(parseCrlOffThread(der.subarray(0, 100), 'asn1'), /truncated/);
      await assert.rejects(parseCrlOffThread(pki.root.x509.raw, 'asn1'), /certificate/);
    });

    test('parseAndVerifyCrlOffThread: the signing CA among the candidates, null for none; concurrent requests each get their own answer', async () => {
      const big = await pki.bigCrl(5_000);
      const candidates = [pki.foreign.x509, pki.root.x509, pki.intermediate.x509];
      const [a, b, c, d] = await Promise.all([
        parseAndVerifyCrlOffThread(der, 'asn1', candidates),
        parseAndVerifyCrlOffThread(pem, 'pem', [pki.foreign.x509, pki.root.x509]),
        parseAndVerifyCrlOffThread(big.der, 'asn1', candidates),
        parseAndVerifyCrlOffThread(Buffer.from('garbage'), 'asn1', candidates).catch((e: Error) => e),
      ]);
      assert.equal(a.signer?.fingerprint256, pki.intermediate.x509.fingerprint256);
      same(a.crl, parseCrl(der, 'asn1'));
      assert.equal(b.signer, null, 'no candidate signed it');
      assert.equal(b.crl.revokedCount, revokedSerials.length);
      assert.equal(c.signer?.fingerprint256, pki.intermediate.x509.fingerprint256);
      assert.equal(c.crl.revokedCount, 5_000);
      assert.ok(d instanceof Error && /not a CRL/.test(d.message));
      // After a failure the same thread goes on serving.
      assert.equal((await parseCrlOffThread(der, 'asn1')).revokedCount, revokedSerials.length);
    });

    test('handOver: a Buffer that owns its memory moves to the thread (emptied, not copied); a pooled or small one is copied', async () => {
      const big = await pki.bigCrl(300_000);
      const own = Buffer.allocUnsafeSlow(big.der.length);
      big.der.copy(own);
      const off = await parseCrlOffThread(own, 'asn1', { handOver: true });
      assert.equal(off.revokedCount, 300_000);
      assert.equal(off.sha256, parseCrl(big.der, 'asn1').sha256);
      assert.equal(own.length, 0, 'moved to the thread');
      const small = Buffer.from(der);
      assert.equal((await parseCrlOffThread(small, 'asn1', { handOver: true })).revokedCount, revokedSerials.length);
      assert.ok(small.equals(der), 'too small to move: copied, untouched');
    });

    test('works in an app started with the tsx CLI', async () => {
      const crlPath = join(pki.dir, 'offthread.crl');
      await writeFile(crlPath, der);
      // .mts: the script lives outside the project, where no package.json says "type": "module".
      const script = join(pki.dir, 'offthread-app.mts');
      const crlModule = new URL('../shared/pki/crl/parse.ts', import.meta.url).href;
      await writeFile(
        script,
        `import { readFile } from 'node:fs/promises';\n` +
          `import { parseCrlOffThread, crlSummary } from ${JSON.stringify(crlModule)};\n` +
          `const crl = await parseCrlOffThread(await readFile(${JSON.stringify(crlPath)}), 'asn1');\n` +
          `console.log(JSON.stringify({ ...crlSummary(crl), hit: crl.revoked.has('0A1B') }));\n`,
      );
      const tsx = fileURLToPath(new URL('../node_modules/.bin/tsx', import.meta.url));
      const { stdout } = await execFileAsync(tsx, [script], { cwd: fileURLToPath(new URL('..', import.meta.url)) });
      const out = JSON.parse(stdout) as ReturnType<typeof crlSummary> & { hit: boolean };
      assert.equal(out.revokedCount, 4);
      assert.equal(out.crlNumber, '5');
      assert.equal(out.hit, true);
    });
  });
});
