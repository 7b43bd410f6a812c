// Diagnostics at `info`: a session decision that is not a success is one line of the worker's
// log with the reason, the user or certificate subject, and what the directory or revocation
// check said (worker/session-log.ts), here for deployment C's usual failures against a real
// worker: a valid certificate the directory does not list (530 at MAIL later), a wrong
// password, a card holder's password, a revoked-looking foreign certificate; successes are not
// at info. The pure rule is tested on its own first.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System, type Worker } from './helpers/system.ts';
import { swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import type { Issued } from './helpers/pki.ts';
import { cardHolder, configureDeploymentC, people } from './fixtures/deployments.ts';
import { sessionLogLine } from '../worker/session-log.ts';
import type { NewSessionEvent } from '../shared/config/schemas.ts';

const base: NewSessionEvent = {
  time: '2026-06-01T12:00:00.000Z', worker: 'w', listener: 'submission', sessionId: 's1', clientAddress: '192.0.2.7', tlsVersion: 'TLSv1.3',
  certificate: null, method: 'none', user: null, outcome: 'accepted', reason: 'authenticated', detail: null, command: null, reply: null, envelope: null,
};

describe('sessionLogLine (pure)', () => {
  test('refusals: one line naming the command, who, the reason, what the directory said and the reply', () => {
    const line = sessionLogLine({ ...base, outcome: 'rejected', command: 'AUTH', method: 'smtp-auth', user: 'alice', reason: 'invalid-credentials', detail: 'invalidCredentials (49)', reply: '535 5.7.8 Authentication credentials invalid' });
    assert.equal(line?.msg, 'AUTH refused for alice: invalid-credentials (invalidCredentials (49)) → 535 5.7.8 Authentication credentials invalid');
    assert.equal(line?.fields.reason, 'invalid-credentials');
    assert.equal(line?.fields.detail, 'invalidCredentials (49)');
    const cert = sessionLogLine({ ...base, outcome: 'rejected', command: 'STARTTLS', certificate: { subject: 'CN=X', serial: '01', issuer: 'CN=CA' }, reason: 'revoked', reply: '554 5.7.1 Client certificate revoked' });
    assert.match(cert?.msg ?? '', /^STARTTLS refused for CN=X: revoked → 554/);
    assert.equal(cert?.fields.certificate, 'CN=X');
    const goesOn = sessionLogLine({ ...base, outcome: 'rejected', command: 'STARTTLS', certificate: { subject: 'CN=X', serial: '01', issuer: 'CN=CA' }, reason: 'expired', reply: null });
    assert.equal(goesOn?.msg, 'certificate of CN=X not accepted: expired; the session goes on without it');
  });

  test('a certificate that did not authenticate a session that goes on; allow-and-log once at AUTH', () => {
    const unlisted = sessionLogLine({ ...base, command: 'STARTTLS', certificate: { subject: 'CN=NOT.LISTED', serial: '01', issuer: 'CN=CA' }, reason: 'not-in-directory', detail: 'revocation-checked: not revoked' });
    assert.equal(unlisted?.msg, 'certificate did not authenticate the session of CN=NOT.LISTED: not-in-directory (revocation-checked: not revoked)');
    assert.match(sessionLogLine({ ...base, outcome: 'allowed-not-permitted', command: 'AUTH', user: 'bob', reason: 'not-allowed-by-allow-query' })?.msg ?? '', /bob authenticated but not permitted/);
    assert.equal(sessionLogLine({ ...base, outcome: 'allowed-not-permitted', command: 'MAIL', user: 'bob', reason: 'not-allowed-by-allow-query' }), null);
  });

  test('successes and sessions without a certificate are not logged at info', () => {
    for (const e of [
      { ...base, command: 'AUTH', reason: 'authenticated' },
      { ...base, command: 'STARTTLS', reason: 'certificate-authenticated' },
      { ...base, command: 'STARTTLS', reason: 'no-certificate' },
      { ...base, command: 'DATA', reason: 'relayed as 0011' },
    ]) assert.equal(sessionLogLine(e), null, e.reason);
  });
});

let sys: System;
let worker: Worker;
let port: number;
const certs: Record<string, Issued> = {};

before(async () => {
  sys = await startSystem({ workers: 1 });
  worker = sys.workers[0]!;
  certs.jdoe = await sys.pki.client({ cn: 'LAST.FIRST.1234567890' });
  certs.unlisted = await sys.pki.client({ cn: 'NOT.LISTED.8888888888' });
  certs.foreign = await sys.pki.client({ cn: 'FOREIGN.CARD.7777777777', issuer: 'foreign' });
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', certs.jdoe)]));
  port = await freePort();
  await configureDeploymentC(sys, { port, policy: { name: 'RELAYED', action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: true, smtpAuthRequiresTls: true } });
  await sys.settled();
});

after(async () => {
  await sys?.stop();
});

/** The worker's info lines (pino level 30) written since `from` (an offset into its output). */
function infoLines(from: number): Array<Record<string, unknown> & { msg: string }> {
  return worker.output().slice(from).split('\n').flatMap((l) => {
    try {
      const j = JSON.parse(l) as { level?: number; msg?: string };
      return j.level === 30 && typeof j.msg === 'string' ? [j as Record<string, unknown> & { msg: string }] : [];
    } catch {
      return [];
    }
  });
}

async function linesAfter(from: number, match: RegExp): Promise<Array<Record<string, unknown> & { msg: string }>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const lines = infoLines(from);
    if (lines.some((l) => match.test(l.msg)) || Date.now() > deadline) return lines;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const session = (o: { cert?: Issued; user?: string; password?: string }) => swaks([
  '--server', `127.0.0.1:${port}`, '--tls',
  ...(o.cert ? ['--tls-cert', o.cert.certPath, '--tls-key', o.cert.keyPath] : []),
  ...(o.user ? ['--auth', 'PLAIN', '--auth-user', o.user, '--auth-password', o.password ?? `${o.user}-pw`] : []),
  '--from', 'sender@example.com', '--to', 'rcpt@example.org',
]);

describe('the worker log at info (deployment C)', () => {
  test('a valid certificate the directory does not list: why it did not authenticate, then the 530 at MAIL', async () => {
    const from = worker.output().length;
    const r = await session({ cert: certs.unlisted });
    assert.equal(r.replyTo('MAIL')?.code, 530, r.transcript);
    const lines = await linesAfter(from, /MAIL refused/);
    const cert = lines.find((l) => l.msg.startsWith('certificate did not authenticate'));
    assert.ok(cert, JSON.stringify(lines));
    assert.match(cert.msg, /the session of .*CN=NOT\.LISTED\.8888888888.*: not-in-directory/);
    assert.equal(cert.reason, 'not-in-directory');
    assert.match(String(cert.certificate), /CN=NOT\.LISTED\.8888888888/);
    const mail = lines.find((l) => l.msg.startsWith('MAIL refused'));
    assert.ok(mail, JSON.stringify(lines));
    assert.match(mail.msg, /authentication-required → 530 5\.7\.0 Authentication required/);
  });

  test('a wrong password, and a card holder\'s password: the user and the reason', async () => {
    const from = worker.output().length;
    assert.equal((await session({ user: 'alice', password: 'wrong' })).replyTo('AUTH')?.code, 535);
    assert.equal((await session({ user: 'bob' })).replyTo('AUTH')?.code, 525);
    const lines = await linesAfter(from, /AUTH refused for bob/);
    assert.ok(lines.some((l) => /^AUTH refused for alice: invalid-credentials.* → 535 5\.7\.8/.test(l.msg)), JSON.stringify(lines));
    assert.ok(lines.some((l) => /^AUTH refused for bob: not-allowed-by-allow-query → 525 /.test(l.msg)), JSON.stringify(lines));
  });

  test('a certificate of a foreign CA: what the chain check said; the session goes on without it', async () => {
    const from = worker.output().length;
    await session({ cert: certs.foreign });
    const lines = await linesAfter(from, /not accepted/);
    const line = lines.find((l) => l.msg.startsWith('certificate of'));
    assert.ok(line, JSON.stringify(lines));
    assert.match(line.msg, /CN=FOREIGN\.CARD\.7777777777.* not accepted: untrusted-issuer .*; the session goes on without it$/);
    assert.match(String(line.detail), /OpenSSL/);
  });

  test('successes add no info line', async () => {
    const from = worker.output().length;
    const r = await session({ cert: certs.jdoe });
    assert.equal(r.replyTo('MAIL')?.code, 250, r.transcript);
    await sys.sink.waitFor(1);
    assert.deepEqual(infoLines(from).filter((l) => /refused|did not authenticate|not permitted|not accepted/.test(l.msg)), []);
  });
});
