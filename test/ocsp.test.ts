// The OCSP module (shared/pki/ocsp/) against a real responder, `openssl ocsp`, over the test
// PKI's index: good, revoked, unknown; delegated responders with and without OCSPSigning, a
// responder of a foreign CA (refused, then trusted through responderCaPem), the AIA URL,
// nonces, hanging/garbage/oversized/erroring responders, and the Redis cache shared by two
// checkers (the second answers with the responder down). The pure verdict's time window and
// the cache lifetime rule are tested on real responses with a chosen `now`.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BasicOCSPResponse, OCSPResponse, OCSPResponseStatus } from '@peculiar/asn1-ocsp';
import { AsnConvert } from '@peculiar/asn1-schema';
import { createHash } from 'node:crypto';
import { SubjectPublicKeyInfo } from '@peculiar/asn1-x509';
import { Redis } from 'ioredis';
import { createPki, type Issued, type Pki } from './helpers/pki.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { startFaultyResponder, startOcspResponder, type FaultyResponder, type OcspResponder } from './helpers/ocsp-responder.ts';
import { OcspChecker, describeOcsp, type OcspCheckSettings, type OcspObserver, type OcspResult } from '../shared/pki/ocsp/checker.ts';
import { buildOcspRequest, ocspUrlOf } from '../shared/pki/ocsp/request.ts';
import { cacheUntil, judgeOcspResponse, THIS_UPDATE_SKEW_MS } from '../shared/pki/ocsp/verdict.ts';
import { postOcspRequest } from '../shared/pki/ocsp/fetch.ts';
import { keys } from '../shared/redis/keys.ts';
import { DEFAULT_OCSP_SETTINGS } from '../shared/config/schemas.ts';
import { testLogger } from './helpers/crl-server.ts';

const quiet = testLogger();

interface Counts {
  requests: Record<string, number>;
  hits: Record<string, number>;
  outcomes: Record<string, number>;
}

function counting(): { observer: OcspObserver; counts: Counts } {
  const counts: Counts = { requests: {}, hits: {}, outcomes: {} };
  const inc = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);
  return {
    counts,
    observer: { request: (r) => inc(counts.requests, r), cacheHit: (c) => inc(counts.hits, c), outcome: (o) => inc(counts.outcomes, o) },
  };
}

function settings(over: Partial<OcspCheckSettings> = {}): OcspCheckSettings {
  return { ...DEFAULT_OCSP_SETTINGS, timeoutMs: 5000, ...over };
}

function assertOutcome(r: OcspResult, outcome: OcspResult['outcome'], problem?: RegExp): void {
  assert.equal(r.outcome, outcome, describeOcsp(r));
  if (problem) assert.match(describeOcsp(r), problem);
}

describe('OCSP against openssl ocsp', () => {
  let pki: Pki;
  let redis: TestRedis;
  const clients: Redis[] = [];
  const responders: Array<OcspResponder | FaultyResponder> = [];
  // Leaves of the intermediate CA.
  let good: Issued, revoked: Issued, crlOnly: Issued, unknown: Issued, withAia: Issued, noAia: Issued;
  // Responder certificates.
  let delegated: Issued, notDelegated: Issued, foreignResponder: Issued;
  // Responders (all answer for the intermediate).
  let byIssuer: OcspResponder, byDelegate: OcspResponder, byNonDelegate: OcspResponder, byForeign: OcspResponder, keyIdNoCerts: OcspResponder;

  const newRedis = () => {
    const r = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    clients.push(r);
    return r;
  };
  const checker = (o: { redis?: Redis | null; observer?: OcspObserver } = {}) => new OcspChecker({ redis: o.redis === undefined ? newRedis() : o.redis, logger: quiet, observer: o.observer });
  /** A checker without the shared cache, so that every check asks its responder. */
  const checkerWithout = () => checker({ redis: null });
  const leaf = (cn: string, ocspUrl?: string) => pki.client({ cn, issuer: 'intermediate', ocspUrl });

  before(async () => {
    [pki, redis] = await Promise.all([createPki(), startRedis()]);
    const ocspEku = { email: null, upn: null, keyUsage: 'critical,digitalSignature' };
    [good, revoked, crlOnly, unknown, noAia, delegated, notDelegated, foreignResponder] = await Promise.all([
      leaf('GOOD.LEAF'),
      leaf('REVOKED.LEAF'),
      leaf('CRL.ONLY.LEAF'),
      leaf('UNKNOWN.LEAF'),
      leaf('NO.AIA.LEAF'),
      pki.client({ ...ocspEku, cn: 'Delegated OCSP Responder', issuer: 'intermediate', extendedKeyUsage: 'OCSPSigning' }),
      pki.client({ ...ocspEku, cn: 'Not An OCSP Responder', issuer: 'intermediate', extendedKeyUsage: 'clientAuth' }),
      pki.client({ ...ocspEku, cn: 'Foreign OCSP Responder', issuer: 'foreign', extendedKeyUsage: 'OCSPSigning' }),
    ]);
    const entries = () => [
      { serial: good.serial },
      { serial: revoked.serial, revoked: { reason: 'keyCompromise' } },
      { serial: crlOnly.serial },
      { serial: noAia.serial },
      ...(withAia ? [{ serial: withAia.serial }] : []),
    ];
    const ca = pki.intermediate;
    [byIssuer, byDelegate, byNonDelegate, byForeign, keyIdNoCerts] = await Promise.all([
      startOcspResponder({ ca, entries: entries() }),
      startOcspResponder({ ca, signer: delegated, entries: entries() }),
      startOcspResponder({ ca, signer: notDelegated, entries: entries() }),
      startOcspResponder({ ca, signer: foreignResponder, entries: entries() }),
      startOcspResponder({ ca, signer: delegated, entries: entries(), byKey: true, noCerts: true }),
    ]);
    responders.push(byIssuer, byDelegate, byNonDelegate, byForeign, keyIdNoCerts);
    withAia = await leaf('AIA.LEAF', byIssuer.url);
    await byIssuer.setEntries(entries());
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await Promise.all(responders.map((r) => r.stop()));
    await redis?.stop();
    await pki?.cleanup();
  });

  test('good, revoked (with its reason and time) and unknown, from a responder signing as the issuer', async () => {
    const { observer, counts } = counting();
    const c = checker({ observer });
    const s = settings({ responderUrl: byIssuer.url });
    assertOutcome(await c.check(good.x509, pki.intermediate.x509, s), 'good', /good, answered by the issuer via http:\/\/127\.0\.0\.1/);
    const r = await c.check(revoked.x509, pki.intermediate.x509, s);
    assertOutcome(r, 'revoked', /OCSP: revoked at .* \(keyCompromise\)/);
    assert.ok(r.outcome === 'revoked' && r.answer.revokedAt !== null && Date.parse(r.answer.revokedAt) < Date.now());
    assertOutcome(await c.check(unknown.x509, pki.intermediate.x509, s), 'unknown', /does not know the certificate/);
    assertOutcome(await c.check(crlOnly.x509, pki.intermediate.x509, s), 'good', /good/);
    assert.deepEqual(counts.requests, { answered: 4 });
    assert.deepEqual(counts.outcomes, { good: 2, revoked: 1, unknown: 1 });
  });

  test('a delegated responder needs a certificate from the issuer with the OCSPSigning EKU', async () => {
    const c = checker({ redis: null });
    const ok = await c.check(good.x509, pki.intermediate.x509, settings({ responderUrl: byDelegate.url }));
    assertOutcome(ok, 'good', /delegated responder .*CN=Delegated OCSP Responder/);
    const refused = await checker({ redis: null }).check(good.x509, pki.intermediate.x509, settings({ responderUrl: byNonDelegate.url }));
    assertOutcome(refused, 'unavailable', /Not An OCSP Responder,.* lacks the OCSPSigning extended key usage/);
  });

  test('a responder certified by a foreign CA is refused unless responderCaPem trusts it', async () => {
    const checker = () => checkerWithout();
    const refused = await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: byForeign.url }));
    assertOutcome(refused, 'unavailable', /Foreign OCSP Responder,.* is not issued by the certificate's issuer/);
    const trusted = await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: byForeign.url, responderCaPem: pki.foreign.certPem }));
    assertOutcome(trusted, 'good', /trusted responder .*Foreign OCSP Responder/);
    // A responder certificate from the issuer's own PKI does not become trusted by naming a foreign CA.
    const stillDelegated = await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: byDelegate.url, responderCaPem: pki.foreign.certPem }));
    assertOutcome(stillDelegated, 'good', /delegated responder/);
  });

  test('responderCaPem: a responder certificate chaining to it through an intermediate the response includes', async () => {
    const sub = await pki.ca({ name: 'foreign-sub', cn: 'Foreign Validation CA', issuer: 'foreign' });
    const va = await pki.client({ cn: 'Foreign VA Responder', issuer: sub, email: null, upn: null, keyUsage: 'critical,digitalSignature', extendedKeyUsage: 'OCSPSigning' });
    const [withSub, withoutSub] = await Promise.all([
      startOcspResponder({ ca: pki.intermediate, signer: va, entries: [{ serial: good.serial }], otherCertsPath: sub.certPath }),
      startOcspResponder({ ca: pki.intermediate, signer: va, entries: [{ serial: good.serial }] }),
    ]);
    responders.push(withSub, withoutSub);
    const s = (url: string) => settings({ responderUrl: url, responderCaPem: pki.foreign.certPem });
    assertOutcome(await checkerWithout().check(good.x509, pki.intermediate.x509, s(withSub.url)), 'good', /trusted responder .*Foreign VA Responder/);
    assertOutcome(await checkerWithout().check(good.x509, pki.intermediate.x509, s(withoutSub.url)), 'unavailable', /neither issued by the certificate's issuer nor valid under responderCaPem/);
  });

  test('ResponderID by key and no certificates in the response: the signer must be known (pinned in responderCaPem)', async () => {
    const checker = () => checkerWithout();
    const unknownSigner = await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: keyIdNoCerts.url }));
    assertOutcome(unknownSigner, 'unavailable', /neither the issuer nor a certificate the response includes/);
    const pinned = await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: keyIdNoCerts.url, responderCaPem: delegated.certPem }));
    assertOutcome(pinned, 'good', /trusted responder .*Delegated OCSP Responder/);
  });

  test("responderUrl null: the certificate's AIA OCSP URL, and none without it", async () => {
    assert.equal(ocspUrlOf(withAia.x509), byIssuer.url);
    const before = byIssuer.requests();
    assertOutcome(await checker().check(withAia.x509, pki.intermediate.x509, settings({ responderUrl: null })), 'good', /via http:\/\/127\.0\.0\.1/);
    assert.equal(byIssuer.requests(), before + 1);
    const none = await checker().check(noAia.x509, pki.intermediate.x509, settings({ responderUrl: null }));
    assertOutcome(none, 'unavailable', /responderUrl is null and the certificate names no http: OCSP URL/);
    const ftp = await leaf('FTP.AIA.LEAF', 'ftp://ocsp.example.mil/');
    assertOutcome(await checker().check(ftp.x509, pki.intermediate.x509, settings({ responderUrl: null })), 'unavailable', /no http: OCSP URL/);
  });

  test('sendNonce: openssl echoes it and the answer counts; a replayed answer without it does not', async () => {
    const checker = () => checkerWithout();
    assertOutcome(await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: byIssuer.url, sendNonce: true })), 'good');
    // Capture a real answer (no nonce), then serve it again as a replaying responder would.
    const captured = await postOcspRequest(byIssuer.url, buildOcspRequest(good.x509, pki.intermediate.x509, false).der, Date.now() + 5000);
    const replay = await startFaultyResponder('replay', captured);
    responders.push(replay);
    assertOutcome(await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: replay.url, sendNonce: true })), 'unavailable', /does not echo the nonce/);
    assertOutcome(await checker().check(good.x509, pki.intermediate.x509, settings({ responderUrl: replay.url, sendNonce: false })), 'good');
  });

  test('a responder that hangs, answers garbage, too much or HTTP 500 is unavailable, within timeoutMs', async () => {
    const [hang, garbage, huge, status] = await Promise.all((['hang', 'garbage', 'huge', 'status'] as const).map((k) => startFaultyResponder(k)));
    responders.push(hang, garbage, huge, status);
    const { observer, counts } = counting();
    const c = checker({ observer, redis: null });
    const t0 = Date.now();
    assertOutcome(await c.check(good.x509, pki.intermediate.x509, settings({ responderUrl: hang.url, timeoutMs: 300 })), 'unavailable', /OCSP unavailable: no OCSP answer within 300 ms$/);
    const waited = Date.now() - t0;
    assert.ok(waited < 300 + 2000, `a hanging responder held the check ${waited} ms`);
    assert.equal(hang.requests(), 1);
    assertOutcome(await c.check(good.x509, pki.intermediate.x509, settings({ responderUrl: garbage.url })), 'unavailable', /not a well-formed OCSP response/);
    assertOutcome(await c.check(good.x509, pki.intermediate.x509, settings({ responderUrl: huge.url })), 'unavailable', /more than 65536 bytes/);
    assertOutcome(await c.check(good.x509, pki.intermediate.x509, settings({ responderUrl: status.url })), 'unavailable', /answered HTTP 500/);
    const closed = `http://127.0.0.1:${new URL(hang.url).port}/`;
    await hang.stop();
    assertOutcome(await c.check(good.x509, pki.intermediate.x509, settings({ responderUrl: closed })), 'unavailable', /ECONNREFUSED/);
    assert.deepEqual(counts.requests, { timeout: 1, invalid: 1, 'too-large': 1, http: 1, network: 1 });
    assert.equal(counts.outcomes.unavailable, 5);
  });

  test('the cache is shared through Redis: a second worker answers with the responder down', async () => {
    const fresh = await leaf('SHARED.CACHE.LEAF');
    const own = await startOcspResponder({ ca: pki.intermediate, entries: [{ serial: fresh.serial }] });
    responders.push(own);
    const first = counting();
    const second = counting();
    const w1 = checker({ observer: first.observer });
    const w2 = checker({ observer: second.observer });
    const s = settings({ responderUrl: own.url });
    assertOutcome(await w1.check(fresh.x509, pki.intermediate.x509, s), 'good');
    assert.equal(own.requests(), 1);
    await own.down();
    const r = await w2.check(fresh.x509, pki.intermediate.x509, s);
    assertOutcome(r, 'good', /cached \(redis\)/);
    assert.equal(r.outcome === 'good' && r.from, 'redis');
    assertOutcome(await w2.check(fresh.x509, pki.intermediate.x509, s), 'good', /cached \(memory\)/);
    assert.deepEqual(second.counts.hits, { redis: 1, memory: 1 });
    assert.deepEqual(second.counts.requests, {});
    // Without the cache the responder being down shows.
    const w3 = checker({ redis: null });
    assertOutcome(await w3.check(fresh.x509, pki.intermediate.x509, s), 'unavailable', /socket hang up|ECONNREFUSED/);
    await own.up();
  });

  test('concurrent checks of one certificate make one responder request, in one process and across two', async () => {
    const [a, b] = await Promise.all([leaf('CONCURRENT.A'), leaf('CONCURRENT.B')]);
    const own = await startOcspResponder({ ca: pki.intermediate, entries: [{ serial: a.serial }, { serial: b.serial }] });
    responders.push(own);
    const s = settings({ responderUrl: own.url });
    const w1 = checker();
    const sameProcess = await Promise.all(Array.from({ length: 20 }, () => w1.check(a.x509, pki.intermediate.x509, s)));
    assert.ok(sameProcess.every((r) => r.outcome === 'good'), sameProcess.map(describeOcsp).join('; '));
    assert.equal(own.requests(), 1);
    const w2 = checker();
    const w3 = checker();
    const twoProcesses = await Promise.all([...Array.from({ length: 5 }, () => w2.check(b.x509, pki.intermediate.x509, s)), ...Array.from({ length: 5 }, () => w3.check(b.x509, pki.intermediate.x509, s))]);
    assert.ok(twoProcesses.every((r) => r.outcome === 'good'), twoProcesses.map(describeOcsp).join('; '));
    assert.equal(own.requests(), 2);
  });

  test('a lower maxCacheSeconds applies at once to answers already cached (memory and Redis)', async () => {
    const fresh = await leaf('LOWERED.CACHE.LEAF');
    const own = await startOcspResponder({ ca: pki.intermediate, entries: [{ serial: fresh.serial }] });
    responders.push(own);
    const w1 = checker();
    assertOutcome(await w1.check(fresh.x509, pki.intermediate.x509, settings({ responderUrl: own.url })), 'good');
    assertOutcome(await w1.check(fresh.x509, pki.intermediate.x509, settings({ responderUrl: own.url })), 'good', /cached \(memory\)/);
    assert.equal(own.requests(), 1);
    assertOutcome(await w1.check(fresh.x509, pki.intermediate.x509, settings({ responderUrl: own.url, maxCacheSeconds: 0 })), 'good', /answered by the issuer via [^,]*$/);
    assertOutcome(await checker().check(fresh.x509, pki.intermediate.x509, settings({ responderUrl: own.url, maxCacheSeconds: 0 })), 'good', /answered by the issuer via [^,]*$/);
    assert.equal(own.requests(), 3, 'neither the memory nor the Redis copy served');
  });

  test('the Redis entry lives until nextUpdate, at most maxCacheSeconds after thisUpdate; a revoked one until nextUpdate', async () => {
    const r = newRedis();
    const c = checker({ redis: r });
    const s = settings({ responderUrl: byIssuer.url, maxCacheSeconds: 120 });
    const [g, v] = await Promise.all([leaf('TTL.GOOD'), leaf('TTL.REVOKED')]);
    await byIssuer.setEntries([{ serial: g.serial }, { serial: v.serial, revoked: { reason: 'superseded' } }]);
    assertOutcome(await c.check(g.x509, pki.intermediate.x509, s), 'good');
    assertOutcome(await c.check(v.x509, pki.intermediate.x509, s), 'revoked', /superseded/);
    const issuerKeyHash = createHash('sha1').update(Buffer.from(AsnConvert.parse(pki.intermediate.x509.publicKey.export({ type: 'spki', format: 'der' }), SubjectPublicKeyInfo).subjectPublicKey)).digest('hex').toUpperCase();
    const goodKey = keys.ocspAnswer(issuerKeyHash, g.serial);
    const revokedKey = keys.ocspAnswer(issuerKeyHash, v.serial);
    const goodTtl = await r.pttl(goodKey);
    const revokedTtl = await r.pttl(revokedKey);
    assert.ok(goodTtl > 0 && goodTtl <= 120_000, `good: ${goodTtl} ms (responder nextUpdate in 60 min, cap 120 s)`);
    assert.ok(revokedTtl > 50 * 60_000 && revokedTtl <= 60 * 60_000, `revoked: ${revokedTtl} ms (until nextUpdate)`);
    assert.equal(await r.exists(`${goodKey}:lock`), 0, 'the lock is gone once the answer is stored');
  });

  test('the verdict: time window with 5 minutes of skew, CertID, response status', async () => {
    const der = await postOcspRequest(byIssuer.url, buildOcspRequest(good.x509, pki.intermediate.x509, false).der, Date.now() + 5000);
    const ctx = { leaf: good.x509, issuer: pki.intermediate.x509, responderCas: [], nonce: null };
    const ok = judgeOcspResponse(der, { ...ctx, now: new Date() });
    assert.ok(ok.ok, JSON.stringify(ok));
    const { thisUpdate, nextUpdate } = ok.answer;
    assert.ok(nextUpdate && nextUpdate.getTime() - thisUpdate.getTime() === 60 * 60_000);
    const at = (ms: number) => judgeOcspResponse(der, { ...ctx, now: new Date(ms) });
    assert.ok(at(thisUpdate.getTime() - THIS_UPDATE_SKEW_MS + 1000).ok, 'thisUpdate 4 min 59 s ahead: within the skew');
    assert.match(JSON.stringify(at(thisUpdate.getTime() - THIS_UPDATE_SKEW_MS - 1000)), /thisUpdate .* is in the future/);
    assert.ok(at(nextUpdate.getTime() - 1000).ok);
    assert.match(JSON.stringify(at(nextUpdate.getTime() + 1000)), /expired at its nextUpdate/);
    assert.match(JSON.stringify(judgeOcspResponse(der, { ...ctx, leaf: revoked.x509, now: new Date() })), /no matching CertID/);
    assert.match(JSON.stringify(judgeOcspResponse(der, { ...ctx, issuer: pki.root.x509, now: new Date() })), /no matching CertID/);
    const tryLater = Buffer.from(AsnConvert.serialize(new OCSPResponse({ responseStatus: OCSPResponseStatus.tryLater })));
    assert.match(JSON.stringify(judgeOcspResponse(tryLater, { ...ctx, now: new Date() })), /responder answered tryLater/);
    const basic = AsnConvert.parse(AsnConvert.parse(der, OCSPResponse).responseBytes!.response, BasicOCSPResponse);
    const at0 = der.indexOf(Buffer.from(basic.signature));
    assert.ok(at0 > 0);
    const flipped = Buffer.from(der);
    flipped[at0 + 10] ^= 0x01;
    assert.match(JSON.stringify(judgeOcspResponse(flipped, { ...ctx, now: new Date() })), /signature does not verify/);
  });

  test('cacheUntil: nextUpdate, capped by maxCacheSeconds after thisUpdate; revoked until nextUpdate unless on hold', () => {
    const t = Date.parse('2026-12-01T12:00:00Z');
    const now = new Date(t + 1000);
    const h = (n: number) => new Date(t + n * 3600_000);
    const cases: Array<[string, Parameters<typeof cacheUntil>[0], number, number | null]> = [
      ['good, nextUpdate before the cap', { status: 'good', thisUpdate: h(0), nextUpdate: h(0.5), reason: null }, 3600, h(0.5).getTime()],
      ['good, nextUpdate after the cap', { status: 'good', thisUpdate: h(0), nextUpdate: h(24), reason: null }, 3600, h(1).getTime()],
      ['good, no nextUpdate', { status: 'good', thisUpdate: h(0), nextUpdate: null, reason: null }, 600, t + 600_000],
      ['unknown like good', { status: 'unknown', thisUpdate: h(0), nextUpdate: h(24), reason: null }, 3600, h(1).getTime()],
      ['revoked until nextUpdate', { status: 'revoked', thisUpdate: h(0), nextUpdate: h(24), reason: 'keyCompromise' }, 3600, h(24).getTime()],
      ['revoked, no nextUpdate: the cap', { status: 'revoked', thisUpdate: h(0), nextUpdate: null, reason: null }, 3600, h(1).getTime()],
      ['certificateHold like good', { status: 'revoked', thisUpdate: h(0), nextUpdate: h(24), reason: 'certificateHold' }, 3600, h(1).getTime()],
      ['maxCacheSeconds 0: not cached', { status: 'good', thisUpdate: h(0), nextUpdate: h(24), reason: null }, 0, null],
      ['already past', { status: 'good', thisUpdate: h(-2), nextUpdate: h(24), reason: null }, 3600, null],
    ];
    for (const [title, answer, max, expected] of cases) assert.equal(cacheUntil(answer, max, now), expected, title);
  });
});
