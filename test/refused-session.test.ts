// SPEC §3 rules 1 and 3: a refused session is readable by every client. It answers every
// command but QUIT with its `554 5.7.1 <reason>`, QUIT with 221, closes after QUIT or 10 s
// of silence, and never by a reset that loses a reply. Shown with a real Postfix relaying
// through certgate without a client certificate (it must log the 554 and bounce or defer
// the mail with it, not "lost connection"), with swaks, smtplib and a bare socket.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startSystem, type System } from './helpers/system.ts';
import { python, swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import { openRaw } from './helpers/raw-smtp.ts';
import { startPostfix, type Postfix } from './helpers/postfix.ts';
import { listener } from './fixtures/deployments.ts';

let sys: System;
let postfix: Postfix | undefined;
const ports = { cert: 0, reject: 0 };
const REQUIRED = '554 5.7.1 Client certificate required';

before(async () => {
  sys = await startSystem({ workers: 1 });
  const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  ports.cert = await freePort();
  ports.reject = await freePort();
  const base = { action: 'relay', smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10, requireSmtpAuth: false };
  await sys.api.ok('POST', '/v1/mail-flow-policies', { ...base, name: 'CERT', tls: 'required', verifyClientCertificate: true });
  await sys.api.ok('POST', '/v1/mail-flow-policies', { ...base, name: 'REJECT', action: 'reject', tls: 'off', verifyClientCertificate: false });
  const tls = { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: sys.pki.root.certPem };
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'cert', port: ports.cert, authProfile: null, tls, policy: 'CERT' }));
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'reject', port: ports.reject, authProfile: null, tls: null, policy: 'REJECT' }));
  await sys.settled();
});

after(async () => {
  await postfix?.stop();
  await sys?.stop();
});

describe('a refused session (rule 3: verifyClientCertificate, no certificate)', () => {
  test('smtplib: EHLO, HELO, NOOP, MAIL and RSET all get the 554, QUIT gets 221', async () => {
    const out = await python<Array<[string, number, string]>>(String.raw`
import json, smtplib, ssl, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)
s.ehlo('client.example')
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
s.starttls(context=c)
out = []
for cmd in ['EHLO client.example', 'HELO client.example', 'NOOP', 'MAIL FROM:<a@example.com>', 'RSET', 'QUIT']:
    code, msg = s.docmd(cmd)
    out.append([cmd.split()[0], code, msg.decode()])
print(json.dumps(out))
`, [String(ports.cert)]);
    assert.deepEqual(out.map(([c, code, text]) => `${c} ${code} ${text}`), [
      `EHLO ${REQUIRED}`, `HELO ${REQUIRED}`, `NOOP ${REQUIRED}`, `MAIL ${REQUIRED}`, `RSET ${REQUIRED}`, 'QUIT 221 2.0.0 Bye',
    ]);
  });

  test('swaks sees the 554 as the answer to its EHLO', async () => {
    const r = await swaks(['--server', `127.0.0.1:${ports.cert}`, '--tls', '--from', 'a@example.com', '--to', 'b@example.com']);
    assert.ok(r.replies.some((x) => `${x.code} ${x.text}` === REQUIRED), r.transcript);
    assert.doesNotMatch(r.transcript, /Connection (closed|reset)|lost connection/i);
  });

  test('silence: closed after 10 s by a FIN, every reply read', async () => {
    const c = await openRaw({ port: ports.cert, localAddress: '127.0.0.71' });
    await c.waitForReplies(1);
    c.write('EHLO client.example\r\n');
    await c.waitForReplies(2);
    c.write('STARTTLS\r\n');
    await c.waitForReplies(3);
    const secure = await c.startTls();
    secure.write('EHLO client.example\r\nNOOP\r\n');
    await secure.waitForReplies(5);
    const silentFrom = Date.now();
    const closed = await secure.closed;
    assert.deepEqual(secure.replies.slice(3).map((r) => `${r.code} ${r.text}`), [REQUIRED, REQUIRED]);
    assert.equal(closed.error, null, 'no reset');
    assert.ok(closed.at - silentFrom >= 9_000, `waited ${closed.at - silentFrom} ms for a command`);
  });

  test('Postfix relaying through certgate without a certificate logs the 554 and bounces or defers the mail with it', async () => {
    postfix = await startPostfix({ relayhost: { host: '127.0.0.1', port: ports.cert }, clientTls: { level: 'encrypt' } });
    const r = await swaks(['--server', `127.0.0.1:${postfix.port}`, '--from', 'sender@example.com', '--to', 'rcpt@example.com', '--header', 'Subject: via postfix']);
    assert.equal(r.replyTo('.')?.code ?? r.replies.at(-2)?.code, 250, r.transcript);
    const line = await postfix.waitForLog(/status=(bounced|deferred)/, 60_000);
    assert.match(line, /refused to talk to me: 554 5\.7\.1 Client certificate required/, line);
    // Postfix's SMTP client (not its smtpd, which logs the helper's port probe) never lost the connection.
    assert.doesNotMatch(await postfix.maillog(), /postfix\/smtp\[\d+\]: .*lost connection/);
  });
});

describe('rule 1: action reject', () => {
  test('554 5.7.1 at connect; every command but QUIT gets it too; QUIT gets 221 and a FIN', async () => {
    const c = await openRaw({ port: ports.reject, localAddress: '127.0.0.72' });
    await c.waitForReplies(1);
    c.write('EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nQUIT\r\n');
    const closed = await c.closed;
    assert.deepEqual(c.replies.map((r) => `${r.code} ${r.text}`), [
      '554 5.7.1 Access denied', '554 5.7.1 Access denied', '554 5.7.1 Access denied', '221 2.0.0 Bye',
    ]);
    assert.deepEqual({ end: closed.end, error: closed.error }, { end: true, error: null });
  });

  test('swaks reads the refusal', async () => {
    const r = await swaks(['--server', `127.0.0.1:${ports.reject}`, '--from', 'a@example.com', '--to', 'b@example.com']);
    assert.deepEqual(r.replies[0], { code: 554, text: '5.7.1 Access denied' }, r.transcript);
  });
});
