// SPEC §2.6 end to end: CRL sources refreshed through the API are enforced by every running
// worker soon after the refresh, inbound (client certificates) and outbound (the next hop).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { peopleLdif } from './helpers/people.ts';
import https from 'node:https';
import { spawnNode, startSystem, TOKEN, type System } from './helpers/system.ts';
import { startSink, type Sink } from './helpers/smtp-sink.ts';
import { smtplib, swaks } from './helpers/smtp-clients.ts';
import { freePort, waitForPort } from './helpers/ports.ts';
import { eventually } from './helpers/wait.ts';
import type { Issued } from './helpers/pki.ts';
import { cacAuthProfile, cardHolder, ldapProfile, listener, people } from './fixtures/deployments.ts';

let sys: System;
let crlDir: string;
let port: number;
let crlNumber = 0;
let tlsSink: Sink;
const certs: Record<string, Issued> = {};
const day = 86_400_000;
const relayed = { name: 'RELAYED', action: 'relay', tls: 'required', verifyClientCertificate: true, requireSmtpAuth: true, smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10 };
const settings = { inboundSmtpTls: true, outboundSmtpTls: false, webInterface: false, trustedCaPem: null, onExpiredCrl: 'reject' };

/** Publishes a new root CRL at the source's file URL and refreshes the source through the API. */
async function publishRootCrl(revoked: string[], o: { nextUpdate?: Date; thisUpdate?: Date } = {}) {
  crlNumber += 1;
  const der = await sys.pki.crl('root', revoked.map((serial) => ({ serial })), { crlNumber, format: 'der', ...o });
  await writeFile(path.join(crlDir, 'root.crl'), der);
  const status = await sys.api.ok<{ lastError: string | null; crlNumber: string | null; revokedCount: number }>('POST', '/v1/crl-sources/root-crl/refresh');
  assert.equal(status.lastError, null, JSON.stringify(status));
  assert.equal(status.crlNumber, String(crlNumber));
  return status;
}

/** Polls until every worker gives `expected` for a session of `cert` (a generous deadline: the machine may be busy; bench/crl measures the delay). */
async function expectEverywhere(cert: Issued, expected: 'relayed' | 'refused', within = 20_000) {
  const deadline = Date.now() + within;
  for (;;) {
    const results = await Promise.all(sys.workers.map((w) => session(cert, port + w.offset)));
    const ok = results.every((r) => (expected === 'relayed' ? relayedOk(r) : r.replies.some((x) => x.code === 554)));
    if (ok) return results;
    if (Date.now() > deadline) assert.fail(`not ${expected} by every worker within ${within} ms:\n${results.map((r) => r.transcript).join('\n---\n')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const session = (cert: Issued, p: number) =>
  swaks(['--server', `127.0.0.1:${p}`, '--tls', '--tls-cert', cert.certPath, '--tls-key', cert.keyPath, '--from', 'a@example.com', '--to', 'b@example.com']);
const relayedOk = (r: Awaited<ReturnType<typeof swaks>>) => r.replies.some((x) => x.code === 250 && x.text.includes('relayed'));

async function lastStartTlsEvent(since: string) {
  const items = await sys.events<{ command: string; reason: string; detail: string | null; outcome: string }>(
    `since=${encodeURIComponent(since)}&limit=50`, (es) => es.some((e) => e.command === 'STARTTLS'),
  );
  return items.find((e) => e.command === 'STARTTLS');
}

before(async () => {
  crlDir = await mkdtemp(path.join(os.tmpdir(), 'certgate-crl-'));
  sys = await startSystem({ workers: 2, apiEnv: { SCHEDULER: 'on', CRL_FILE_ROOT: crlDir } });
  certs.jdoe = await sys.pki.client({ cn: 'LAST.FIRST.1234567890' });
  certs.ivan = await sys.pki.client({ cn: 'INTER.MEDIATE.5555555555', issuer: 'intermediate' });
  certs.ines = await sys.pki.client({ cn: 'SENT.CHAIN.6666666666', issuer: 'intermediate' });
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', certs.jdoe), cardHolder('ivan', certs.ivan), cardHolder('ines', certs.ines)]));
  const server = await sys.pki.server({ cn: 'gateway.example.com' });
  port = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: false }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', cacAuthProfile({ fallback: false }));
  await sys.api.ok('POST', '/v1/mail-flow-policies', relayed);
  // Client certificates chain to the root; the intermediate is in the bundle, so its holders are accepted too.
  await sys.api.ok('POST', '/v1/listeners', listener(sys, {
    port, authProfile: 'cac-auth', tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: sys.pki.root.certPem + sys.pki.intermediate.certPem },
  }));
  await writeFile(path.join(crlDir, 'root.crl'), await sys.pki.crl('root', [], { crlNumber: ++crlNumber, format: 'der' }));
  await sys.api.ok('POST', '/v1/crl-sources', { name: 'root-crl', fileType: 'asn1', primaryUrl: `file://${crlDir}/root.crl`, secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true });
  // Saving an enabled source downloads it at once: wait for that first CRL.
  await eventually(async () => (await sys.api.ok<{ status: { lastSuccessAt: string | null } }>('GET', '/v1/crl-sources/root-crl')).status.lastSuccessAt, 30_000, 'the first CRL download');
  await sys.settled();
});

after(async () => {
  await tlsSink?.stop();
  await sys?.stop();
  await rm(crlDir, { recursive: true, force: true });
});

describe('CRLs enforced by running workers', () => {
  test('a card holder relays while not revoked, and the event says the certificate was revocation-checked', async () => {
    await publishRootCrl([]);
    // The workers load the refreshed CRL in the background: sessions before that are unchecked.
    const detail = await eventually(async () => {
      const since = new Date().toISOString();
      await expectEverywhere(certs.jdoe!, 'relayed');
      const d = (await lastStartTlsEvent(since))?.detail;
      return d === 'revocation-checked: not revoked' && d;
    }, 30_000, 'a session checked against the CRL');
    assert.equal(detail, 'revocation-checked: not revoked');
  });

  test('revoked by a refreshed CRL: refused by both workers, event reason revoked', async () => {
    const since = new Date().toISOString();
    const status = await publishRootCrl([certs.jdoe!.serial]);
    assert.equal(status.revokedCount, 1);
    const [r] = await expectEverywhere(certs.jdoe!, 'refused');
    assert.match(r!.replies.find((x) => x.code === 554)!.text, /^5\.7\.1 Client certificate revoked/);
    const items = await sys.events<{ reason: string }>(`outcome=rejected&since=${encodeURIComponent(since)}`, (es) => es.some((e) => e.reason === 'revoked'));
    assert.ok(items.some((e) => e.reason === 'revoked'));
  });

  test('an issuer that no CRL source covers is not revocation-checked, and the event says so', async () => {
    const since = new Date().toISOString();
    await expectEverywhere(certs.ivan!, 'relayed');
    assert.match((await lastStartTlsEvent(since))?.detail ?? '', /not revocation-checked/);
  });

  test('onExpiredCrl: reject refuses while the only CRL is past nextUpdate; accept-and-log accepts and says so', async () => {
    await publishRootCrl([], { thisUpdate: new Date(Date.now() - 3 * day), nextUpdate: new Date(Date.now() - day) });
    await expectEverywhere(certs.jdoe!, 'refused');
    await sys.api.ok('PUT', '/v1/crl-settings', { ...settings, onExpiredCrl: 'accept-and-log' });
    await sys.settled();
    const since = new Date().toISOString();
    await expectEverywhere(certs.jdoe!, 'relayed');
    assert.match((await lastStartTlsEvent(since))?.detail ?? '', /expired|nextUpdate/i);
    await sys.api.ok('PUT', '/v1/crl-settings', settings);
    await sys.settled();
  });

  test('inboundSmtpTls off: a revoked certificate is not checked', async () => {
    await publishRootCrl([certs.jdoe!.serial]);
    await expectEverywhere(certs.jdoe!, 'refused');
    await sys.api.ok('PUT', '/v1/crl-settings', { ...settings, inboundSmtpTls: false });
    await sys.settled();
    await expectEverywhere(certs.jdoe!, 'relayed');
    await sys.api.ok('PUT', '/v1/crl-settings', settings);
    await sys.settled();
    await publishRootCrl([]);
  });

  test('a revoked intermediate the client sends after an unrelated certificate is still checked (the chain follows issuance, not the order sent)', async () => {
    // A listener trusting the root only: the intermediate comes from the client, after a decoy.
    const rootOnly = await freePort();
    const server = await sys.pki.server({ cn: 'gateway.example.com' });
    await sys.api.ok('POST', '/v1/listeners', listener(sys, {
      name: 'root-only', port: rootOnly, authProfile: 'cac-auth', tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: sys.pki.root.certPem },
    }));
    const sentChain = path.join(crlDir, 'ines-sent-chain.pem');
    await writeFile(sentChain, certs.ines!.certPem + sys.pki.foreign.certPem + sys.pki.intermediate.certPem);
    await sys.settled();
    const send = () => smtplib({ port: rootOnly, starttls: true, cert: sentChain, key: certs.ines!.keyPath });
    const relayedBy = (steps: Awaited<ReturnType<typeof send>>) => steps.some(([step, code]) => step === 'DATA' && code === 250);
    try {
      await eventually(async () => relayedBy(await send()), 20_000, 'relayed while the intermediate is not revoked');
      await publishRootCrl([sys.pki.intermediate.serial]);
      const steps = await eventually(async () => {
        const s = await send();
        return !relayedBy(s) && s;
      }, 20_000, 'refused once the root CRL revokes the intermediate');
      assert.ok(steps.some(([, code, text]) => code === 554 && /revoked/.test(text)), JSON.stringify(steps));
    } finally {
      await sys.api.ok('DELETE', '/v1/listeners/root-only');
      await publishRootCrl([]);
      await sys.settled();
    }
  });

  test('outboundSmtpTls: a next hop presenting a revoked certificate is not used (451 4.4.1, nothing delivered)', async () => {
    const hopCert = await sys.pki.server({ cn: 'localhost', ip: ['127.0.0.1'], dns: ['localhost'] });
    tlsSink = await startSink({ tls: { key: hopCert.keyPem, cert: hopCert.certPem } });
    const current = await sys.api.ok<Record<string, unknown>>('GET', '/v1/listeners/submission');
    await sys.api.ok('PUT', '/v1/listeners/submission', { ...current, nextHop: { host: '127.0.0.1', port: tlsSink.port, tls: 'required', caPem: sys.pki.root.certPem } });
    await sys.api.ok('PUT', '/v1/crl-settings', { ...settings, outboundSmtpTls: true });
    await sys.settled();
    await expectEverywhere(certs.jdoe!, 'relayed');
    assert.ok(tlsSink.messages.length >= 2 && tlsSink.messages.every((m) => m.secure));
    await publishRootCrl([hopCert.serial]);
    // Soon every session is refused 451 and the message stays with the client.
    const deadline = Date.now() + 20_000;
    let delivered: number;
    let r: Awaited<ReturnType<typeof session>>;
    do {
      delivered = tlsSink.messages.length;
      r = await session(certs.jdoe!, port);
    } while (!r.replies.some((x) => x.code === 451) && Date.now() < deadline);
    assert.ok(r.replies.some((x) => x.code === 451 && /^4\.4\.1 .*revoked/.test(x.text)), r.transcript);
    assert.equal(tlsSink.messages.length, delivered);
    await sys.api.ok('PUT', '/v1/listeners/submission', current);
    await sys.api.ok('PUT', '/v1/crl-settings', settings);
    await sys.settled();
  });

  test('a worker started later loads the CRLs in force at start', async () => {
    await publishRootCrl([certs.jdoe!.serial]);
    const late = await sys.startWorker();
    const r = await session(certs.jdoe!, port + late.offset);
    assert.ok(r.replies.some((x) => x.code === 554), r.transcript);
    const { items } = await sys.api.ok<{ items: Array<{ id: string; crls: Array<{ source: string; revokedCount: number }> }> }>('GET', '/v1/workers');
    const mine = items.find((w) => w.id === `test-worker-${late.offset}`);
    assert.deepEqual(mine?.crls.map((c) => [c.source, c.revokedCount]), [['root-crl', 1]]);
  });

  test('webInterface: the API in mutual-TLS mode refuses a revoked client certificate (403), not a good one', async () => {
    const server = await sys.pki.server({ cn: 'localhost', ip: ['127.0.0.1'], dns: ['localhost'] });
    const good = await sys.pki.client({ cn: 'ADMIN.GOOD.1010101010' });
    await publishRootCrl([certs.jdoe!.serial]);
    const apiPort = await freePort();
    const api = spawnNode('api/main.ts', {
      REDIS_URL: sys.redis.url, API_HOST: '127.0.0.1', API_PORT: String(apiPort), API_TOKEN: TOKEN, SCHEDULER: 'off',
      API_TLS_CERT: server.certPath, API_TLS_KEY: server.keyPath, API_CLIENT_CA: sys.pki.root.certPath,
    });
    try {
      await waitForPort(apiPort, 20_000);
      const get = (cert: Issued) => new Promise<number>((resolve, reject) => {
        https.get({ host: '127.0.0.1', port: apiPort, path: '/v1/config', ca: sys.pki.root.certPem, cert: cert.certPem, key: cert.keyPem, headers: { authorization: `Bearer ${TOKEN}` } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }).on('error', reject);
      });
      await sys.api.ok('PUT', '/v1/crl-settings', { ...settings, webInterface: true });
      await sys.settled();
      const deadline = Date.now() + 20_000;
      let status = await get(certs.jdoe!);
      while (status !== 403 && Date.now() < deadline) status = await get(certs.jdoe!);
      assert.equal(status, 403);
      assert.equal(await get(good), 200);
      await sys.api.ok('PUT', '/v1/crl-settings', settings);
      await sys.settled();
      assert.equal(await get(certs.jdoe!), 200);
    } finally {
      await api.stop();
    }
  });
});
