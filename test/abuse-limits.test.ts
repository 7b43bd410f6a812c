// SPEC §2.4 and §2.5 limits end to end, on two worker processes sharing one Redis, with
// real clients (swaks, smtplib, Node's TLS client) and a bare socket where only a bare
// socket can do it (dribbling bytes, floods of pipelined commands, holding connections).
// Each test speaks from its own loopback address (127.0.0.x) so that per-client counts
// never mix. The LDAP profile reaches slapd through a counting proxy: a throttled AUTH
// must not send a single byte to the directory.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System } from './helpers/system.ts';
import { python, smtpCommands, swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import { openRaw, type RawConnection } from './helpers/raw-smtp.ts';
import { eventually } from './helpers/wait.ts';
import { ldapProfile, listener, people } from './fixtures/deployments.ts';

let sys: System;
const ports = { limits: 0, small: 0, implicit: 0, idle: 0 };
let proxy: CountingProxy;

const open = { action: 'relay', tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false, maxMessageBytes: 1_000_000, maxRecipients: 10 };
const LIMITS = {
  ...open, name: 'LIMITS',
  maxMessagesPerConnection: 2, maxConnectionsPerClient: 3, maxAuthFailuresPerConnection: 2, maxBadCommands: 3,
  authFailureThrottle: { perClient: { maxFailures: 4, windowSeconds: 600 }, perUser: { maxFailures: 3, windowSeconds: 600 } },
};

/** Forwards TCP to slapd and counts the bytes the worker sends it. */
interface CountingProxy { port: number; bytesToDirectory(): number; close(): Promise<void> }
async function countingProxy(target: number): Promise<CountingProxy> {
  let bytes = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (b: Buffer) => { bytes += b.length; });
    client.pipe(upstream).pipe(client);
  });
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return {
    port,
    bytesToDirectory: () => bytes,
    close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

const b64 = (s: string) => Buffer.from(s).toString('base64');
const plain = (user: string, password: string) => `AUTH PLAIN ${b64(`\0${user}\0${password}`)}`;
const w = (i: number) => sys.workers[i]!.offset;
/** The reply that ended swaks' AUTH exchange (after any 334 challenges): the one before QUIT's 221. */
const authReply = (r: { replies: { code: number; text: string }[] }) => r.replies.filter((x) => x.code !== 334).at(-2);

before(async () => {
  sys = await startSystem({ workers: 2 });
  await sys.slapd.add(peopleLdif(people()));
  proxy = await countingProxy(sys.slapd.port);
  const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', { ...ldapProfile(sys, { certificate: false, smtpAuth: true }), hosts: [`ldap://127.0.0.1:${proxy.port}`] });
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name: 'ldap-auth', type: 'ldap', ldapProfile: 'corp', checkWithLdap: false });
  await sys.api.ok('POST', '/v1/mail-flow-policies', LIMITS);
  await sys.api.ok('POST', '/v1/mail-flow-policies', { ...open, name: 'OPEN', maxConnectionsPerClient: null });
  const tls = { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: null };
  await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'limits', port: ports.limits, authProfile: 'ldap-auth', tls: null, policy: 'LIMITS' }));
  await sys.api.ok('POST', '/v1/listeners', { ...listener(sys, { name: 'small', port: ports.small, authProfile: null, tls: null, policy: 'OPEN' }), maxConnections: 2 });
  await sys.api.ok('POST', '/v1/listeners', { ...listener(sys, { name: 'implicit', port: ports.implicit, implicitTls: true, authProfile: null, tls, policy: 'OPEN' }), maxConnections: 2 });
  await sys.api.ok('POST', '/v1/listeners', { ...listener(sys, { name: 'idle', port: ports.idle, authProfile: null, tls: null, policy: 'OPEN' }), idleTimeoutSeconds: 3 });
  await sys.settled();
});

after(async () => {
  await sys?.stop();
  await proxy?.close();
});

/** Greeting, then EHLO from `from`; resolves with the open connection. */
async function session(port: number, from: string): Promise<RawConnection> {
  const c = await openRaw({ port, localAddress: from });
  await c.waitForReplies(1);
  c.write('EHLO client.example\r\n');
  await c.waitForReplies(2);
  return c;
}

describe('limits of mail flow policies (§2.4)', () => {
  test('maxMessagesPerConnection: the next MAIL FROM gets 452 4.5.3 Too many messages in this connection (smtplib)', async () => {
    const out = await python<Array<[number, string]>>(String.raw`
import json, smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20, source_address=('127.0.0.21', 0))
s.ehlo('client.example')
out = []
for i in range(3):
    code, msg = s.mail('sender@example.com')
    out.append([code, msg.decode()])
    if code != 250: break
    s.rcpt('rcpt@example.com')
    code, msg = s.data(b'Subject: %d\r\n\r\nhello\r\n' % i)
    out.append([code, msg.decode()[:6]])
s.quit()
print(json.dumps(out))
`, [String(ports.limits)]);
    assert.deepEqual(out.map(([c]) => c), [250, 250, 250, 250, 452], JSON.stringify(out));
    assert.deepEqual(out[4], [452, '4.5.3 Too many messages in this connection']);
  });

  test('maxConnectionsPerClient: the 4th concurrent connection from one address gets 421 4.7.0 and is closed; another address is not affected', async () => {
    const held = await Promise.all([1, 2, 3].map(() => session(ports.limits, '127.0.0.22')));
    const refused = await swaks(['--server', `127.0.0.1:${ports.limits}`, '--local-interface', '127.0.0.22', '--quit-after', 'CONNECT']);
    assert.deepEqual(refused.replies[0], { code: 421, text: '4.7.0 Too many connections from your address' }, refused.transcript);
    // Per worker process: the other worker still takes one from the same address.
    const elsewhere = await openRaw({ port: ports.limits + w(1), localAddress: '127.0.0.22' });
    assert.equal((await elsewhere.waitForReplies(1))[0]?.code, 220);
    const other = await swaks(['--server', `127.0.0.1:${ports.limits}`, '--local-interface', '127.0.0.23', '--quit-after', 'EHLO']);
    assert.equal(other.replies[0]?.code, 220, other.transcript);
    // A slot freed is a slot again.
    held[0]!.write('QUIT\r\n');
    await held[0]!.closed;
    // The worker frees the slot when it sees the close, a moment after the client does: try anew until it has.
    const again = await eventually(async () => {
      const c = await openRaw({ port: ports.limits, localAddress: '127.0.0.22' });
      const [first] = await c.waitForReplies(1).catch(() => [] as { code: number }[]);
      if (first?.code === 220) return c;
      c.destroy();
      return null;
    }, 10_000, 'a freed slot admits the address again');
    for (const c of [...held, elsewhere, again]) c.destroy();
  });

  test('maxAuthFailuresPerConnection: after 2 failed AUTH the session gets 421 4.7.0 Too many authentication failures and is closed', async () => {
    const c = await session(ports.limits, '127.0.0.24');
    c.write(`${plain('alice', 'wrong-1')}\r\n`);
    await c.waitForReplies(3);
    c.write(`${plain('alice', 'wrong-2')}\r\n`);
    const closed = await c.closed;
    assert.deepEqual(c.replies.slice(2).map((r) => `${r.code} ${r.text}`), [
      '535 5.7.8 Authentication credentials invalid',
      '535 5.7.8 Authentication credentials invalid',
      '421 4.7.0 Too many authentication failures',
    ]);
    assert.deepEqual({ end: closed.end, error: closed.error }, { end: true, error: null }, 'closed by a FIN, not a reset');
  });

  test('maxBadCommands: unknown and out-of-sequence commands, then 421 4.7.0 Too many errors (smtplib)', async () => {
    const out = await python<Array<[number, string]>>(String.raw`
import json, smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20, source_address=('127.0.0.25', 0))
s.ehlo('client.example')
out = []
for cmd in ['XYZZY', 'RCPT TO:<a@example.com>', 'NOOP', 'DATA', 'NOOP']:
    try:
        code, msg = s.docmd(cmd)
        out.append([code, msg.decode()])
    except smtplib.SMTPServerDisconnected:
        out.append([0, 'disconnected'])
        break
print(json.dumps(out))
`, [String(ports.limits)]);
    assert.deepEqual(out.map(([c]) => c), [500, 503, 250, 503, 421], JSON.stringify(out));
    assert.equal(out[4]?.[1], '4.7.0 Too many errors');
  });

  test('a flood of pipelined bad commands: every reply up to the 421 is read, then a FIN, never a reset', async () => {
    const c = await session(ports.limits, '127.0.0.26');
    c.write('BOGUS\r\n'.repeat(2000));
    const closed = await c.closed;
    assert.deepEqual(c.replies.slice(2).map((r) => r.code), [500, 500, 500, 421], JSON.stringify(c.replies));
    assert.equal(c.replies.at(-1)?.text, '4.7.0 Too many errors');
    assert.deepEqual({ end: closed.end, error: closed.error }, { end: true, error: null });
  });
});

describe('authFailureThrottle across two workers (§2.4)', () => {
  test('per client: after 4 failures spread over both workers, AUTH gets 454 from either, the right password too, without asking the directory', async () => {
    const from = '127.0.0.31';
    for (let i = 0; i < 4; i++) {
      // A user of its own each time: the per-user count (3) must not be what trips first.
      const r = await smtpCommands({ port: ports.limits + w(i % 2), commands: [plain(`guess${i}`, 'wrong')], source: from });
      assert.equal(r[0]?.[0], 535, JSON.stringify(r));
    }
    const before = proxy.bytesToDirectory();
    for (const i of [0, 1]) {
      const r = await swaks(['--server', `127.0.0.1:${ports.limits + w(i)}`, '--local-interface', from, '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'alice-pw', '--quit-after', 'AUTH']);
      assert.deepEqual(r.replyTo('AUTH'), { code: 454, text: '4.7.0 Too many authentication failures, try again later' }, r.transcript);
    }
    assert.equal(proxy.bytesToDirectory(), before, 'not one byte reached the directory while throttled');
    // Another address with the same user is not throttled by the per-client count.
    const ok = await swaks(['--server', `127.0.0.1:${ports.limits}`, '--local-interface', '127.0.0.32', '--auth', 'PLAIN', '--auth-user', 'alice', '--auth-password', 'alice-pw', '--quit-after', 'AUTH']);
    assert.equal(ok.replyTo('AUTH')?.code, 235, ok.transcript);
    type E = { reason: string; reply: string; clientAddress: string; command: string };
    const isThrottled = (e: E) => e.reason === 'throttled' && e.clientAddress.endsWith(from);
    const items = await sys.events<E>('outcome=rejected&limit=200', (list) => list.filter(isThrottled).length >= 2);
    const throttled = items.filter(isThrottled);
    assert.ok(throttled.length >= 2, JSON.stringify(items.slice(0, 5)));
    assert.equal(throttled[0]?.reply, '454 4.7.0 Too many authentication failures, try again later');
    assert.equal(throttled[0]?.command, 'AUTH');
    const metrics = await (await fetch(`http://127.0.0.1:${sys.workers[0]!.metricsPort}/metrics`)).text();
    assert.match(metrics, /certgate_auth_throttled_total\{scope="client"\} [1-9]/);
  });

  test('per user: 3 failures for bob from three addresses throttle bob from a fourth, and nobody else', async () => {
    for (const [i, from] of ['127.0.0.41', '127.0.0.42', '127.0.0.43'].entries()) {
      const r = await swaks(['--server', `127.0.0.1:${ports.limits + w(i % 2)}`, '--local-interface', from, '--auth', 'PLAIN', '--auth-user', i === 1 ? 'BOB' : 'bob', '--auth-password', 'nope', '--quit-after', 'AUTH']);
      assert.equal(authReply(r)?.code, 535, r.transcript);
    }
    const before = proxy.bytesToDirectory();
    const bob = await swaks(['--server', `127.0.0.1:${ports.limits + w(1)}`, '--local-interface', '127.0.0.44', '--auth', 'LOGIN', '--auth-user', 'bob', '--auth-password', 'bob-pw', '--quit-after', 'AUTH']);
    assert.deepEqual(authReply(bob), { code: 454, text: '4.7.0 Too many authentication failures, try again later' }, bob.transcript);
    assert.equal(proxy.bytesToDirectory(), before, 'not one byte reached the directory while throttled');
    const carol = await swaks(['--server', `127.0.0.1:${ports.limits}`, '--local-interface', '127.0.0.44', '--auth', 'PLAIN', '--auth-user', 'carol', '--auth-password', 'carol-pw', '--quit-after', 'AUTH']);
    assert.equal(carol.replyTo('AUTH')?.code, 235, carol.transcript);
    const metrics = await (await fetch(`http://127.0.0.1:${sys.workers[1]!.metricsPort}/metrics`)).text();
    assert.match(metrics, /certgate_auth_throttled_total\{scope="user"\} [1-9]/);
  });
});

describe('limits of listeners (§2.5)', () => {
  test('maxConnections: the 3rd open connection gets 421 4.3.2 Too many connections, try again later (swaks), closed by a FIN', async () => {
    const held = await Promise.all(['127.0.0.51', '127.0.0.52'].map((a) => session(ports.small, a)));
    const third = await openRaw({ port: ports.small, localAddress: '127.0.0.53' });
    const closed = await third.closed;
    assert.deepEqual(third.replies, [{ code: 421, text: '4.3.2 Too many connections, try again later' }]);
    assert.deepEqual({ end: closed.end, error: closed.error }, { end: true, error: null });
    const r = await swaks(['--server', `127.0.0.1:${ports.small}`, '--local-interface', '127.0.0.54', '--quit-after', 'CONNECT']);
    assert.deepEqual(r.replies[0], { code: 421, text: '4.3.2 Too many connections, try again later' }, r.transcript);
    for (const c of held) c.destroy();
  });

  test('maxConnections on an implicit-TLS listener is checked before the handshake: the 3rd gets no ServerHello', async () => {
    const held = await Promise.all([0, 1].map(async () => {
      const c = await openRaw({ port: ports.implicit, localAddress: '127.0.0.55', tls: {} });
      await c.waitForReplies(1);
      return c;
    }));
    // TLS wraps the socket at once: the worker may close it before anything else runs.
    const raw = net.connect({ port: ports.implicit, host: '127.0.0.1', localAddress: '127.0.0.56' });
    const t = tls.connect({ socket: raw, rejectUnauthorized: false });
    const tlsFailed = new Promise<string>((resolve) => {
      t.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
      t.on('secureConnect', () => resolve('handshake completed'));
      t.on('close', () => resolve('closed'));
    });
    const outcome = await tlsFailed;
    assert.notEqual(outcome, 'handshake completed');
    assert.equal(raw.bytesRead, 0, `the server sent nothing (${outcome})`);
    for (const c of held) c.destroy();
  });

  test('TLS renegotiation is refused: a TLS 1.2 client asking for it gets the no_renegotiation alert; the worker serves on', async () => {
    // The listener holds 2 connections: wait until those of the test before have gone.
    const c = await eventually(() => openRaw({ port: ports.implicit, localAddress: '127.0.0.57', tls: { maxVersion: 'TLSv1.2' } }).catch(() => null), 10_000, 'a free slot');
    await c.waitForReplies(1);
    const socket = c.socket as import('node:tls').TLSSocket;
    const outcome = await Promise.race([
      new Promise<string>((resolve) => socket.renegotiate({ rejectUnauthorized: false }, (err) => resolve(err ? `error ${String((err as NodeJS.ErrnoException).code)}` : 'renegotiated'))),
      c.closed.then((x) => `error ${x.error}`),
    ]);
    // OpenSSL's client takes the server's no_renegotiation alert as the end of the connection.
    assert.equal(outcome, 'error ERR_SSL_NO_RENEGOTIATION');
    c.destroy();
    const after = await openRaw({ port: ports.implicit, localAddress: '127.0.0.58', tls: {} });
    assert.equal((await after.waitForReplies(1))[0]?.code, 220, 'the worker serves on');
    after.destroy();
  });

  test('idleTimeoutSeconds: a silent session gets 421 4.4.2 Idle timeout and is closed', async () => {
    const c = await session(ports.idle, '127.0.0.61');
    const closed = await c.closed;
    assert.deepEqual(c.replies.at(-1), { code: 421, text: '4.4.2 Idle timeout' });
    assert.equal(closed.end, true);
  });

  test('idleTimeoutSeconds: dribbling the bytes of one line does not reset it', async () => {
    const c = await session(ports.idle, '127.0.0.62');
    const line = 'NOOP and then some more words that never end';
    let sent = 0;
    const dribble = setInterval(() => c.write(line[sent++ % line.length]!), 400);
    try {
      await c.closed;
    } finally {
      clearInterval(dribble);
    }
    assert.deepEqual(c.replies.at(-1), { code: 421, text: '4.4.2 Idle timeout' });
    // Closed while the line was still incomplete: 3 s of 400 ms bytes would be well under 30 of them.
    assert.ok(sent < line.length, `cut off after ${sent} bytes of a line never completed`);
  });

  test('idleTimeoutSeconds: a command each second keeps the session; inside DATA every line counts, then silence ends it', async () => {
    const c = await session(ports.idle, '127.0.0.63');
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      c.write('NOOP\r\n');
      await c.waitForReplies(3 + i);
    }
    c.write('MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n');
    await c.waitForReplies(10);
    assert.equal(c.replies[9]?.code, 354, JSON.stringify(c.replies));
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      c.write(`line ${i}\r\n`);
    }
    assert.equal(c.replies.length, 10, 'no timeout while the message flows');
    const closed = await c.closed;
    assert.deepEqual(c.replies.at(-1), { code: 421, text: '4.4.2 Idle timeout' });
    assert.equal(closed.end, true);
  });
});
