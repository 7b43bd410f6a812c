// SPEC §4C, certificate or SMTP AUTH: card holders relay by certificate, people without a
// card by password when the allowance query admits them, card holders trying a password get 525.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System } from './helpers/system.ts';
import { smtpCommands, swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import type { Issued } from './helpers/pki.ts';
import { CAC_TEXT, cardHolder, configureDeploymentC, people } from './fixtures/deployments.ts';

let sys: System;
let port: number;
const certs: Record<string, Issued> = {};
const day = 86_400_000;

const relayed = { name: 'RELAYED', action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: true, smtpAuthRequiresTls: true, maxMessageBytes: 1_000_000, maxRecipients: 10 };

function session(o: { cert?: Issued; user?: string; password?: string; tls?: boolean }) {
  return swaks([
    '--server', `127.0.0.1:${port}`, ...(o.tls === false ? [] : ['--tls']),
    ...(o.cert ? ['--tls-cert', o.cert.certPath, '--tls-key', o.cert.keyPath] : []),
    ...(o.user ? ['--auth', 'PLAIN', '--auth-user', o.user, '--auth-password', o.password ?? `${o.user}-pw`] : []),
    '--from', 'sender@example.com', '--to', 'rcpt@example.com',
  ]);
}

const relayedOk = (r: Awaited<ReturnType<typeof swaks>>) => r.replies.some((x) => x.code === 250 && x.text.includes('relayed'));

before(async () => {
  sys = await startSystem({ workers: 1 });
  certs.jdoe = await sys.pki.client({ cn: 'LAST.FIRST.1234567890' });
  certs.expired = await sys.pki.client({ cn: 'ALICE.OLD.1212121212', notBefore: new Date(Date.now() - 30 * day), notAfter: new Date(Date.now() - day) });
  certs.unlisted = await sys.pki.client({ cn: 'NOT.LISTED.8888888888' });
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', certs.jdoe)]));
  port = await freePort();
  await configureDeploymentC(sys, { port, policy: relayed });
  await sys.settled();
});

after(async () => {
  await sys?.stop();
});

describe('deployment C: certificate or SMTP AUTH', () => {
  test('a card holder relays by certificate, without AUTH', async () => {
    const before = sys.sink.messages.length;
    const r = await session({ cert: certs.jdoe });
    assert.ok(relayedOk(r), r.transcript);
    await sys.sink.waitFor(before + 1);
    assert.match(sys.sink.messages.at(-1)!.raw.toString(), /\(authenticated as jdoe by certificate\)/);
  });

  test('people without a card relay by password when allowQuery admits them (no card, exempt, emergency window ahead)', async () => {
    for (const user of ['alice', 'carol', 'dave']) {
      const r = await session({ user });
      assert.deepEqual(r.replyTo('AUTH'), { code: 235, text: '2.7.0 Authentication successful' }, `${user}\n${r.transcript}`);
      assert.ok(relayedOk(r), `${user}\n${r.transcript}`);
    }
  });

  test('card holders who try a password get the custom 525; so does an expired emergency window', async () => {
    for (const user of ['bob', 'erin', 'jdoe']) {
      const r = await session({ user });
      assert.deepEqual(r.replyTo('AUTH'), { code: 525, text: CAC_TEXT }, `${user}\n${r.transcript}`);
    }
  });

  test('a card holder whose certificate authenticated gets 503 5.5.1 for AUTH PLAIN', async () => {
    const replies = await smtpCommands({ port, starttls: true, cert: certs.jdoe!.certPath, key: certs.jdoe!.keyPath, commands: ['AUTH PLAIN AGpkb2UAamRvZS1wdw==', 'AUTH EXTERNAL ='] });
    assert.deepEqual(replies, [[503, '5.5.1 Error: already authenticated'], [235, '2.7.0 Authentication successful']]);
  });

  test('an invalid or unlisted certificate does not authenticate, but the password fallback still works', async () => {
    for (const cert of [certs.expired!, certs.unlisted!]) {
      const r = await session({ cert, user: 'alice' });
      assert.equal(r.replyTo('AUTH')?.code, 235, r.transcript);
      assert.ok(relayedOk(r), r.transcript);
    }
    const noAuth = await session({ cert: certs.unlisted });
    assert.deepEqual(noAuth.replyTo('MAIL'), { code: 530, text: '5.7.0 Authentication required' }, noAuth.transcript);
  });

  test('AUTH before STARTTLS gets 538 5.7.11; AUTH is advertised only after TLS', async () => {
    const plain = await swaks(['--server', `127.0.0.1:${port}`, '--quit-after', 'EHLO']);
    assert.ok(plain.ehlo.includes('STARTTLS'), plain.transcript);
    assert.ok(!plain.ehlo.some((l) => l.startsWith('AUTH')), plain.transcript);
    const [reply] = await smtpCommands({ port, commands: ['AUTH PLAIN AGFsaWNlAGFsaWNlLXB3'] });
    assert.deepEqual(reply, [538, '5.7.11 Encryption required for requested authentication mechanism']);
    const tls = await swaks(['--server', `127.0.0.1:${port}`, '--tls', '--quit-after', 'EHLO']);
    assert.ok(tls.ehlo.includes('AUTH PLAIN LOGIN'), tls.transcript);
  });

  test('without a certificate and without AUTH, MAIL FROM gets 530 5.7.0 Authentication required (plain and TLS)', async () => {
    for (const tls of [false, true]) {
      const r = await session({ tls });
      assert.deepEqual(r.replyTo('MAIL'), { code: 530, text: '5.7.0 Authentication required' }, r.transcript);
    }
  });
});
