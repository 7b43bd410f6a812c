// SPEC §2.6b end to end: OCSP settings written through the API are enforced by running workers
// against a real responder (openssl ocsp in its own network namespace): client certificates of
// SMTP sessions (inboundSmtpTls: good, revoked only in OCSP, revoked only in the CRL, unknown,
// unavailable under each onUnavailable, the AIA URL, the cache shared by two workers), the next
// hop's certificate (outboundSmtpTls) and the API's mutual-TLS clients (webInterface), with the
// OCSP counters in the metrics of both processes. Clients: swaks and Python's smtplib.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { peopleLdif } from './helpers/people.ts';
import { spawnNode, startSystem, TOKEN, type System } from './helpers/system.ts';
import { startSink, type Sink } from './helpers/smtp-sink.ts';
import { smtplib, swaks } from './helpers/smtp-clients.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startFaultyResponder, type FaultyResponder } from './helpers/ocsp-responder.ts';
import { freePort, waitForPort } from './helpers/ports.ts';
import { startOcspResponder, type OcspResponder } from './helpers/ocsp-responder.ts';
import type { Issued } from './helpers/pki.ts';
import { cacAuthProfile, cardHolder, ldapProfile, listener, people } from './fixtures/deployments.ts';
import { DEFAULT_OCSP_SETTINGS, type OcspSettings } from '../shared/config/schemas.ts';

let sys: System;
let crlDir: string;
let hanging: FaultyResponder;
let port: number;
let responder: OcspResponder;
let responderCert: Issued;
let tlsSink: Sink;
const certs: Record<string, Issued> = {};
const relayed = { name: 'RELAYED', action: 'relay', tls: 'required', verifyClientCertificate: true, requireSmtpAuth: true, smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10 };

const session = (cert: Issued, p = port) =>
  swaks(['--server', `127.0.0.1:${p}`, '--tls', '--tls-cert', cert.certPath, '--tls-key', cert.keyPath, '--from', 'a@example.com', '--to', 'b@example.com']);
const relayedOk = (r: Awaited<ReturnType<typeof swaks>>) => r.replies.some((x) => x.code === 250 && x.text.includes('relayed'));

async function putOcsp(o: Partial<OcspSettings>): Promise<void> {
  await sys.api.ok('PUT', '/v1/ocsp-settings', { ...DEFAULT_OCSP_SETTINGS, responderUrl: responder.url, ...o });
  await sys.settled();
}

async function metric(url: string, name: string, labels: string): Promise<number> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${TOKEN}` } });
  const text = await res.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** Card holders of the inbound tests, each asked about once (answers are cached per certificate). */
const HOLDERS = ['good', 'ocspRevoked', 'crlRevoked', 'unknown', 'unknownRejected', 'acceptAndLog', 'rejected', 'useCrl', 'shared', 'noAia'] as const;

/** Every entry the responder knows: the good ones, and ocspRevoked revoked. */
function knownEntries(extra: Array<{ serial: string; revoked?: { reason?: string } }> = []) {
  const good = ['good', 'crlRevoked', 'acceptAndLog', 'rejected', 'useCrl', 'shared', 'aia', 'noAia'].map((h) => ({ serial: certs[h]!.serial }));
  return [...good, { serial: certs.ocspRevoked!.serial, revoked: { reason: 'keyCompromise' } }, { serial: certs.jdoe!.serial }, { serial: certs.hop!.serial }, ...extra];
}

/** The STARTTLS event of `worker` since `since`, polled for: workers write events in the background. */
async function startTlsEvent(since: string, worker = 0) {
  type E = { command: string; reason: string; detail: string | null; outcome: string; worker: string };
  const mine = (e: E) => e.command === 'STARTTLS' && e.worker === `test-worker-${sys.workers[worker]!.offset}`;
  const items = await sys.events<E>(`since=${encodeURIComponent(since)}&limit=50`, (list) => list.some(mine));
  return items.find(mine);
}

before(async () => {
  crlDir = await mkdtemp(path.join(os.tmpdir(), 'certgate-ocsp-crl-'));
  sys = await startSystem({ workers: 2, apiEnv: { SCHEDULER: 'on', CRL_FILE_ROOT: crlDir } });
  const pki = sys.pki;
  [certs.jdoe, certs.hop, responderCert] = await Promise.all([
    pki.client({ cn: 'LAST.FIRST.1234567890' }),
    pki.server({ cn: 'localhost', ip: ['127.0.0.1'], dns: ['localhost'] }),
    pki.client({ cn: 'Root OCSP Responder', email: null, upn: null, extendedKeyUsage: 'OCSPSigning' }),
  ]);
  const issued = await Promise.all(HOLDERS.map((h, i) => pki.client({ cn: `HOLDER.${h.toUpperCase()}.${1_000_000_000 + i}` })));
  HOLDERS.forEach((h, i) => (certs[h] = issued[i]!));
  hanging = await startFaultyResponder('hang');
  responder = await startOcspResponder({ ca: pki.root, signer: responderCert, entries: [] });
  // A holder whose certificate names the responder in its Authority Information Access.
  certs.aia = await pki.client({ cn: 'HOLDER.AIA.2000000000', ocspUrl: responder.url });
  await responder.setEntries(knownEntries());
  const holders = [...HOLDERS, 'aia'];
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', certs.jdoe), ...holders.map((h) => cardHolder(h.toLowerCase(), certs[h]!))]));
  // The root's CRL revokes crlRevoked only.
  await writeFile(path.join(crlDir, 'root.crl'), await pki.crl('root', [{ serial: certs.crlRevoked!.serial }], { crlNumber: 1, format: 'der' }));
  const server = await pki.server({ cn: 'gateway.example.com' });
  port = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: false }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', cacAuthProfile({ fallback: false }));
  await sys.api.ok('POST', '/v1/mail-flow-policies', relayed);
  await sys.api.ok('POST', '/v1/listeners', listener(sys, {
    port, authProfile: 'cac-auth', tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: pki.root.certPem },
  }));
  // After the listener: its clientCaPem is the CA the CRL's signature is checked against.
  await sys.api.ok('POST', '/v1/crl-sources', { name: 'root-crl', fileType: 'asn1', primaryUrl: `file://${crlDir}/root.crl`, secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true });
  for (let i = 0; i < 100; i++) {
    const { status } = await sys.api.ok<{ status: { lastSuccessAt: string | null } }>('GET', '/v1/crl-sources/root-crl');
    if (status.lastSuccessAt) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  await sys.settled();
  // Every worker enforces the CRL before the tests begin (they load it within seconds).
  for (const w of sys.workers) {
    const deadline = Date.now() + 10_000;
    let r = await session(certs.crlRevoked!, port + w.offset);
    while (!r.replies.some((x) => x.code === 554) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      r = await session(certs.crlRevoked!, port + w.offset);
    }
    assert.ok(r.replies.some((x) => x.code === 554), r.transcript);
  }
});

after(async () => {
  await tlsSink?.stop();
  await hanging?.stop();
  await responder?.stop();
  await sys?.stop();
  if (crlDir) await rm(crlDir, { recursive: true, force: true });
});

describe('OCSP for client certificates of SMTP sessions (inboundSmtpTls)', () => {
  const w0 = () => port + sys.workers[0]!.offset;

  test('good: relayed, and the event says OCSP answered, by the delegated responder', async () => {
    await putOcsp({ inboundSmtpTls: true });
    const since = new Date().toISOString();
    const r = await session(certs.good!, w0());
    assert.ok(relayedOk(r), r.transcript);
    assert.match((await startTlsEvent(since))?.detail ?? '', /^OCSP: good, answered by delegated responder .*Root OCSP Responder/);
  });

  test('revoked only in OCSP: 554 5.7.1, reason revoked, the event detail says OCSP', async () => {
    const since = new Date().toISOString();
    const r = await session(certs.ocspRevoked!, w0());
    assert.ok(r.replies.some((x) => x.code === 554 && /^5\.7\.1 Client certificate revoked/.test(x.text)), r.transcript);
    assert.ok(!relayedOk(r));
    const e = await startTlsEvent(since);
    assert.equal(e?.reason, 'revoked');
    assert.match(e?.detail ?? '', /^OCSP: revoked at .* \(keyCompromise\)/);
  });

  test('revoked only in the CRL, OCSP good: relayed (the CRL is not consulted for the leaf)', async () => {
    const since = new Date().toISOString();
    const r = await session(certs.crlRevoked!, w0());
    assert.ok(relayedOk(r), r.transcript);
    assert.match((await startTlsEvent(since))?.detail ?? '', /^OCSP: good/);
  });

  test('unknown to the responder: use-crl applies the CRL; reject refuses with revocation-unavailable', async () => {
    let since = new Date().toISOString();
    const used = await session(certs.unknown!, w0());
    assert.ok(relayedOk(used), used.transcript);
    assert.match((await startTlsEvent(since))?.detail ?? '', /OCSP: the responder does not know the certificate.*; by CRL: revocation-checked: not revoked/);
    await putOcsp({ inboundSmtpTls: true, onUnavailable: 'reject' });
    since = new Date().toISOString();
    const refused = await session(certs.unknownRejected!, w0());
    assert.ok(refused.replies.some((x) => x.code === 554 && x.text === '5.7.1 Revocation status of the client certificate is unavailable'), refused.transcript);
    const e = await startTlsEvent(since);
    assert.equal(e?.reason, 'revocation-unavailable');
    assert.match(e?.detail ?? '', /refused \(onUnavailable: reject\)/);
  });

  test('a responder that hangs: the session goes on after timeoutMs; reject, accept-and-log, use-crl', async () => {
    const slow = { inboundSmtpTls: true, responderUrl: hanging.url, timeoutMs: 500 };
    await putOcsp({ ...slow, onUnavailable: 'reject' });
    let since = new Date().toISOString();
    const refused = await session(certs.rejected!, w0());
    assert.ok(refused.replies.some((x) => x.code === 554 && /unavailable/.test(x.text)), refused.transcript);
    assert.match((await startTlsEvent(since))?.detail ?? '', /OCSP unavailable: .*500 ms/);

    await putOcsp({ ...slow, onUnavailable: 'accept-and-log' });
    since = new Date().toISOString();
    const accepted = await session(certs.acceptAndLog!, w0());
    assert.ok(relayedOk(accepted), accepted.transcript);
    const e = await startTlsEvent(since);
    assert.equal(e?.outcome, 'accepted');
    assert.match(e?.detail ?? '', /accepted without a revocation check \(onUnavailable: accept-and-log\)/);

    await putOcsp({ ...slow, onUnavailable: 'use-crl' });
    since = new Date().toISOString();
    const byCrl = await session(certs.useCrl!, w0());
    assert.ok(relayedOk(byCrl), byCrl.transcript);
    assert.match((await startTlsEvent(since))?.detail ?? '', /OCSP unavailable: .*; by CRL: revocation-checked: not revoked/);
    const revokedByCrl = await session(certs.crlRevoked!, w0());
    assert.ok(relayedOk(revokedByCrl), 'crlRevoked: the good answer cached earlier still serves');
    assert.ok(hanging.requests() >= 3);
    await putOcsp({ inboundSmtpTls: true });
  });

  test("responderUrl null: the certificate's AIA OCSP URL (Python smtplib as the client)", async () => {
    await putOcsp({ inboundSmtpTls: true, responderUrl: null });
    const before = responder.requests();
    const since = new Date().toISOString();
    const steps = await smtplib({ port: w0(), starttls: true, cert: certs.aia!.certPath, key: certs.aia!.keyPath, send: true, from: 'a@example.com', to: ['b@example.com'] });
    assert.ok(steps.some(([step, code]) => step === 'DATA' && code === 250), JSON.stringify(steps));
    assert.equal(responder.requests(), before + 1);
    assert.match((await startTlsEvent(since))?.detail ?? '', new RegExp(`^OCSP: good, .*via ${responder.url.replace(/[./]/g, '\\$&')}`));
    const none = await session(certs.noAia!, w0());
    assert.ok(relayedOk(none), `no AIA URL, use-crl: ${none.transcript}`);
    await putOcsp({ inboundSmtpTls: true });
  });

  test('two workers: one responder request for a certificate; the second worker answers from Redis with the responder down', async () => {
    const before = responder.requests();
    const first = await session(certs.shared!, w0());
    assert.ok(relayedOk(first), first.transcript);
    assert.equal(responder.requests(), before + 1);
    await responder.down();
    try {
      const since = new Date().toISOString();
      const second = await session(certs.shared!, port + sys.workers[1]!.offset);
      assert.ok(relayedOk(second), second.transcript);
      assert.match((await startTlsEvent(since, 1))?.detail ?? '', /^OCSP: good, .*cached \(redis\)/);
      const metrics = `http://127.0.0.1:${sys.workers[1]!.metricsPort}/metrics`;
      assert.ok((await metric(metrics, 'certgate_ocsp_cache_hits_total', 'cache="redis"')) >= 1);
      assert.ok((await metric(metrics, 'certgate_ocsp_results_total', 'outcome="good"')) >= 1);
    } finally {
      await responder.up();
    }
  });
});

describe('OCSP for the next hop and the API', () => {
  test('outboundSmtpTls: a next hop whose certificate OCSP revokes is not used (451 4.4.1, nothing delivered)', async () => {
    tlsSink = await startSink({ tls: { key: certs.hop!.keyPem, cert: certs.hop!.certPem } });
    const current = await sys.api.ok<Record<string, unknown>>('GET', '/v1/listeners/submission');
    await sys.api.ok('PUT', '/v1/listeners/submission', { ...current, nextHop: { host: '127.0.0.1', port: tlsSink.port, tls: 'required', caPem: sys.pki.root.certPem } });
    // maxCacheSeconds 0: no "good" is kept, so every new next-hop connection asks the responder.
    await putOcsp({ outboundSmtpTls: true, maxCacheSeconds: 0 });
    const worker = sys.workers[0]!;
    const good = await session(certs.jdoe!, port + worker.offset);
    assert.ok(relayedOk(good), good.transcript);
    assert.equal(tlsSink.messages.length, 1);
    assert.ok(tlsSink.messages.every((m) => m.secure));

    await responder.setEntries(knownEntries().map((e) => (e.serial === certs.hop!.serial ? { serial: e.serial, revoked: { reason: 'keyCompromise' } } : e)));
    const refused = await session(certs.jdoe!, port + worker.offset);
    assert.ok(refused.replies.some((x) => x.code === 451 && /^4\.4\.1 next hop certificate revoked$/.test(x.text)), refused.transcript);
    assert.equal(tlsSink.messages.length, 1, 'nothing delivered');
    const metrics = `http://127.0.0.1:${worker.metricsPort}/metrics`;
    assert.ok((await metric(metrics, 'certgate_ocsp_results_total', 'outcome="revoked"')) >= 1);
    assert.ok((await metric(metrics, 'certgate_ocsp_requests_total', 'result="answered"')) >= 2);

    await responder.setEntries(knownEntries());
    await sys.api.ok('PUT', '/v1/listeners/submission', current);
    await putOcsp({});
  });

  test('webInterface: the API with mutual TLS refuses a client certificate OCSP revokes (403), counts it in /metrics', async () => {
    const [server, admin, revokedAdmin] = await Promise.all([
      sys.pki.server({ cn: 'api.example.com' }),
      sys.pki.client({ cn: 'ADMIN.GOOD.1010101010' }),
      sys.pki.client({ cn: 'ADMIN.REVOKED.2020202020' }),
    ]);
    await responder.setEntries(knownEntries([{ serial: admin.serial }, { serial: revokedAdmin.serial, revoked: {} }]));
    const apiPort = await freePort();
    const api = spawnNode('api/main.ts', {
      REDIS_URL: sys.redis.url, API_HOST: '127.0.0.1', API_PORT: String(apiPort), API_TOKEN: TOKEN, SCHEDULER: 'off', LOG_LEVEL: 'warn',
      API_TLS_CERT: server.certPath, API_TLS_KEY: server.keyPath, API_CLIENT_CA: sys.pki.root.certPath,
    });
    const get = (cert: Issued, path = '/v1/ocsp-settings') => new Promise<{ status: number; body: string }>((resolve, reject) => {
      https.get({ host: '127.0.0.1', port: apiPort, path, ca: sys.pki.root.certPem, cert: cert.certPem, key: cert.keyPem, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      }).on('error', reject);
    });
    try {
      await waitForPort(apiPort, 20_000);
      await putOcsp({ webInterface: true });
      // The API follows the configuration within a second (SPEC §1).
      const deadline = Date.now() + 3000;
      let refused = await get(revokedAdmin);
      while (refused.status !== 403 && Date.now() < deadline) refused = await get(revokedAdmin);
      assert.equal(refused.status, 403, refused.body);
      assert.match(refused.body, /client certificate revoked/);
      assert.equal((await get(admin)).status, 200);
      const metrics = await get(admin, '/metrics');
      assert.match(metrics.body, /certgate_ocsp_results_total\{outcome="revoked"\} [1-9]/);
      assert.match(metrics.body, /certgate_ocsp_results_total\{outcome="good"\} [1-9]/);
    } finally {
      await api.stop();
      await putOcsp({});
    }
  });
});
