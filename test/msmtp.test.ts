// msmtp, a mail client administrators configure for smart-card and certificate logins, against
// a real worker in deployment A (certificate only). What msmtp 1.8 built with GNU SASL (Debian's)
// sends for `auth external`: `AUTH EXTERNAL`, then, with `user`, that name in base64 after the
// empty 334 challenge; without `user`, no answer at all (it takes the 334 as the end of the
// exchange) and `MAIL FROM:` next, which is no SASL response: 501 5.5.2 names what to send.
// With `auth off` the certificate alone authenticates the session (SPEC §3 rule 4).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System } from './helpers/system.ts';
import { freePort } from './helpers/ports.ts';
import type { Issued } from './helpers/pki.ts';
import { cacAuthProfile, cardHolder, ldapProfile, listener } from './fixtures/deployments.ts';

const run = promisify(execFile);
let sys: System;
let port: number;
let card: Issued;

interface Msmtp { code: number; stderr: string; dialogue: string[] }

/** Sends one message with msmtp (`-d`: the SMTP dialogue on stdout, `<--` server, `-->` client). */
async function msmtp(options: string[]): Promise<Msmtp> {
  const args = [
    '-d', '--host=127.0.0.1', `--port=${port}`, '--tls=on', '--tls-starttls=on', `--tls-trust-file=${sys.pki.root.certPath}`,
    `--tls-cert-file=${card.certPath}`, `--tls-key-file=${card.keyPath}`, '--from=jdoe@example.com', ...options, 'someone@example.org',
  ];
  const child = run('msmtp', args, { timeout: 30_000 });
  child.child.stdin?.end('Subject: msmtp\r\n\r\nsent by msmtp\r\n');
  try {
    const { stdout, stderr } = await child;
    return { code: 0, stderr, dialogue: dialogue(stdout) };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') throw new Error('msmtp not found: install the Debian package msmtp (scripts/ensure-deps.sh --test)', { cause: err });
    return { code: typeof e.code === 'number' ? e.code : -1, stderr: `${e.stderr ?? ''}${e.message}`, dialogue: dialogue(e.stdout ?? '') };
  }
}

const dialogue = (out: string) => out.split('\n').filter((l) => /^(<--|-->) /.test(l)).map((l) => l.trimEnd());

before(async () => {
  sys = await startSystem({ workers: 1 });
  card = await sys.pki.client({ cn: 'DOE.JOHN.1234567890' });
  await sys.slapd.add(peopleLdif([cardHolder('jdoe', card)]));
  const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  port = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: false }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', cacAuthProfile({ fallback: false }));
  await sys.api.ok('POST', '/v1/mail-flow-policies', { name: 'RELAYED', action: 'relay', tls: 'required', verifyClientCertificate: true, requireSmtpAuth: true, smtpAuthRequiresTls: false });
  await sys.api.ok('POST', '/v1/listeners', listener(sys, {
    port, authProfile: 'cac-auth', tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: sys.pki.root.certPem },
  }));
  await sys.settled();
});

after(async () => {
  await sys?.stop();
});

describe('msmtp with a client certificate (deployment A)', () => {
  test('auth external with user: AUTH EXTERNAL, 334, base64 of the user, 235, relayed', async () => {
    const before = sys.sink.messages.length;
    const r = await msmtp(['--auth=external', '--user=jdoe']);
    assert.equal(r.code, 0, `${r.stderr}\n${r.dialogue.join('\n')}`);
    const auth = r.dialogue.indexOf('--> AUTH EXTERNAL');
    assert.ok(auth > 0, r.dialogue.join('\n'));
    assert.deepEqual(r.dialogue.slice(auth + 1, auth + 4), ['<-- 334', `--> ${Buffer.from('jdoe').toString('base64')}`, '<-- 235 2.7.0 Authentication successful']);
    await sys.sink.waitFor(before + 1);
    assert.match(sys.sink.messages.at(-1)!.raw.toString(), /\(authenticated as jdoe by certificate\)/);
  });

  test('auth external without user: msmtp answers the 334 with its MAIL command, which gets 501 5.5.2 saying what to send', async () => {
    const before = sys.sink.messages.length;
    const r = await msmtp(['--auth=external']);
    assert.notEqual(r.code, 0, r.dialogue.join('\n'));
    const auth = r.dialogue.indexOf('--> AUTH EXTERNAL');
    // (msmtp pipelines RCPT after MAIL: the replies come after both)
    assert.deepEqual(r.dialogue.slice(auth + 1, auth + 3), ['<-- 334', '--> MAIL FROM:<jdoe@example.com>'], r.dialogue.join('\n'));
    assert.ok(r.dialogue.slice(auth + 3).includes('<-- 501 5.5.2 Cannot decode the AUTH EXTERNAL response: send your user name in base64, or = for none'), r.dialogue.join('\n'));
    assert.match(r.stderr, /501 5\.5\.2 Cannot decode the AUTH EXTERNAL response/);
    assert.equal(sys.sink.messages.length, before, 'nothing relayed');
  });

  test('auth external with another user name: 535', async () => {
    const r = await msmtp(['--auth=external', '--user=someone-else']);
    assert.notEqual(r.code, 0);
    assert.ok(r.dialogue.includes('<-- 535 5.7.8 Authentication credentials invalid'), r.dialogue.join('\n'));
  });

  test('auth off: the certificate alone authenticates the session, the message is relayed', async () => {
    const before = sys.sink.messages.length;
    const r = await msmtp(['--auth=off']);
    assert.equal(r.code, 0, `${r.stderr}\n${r.dialogue.join('\n')}`);
    assert.ok(!r.dialogue.some((l) => l.startsWith('--> AUTH')), r.dialogue.join('\n'));
    await sys.sink.waitFor(before + 1);
  });
});
