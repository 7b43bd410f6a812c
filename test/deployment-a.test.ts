// SPEC §4A, certificate only, end to end with smart-card-shaped certificates: STARTTLS and
// implicit-TLS listeners, swaks, Python's smtplib and `openssl s_client` typing AUTH EXTERNAL.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System } from './helpers/system.ts';
import { opensslSession, smtplib, swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import type { Issued } from './helpers/pki.ts';
import { cacAuthProfile, cardHolder, ldapProfile, listener, people } from './fixtures/deployments.ts';

let sys: System;
let port: number;
let implicitPort: number;
const certs: Record<string, Issued> = {};
const day = 86_400_000;

const relayed = { name: 'RELAYED', action: 'relay', tls: 'required', verifyClientCertificate: true, requireSmtpAuth: true, smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10 };

function viaSwaks(cert: Issued | null, opts: { implicit?: boolean; extra?: string[] } = {}) {
  const p = opts.implicit ? implicitPort : port;
  return swaks([
    '--server', `127.0.0.1:${p}`, opts.implicit ? '--tls-on-connect' : '--tls',
    ...(cert ? ['--tls-cert', cert.certPath, '--tls-key', cert.keyPath] : []),
    '--from', 'jdoe@example.com', '--to', 'rcpt@example.com', ...(opts.extra ?? []),
  ]);
}

/** The 554 5.7.1 refusal of rule 3, wherever in the transcript the client read it. */
function assertRefused(r: Awaited<ReturnType<typeof swaks>>, what: string) {
  const refusal = r.replies.find((x) => x.code === 554);
  assert.ok(refusal, `${what}: no 554 in\n${r.transcript}`);
  assert.match(refusal.text, /^5\.7\.1 /, what);
  assert.ok(!r.replies.some((x) => x.code === 250 && /relayed/.test(x.text)), `${what} relayed`);
}

before(async () => {
  sys = await startSystem({ workers: 1 });
  const pki = sys.pki;
  certs.jdoe = await pki.client({ cn: 'LAST.FIRST.1234567890' });
  certs.viaIntermediate = await pki.client({ cn: 'INTER.MEDIATE.5555555555', issuer: 'intermediate' });
  certs.expired = await pki.client({ cn: 'OLD.CARD.6666666666', notBefore: new Date(Date.now() - 30 * day), notAfter: new Date(Date.now() - day) });
  certs.foreign = await pki.client({ cn: 'LAST.FIRST.1234567890', issuer: 'foreign' });
  certs.serverOnly = await pki.client({ cn: 'SERVER.USAGE.7777777777', extendedKeyUsage: 'serverAuth' });
  certs.unlisted = await pki.client({ cn: 'NOT.LISTED.8888888888' });
  certs.injection = await pki.client({ cn: '*)(uid=*))(|(uid=*' });
  certs.twin = await pki.client({ cn: 'TWIN.CARD.9999999999' });
  await sys.slapd.add(peopleLdif([
    ...people(),
    cardHolder('jdoe', certs.jdoe),
    cardHolder('ivan', certs.viaIntermediate),
    cardHolder('olga', certs.expired),
    cardHolder('fred', certs.foreign),
    cardHolder('sam', certs.serverOnly),
    cardHolder('twin1', certs.twin),
    cardHolder('twin2', certs.twin),
  ]));
  const server = await pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  const tls = { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: pki.root.certPem };
  port = await freePort();
  implicitPort = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: false }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', cacAuthProfile({ fallback: false }));
  await sys.api.ok('POST', '/v1/mail-flow-policies', relayed);
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { port, authProfile: 'cac-auth', tls }));
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'smtps', port: implicitPort, implicitTls: true, authProfile: 'cac-auth', tls }));
  await sys.settled();
});

after(async () => {
  await sys?.stop();
});

describe('deployment A: certificate only', () => {
  test('a valid, listed card holder relays without AUTH; Received names the user and method certificate', async () => {
    const before = sys.sink.messages.length;
    const r = await viaSwaks(certs.jdoe!);
    assert.ok(r.replies.some((x) => x.code === 250 && x.text.includes('relayed')), r.transcript);
    assert.ok(!r.transcript.includes('-> AUTH'), 'swaks sent no AUTH');
    await sys.sink.waitFor(before + 1);
    assert.match(sys.sink.messages.at(-1)!.raw.toString(), /with ESMTPSA id [0-9a-f]+ \(authenticated as jdoe by certificate\);/);
  });

  test('AUTH PLAIN/LOGIN is never offered; after the certificate, EHLO offers only AUTH EXTERNAL', async () => {
    const before = await swaks(['--server', `127.0.0.1:${port}`, '--quit-after', 'EHLO']);
    assert.ok(!before.ehlo.some((l) => l.startsWith('AUTH')), before.transcript);
    const after = await viaSwaks(certs.jdoe!, { extra: ['--quit-after', 'EHLO'] });
    const auth = after.ehlo.filter((l) => l.startsWith('AUTH'));
    assert.deepEqual(auth, ['AUTH EXTERNAL'], after.transcript);
  });

  test('implicit TLS (--tls-on-connect): the card holder relays, no certificate is refused', async () => {
    const ok = await viaSwaks(certs.jdoe!, { implicit: true });
    assert.ok(ok.replies.some((x) => x.code === 250 && x.text.includes('relayed')), ok.transcript);
    assertRefused(await viaSwaks(null, { implicit: true }), 'implicit, no certificate');
  });

  test("no TLS session resumption: the first session's ticket offered again, with or without the card, gets a full handshake", async () => {
    const jdoe = certs.jdoe!;
    const card = { cert: jdoe.certPem, key: jdoe.keyPem };
    /** An implicit-TLS connection: whether it was resumed, the server's first line, and the TLS session once its tickets came. */
    const connect = (o: tls.ConnectionOptions) => new Promise<{ reused: boolean; line: string; session: Buffer | null }>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: implicitPort, rejectUnauthorized: false, ...o });
      let session: Buffer | null = null;
      let text = '';
      s.on('session', (b: Buffer) => (session = b));
      s.on('data', (b: Buffer) => {
        text += b.toString();
        if (text.includes('\r\n')) {
          s.end('QUIT\r\n');
          resolve({ reused: s.isSessionReused(), line: text.split('\r\n')[0]!, session });
        }
      });
      s.on('error', reject);
    });
    const first = await connect(card);
    assert.match(first.line, /^220 /);
    assert.ok(first.session, 'the client kept a session from the tickets');
    const withCard = await connect({ ...card, session: first.session });
    assert.deepEqual([withCard.reused, withCard.line.slice(0, 4)], [false, '220 '], 'the card proves itself again');
    // Resumed, this connection would carry jdoe's certificate without its key.
    const withoutCard = await connect({ session: first.session });
    assert.equal(withoutCard.reused, false);
    assert.match(withoutCard.line, /^554 5\.7\.1 /);
  });

  for (const [name, reason] of [
    ['none', 'no-certificate'], ['expired', 'expired'], ['foreign', 'untrusted-issuer'], ['serverOnly', 'bad-key-usage'],
    ['unlisted', 'not-in-directory'], ['injection', 'not-in-directory'], ['twin', 'ambiguous-directory-match'],
  ] as const) {
    test(`refused with 554 5.7.1: ${name} (event reason ${reason})`, async () => {
      const since = new Date(Date.now() - 500).toISOString();
      const r = await viaSwaks(name === 'none' ? null : certs[name]!);
      assertRefused(r, name);
      const items = await sys.events<{ reason: string }>(`outcome=rejected&since=${encodeURIComponent(since)}`, (es) => es.some((e) => e.reason === reason));
      assert.ok(items.some((e) => e.reason === reason), name);
    });
  }

  test('an intermediate-CA chain works when the client presents the intermediate (smtplib)', async () => {
    const chainPath = path.join(sys.pki.dir, 'ivan-chain.pem');
    await writeFile(chainPath, certs.viaIntermediate!.chainPem);
    const before = sys.sink.messages.length;
    const steps = await smtplib({ port, starttls: true, cert: chainPath, key: certs.viaIntermediate!.keyPath });
    assert.deepEqual(steps.find((s) => s[0] === 'DATA'), ['DATA', 250, '{}'], JSON.stringify(steps));
    await sys.sink.waitFor(before + 1);
    assert.match(sys.sink.messages.at(-1)!.raw.toString(), /authenticated as ivan by certificate/);
  });

  test('AUTH EXTERNAL (openssl s_client): empty or matching identity 235 2.7.0, another 535 5.7.8, PLAIN 503 5.5.1', async () => {
    const jdoe = certs.jdoe!;
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const out = await opensslSession({
      port, cert: jdoe.certPath, key: jdoe.keyPath,
      lines: ['EHLO client.example', 'AUTH EXTERNAL =', `AUTH EXTERNAL ${b64('jdoe')}`, `AUTH EXTERNAL ${b64('root')}`, 'AUTH EXTERNAL', '', `AUTH PLAIN ${b64('\0jdoe\0jdoe-pw')}`, 'QUIT'],
    });
    const finals = out.split('\r\n').filter((l) => /^\d{3} /.test(l));
    assert.ok(finals.includes('250 AUTH EXTERNAL') || out.includes('250-AUTH EXTERNAL'), out);
    const auth = finals.filter((l) => /^(235|535|503|334) ?/.test(l));
    assert.deepEqual(auth, [
      '235 2.7.0 Authentication successful', '235 2.7.0 Authentication successful', '535 5.7.8 Authentication credentials invalid',
      '334 ', '235 2.7.0 Authentication successful', '503 5.5.1 Error: already authenticated',
    ], out);
  });

  test("Python's smtplib with a client certificate relays", async () => {
    const steps = await smtplib({ port, starttls: true, cert: certs.jdoe!.certPath, key: certs.jdoe!.keyPath });
    assert.deepEqual(steps.find((s) => s[0] === 'DATA'), ['DATA', 250, '{}'], JSON.stringify(steps));
  });
});
