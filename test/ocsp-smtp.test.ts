// SPEC §2.6b end to end: OCSP settings written through the API are enforced by running workers
// against a real responder (openssl ocsp in its own network namespace): the next hop's
// certificate (outboundSmtpTls) and the API's mutual-TLS clients (webInterface), with the
// OCSP counters in the metrics of both processes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { peopleLdif } from './helpers/people.ts';
import { spawnNode, startSystem, TOKEN, type System } from './helpers/system.ts';
import { startSink, type Sink } from './helpers/smtp-sink.ts';
import { swaks } from './helpers/smtp-clients.ts';
import { freePort, waitForPort } from './helpers/ports.ts';
import { startOcspResponder, type OcspResponder } from './helpers/ocsp-responder.ts';
import type { Issued } from './helpers/pki.ts';
import { cardHolder, ldapProfile, listener, people } from './fixtures/deployments.ts';
import { DEFAULT_CRL_SETTINGS, DEFAULT_OCSP_SETTINGS, type OcspSettings } from '../shared/config/schemas.ts';

let sys: System;
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

before(async () => {
  sys = await startSystem({ workers: 2 });
  const pki = sys.pki;
  [certs.jdoe, certs.hop, responderCert] = await Promise.all([
    pki.client({ cn: 'LAST.FIRST.1234567890' }),
    pki.server({ cn: 'localhost', ip: ['127.0.0.1'], dns: ['localhost'] }),
    pki.client({ cn: 'Root OCSP Responder', email: null, upn: null, extendedKeyUsage: 'OCSPSigning' }),
  ]);
  responder = await startOcspResponder({ ca: pki.root, signer: responderCert, entries: [{ serial: certs.jdoe.serial }, { serial: certs.hop.serial }] });
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', certs.jdoe)]));
  const server = await pki.server({ cn: 'gateway.example.com' });
  port = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: false }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name: 'cac-auth', type: 'certificate', ldapProfile: 'corp', allowSmtpAuthWithoutCertificate: false, fallbackProfile: null });
  await sys.api.ok('POST', '/v1/mail-flow-policies', relayed);
  await sys.api.ok('POST', '/v1/listeners', listener(sys, {
    port, authProfile: 'cac-auth', tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: pki.root.certPem },
  }));
  await sys.settled();
});

after(async () => {
  await tlsSink?.stop();
  await responder?.stop();
  await sys?.stop();
});

describe('OCSP enforced by running workers', () => {
  test('outboundSmtpTls: a next hop whose certificate OCSP revokes is not used (451 4.4.1, nothing delivered)', async () => {
    tlsSink = await startSink({ tls: { key: certs.hop!.keyPem, cert: certs.hop!.certPem } });
    const current = await sys.api.ok<Record<string, unknown>>('GET', '/v1/listeners/submission');
    await sys.api.ok('PUT', '/v1/listeners/submission', { ...current, nextHop: { host: '127.0.0.1', port: tlsSink.port, tls: 'required', caPem: sys.pki.root.certPem } });
    await sys.api.ok('PUT', '/v1/crl-settings', { ...DEFAULT_CRL_SETTINGS, inboundSmtpTls: false });
    // maxCacheSeconds 0: no "good" is kept, so every new next-hop connection asks the responder.
    await putOcsp({ outboundSmtpTls: true, maxCacheSeconds: 0 });
    const worker = sys.workers[0]!;
    const good = await session(certs.jdoe!, port + worker.offset);
    assert.ok(relayedOk(good), good.transcript);
    assert.equal(tlsSink.messages.length, 1);
    assert.ok(tlsSink.messages.every((m) => m.secure));

    await responder.setEntries([{ serial: certs.jdoe!.serial }, { serial: certs.hop!.serial, revoked: { reason: 'keyCompromise' } }]);
    const refused = await session(certs.jdoe!, port + worker.offset);
    assert.ok(refused.replies.some((x) => x.code === 451 && /^4\.4\.1 next hop certificate revoked$/.test(x.text)), refused.transcript);
    assert.equal(tlsSink.messages.length, 1, 'nothing delivered');
    const metrics = `http://127.0.0.1:${worker.metricsPort}/metrics`;
    assert.ok((await metric(metrics, 'certgate_ocsp_results_total', 'outcome="revoked"')) >= 1);
    assert.ok((await metric(metrics, 'certgate_ocsp_requests_total', 'result="answered"')) >= 2);

    await responder.setEntries([{ serial: certs.jdoe!.serial }, { serial: certs.hop!.serial }]);
    await sys.api.ok('PUT', '/v1/listeners/submission', current);
    await sys.api.ok('PUT', '/v1/crl-settings', DEFAULT_CRL_SETTINGS);
    await putOcsp({});
  });

  test('webInterface: the API with mutual TLS refuses a client certificate OCSP revokes (403), counts it in /metrics', async () => {
    const [server, admin, revokedAdmin] = await Promise.all([
      sys.pki.server({ cn: 'api.example.com' }),
      sys.pki.client({ cn: 'ADMIN.GOOD.1010101010' }),
      sys.pki.client({ cn: 'ADMIN.REVOKED.2020202020' }),
    ]);
    await responder.setEntries([{ serial: certs.jdoe!.serial }, { serial: certs.hop!.serial }, { serial: admin.serial }, { serial: revokedAdmin.serial, revoked: {} }]);
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
