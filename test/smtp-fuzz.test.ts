// A bounded, seeded fuzz of the worker's SMTP front door: a few thousand inputs (random and
// mutated commands, overlong lines, NUL and 8-bit bytes, bare CR and LF, broken base64 in
// AUTH, SASL exchanges cut short, cut TLS handshakes) from unauthenticated clients. Asserts
// that the worker stays up, that every line it sends is a well-formed SMTP reply line, and
// that nothing reaches the next hop. FUZZ_SEED replays a run; the seed is in every message.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System } from './helpers/system.ts';
import { freePort, listening } from './helpers/ports.ts';
import { swaks } from './helpers/smtp-clients.ts';
import { ldapProfile, listener, people } from './fixtures/deployments.ts';
import { seededRandom } from './helpers/random.ts';

const SEED = Number(process.env.FUZZ_SEED ?? 20261202);
const SESSIONS = 160;
const LINES_PER_SESSION = 20;
const CUT_HANDSHAKES = 60;
const PARALLEL = 4;

const VERBS = ['EHLO', 'HELO', 'MAIL FROM:', 'RCPT TO:', 'DATA', 'RSET', 'NOOP', 'VRFY', 'EXPN', 'HELP', 'AUTH PLAIN', 'AUTH LOGIN', 'AUTH EXTERNAL', 'AUTH CRAM-MD5', 'BDAT', 'ETRN', 'TURN', 'XCLIENT', 'XFORWARD', 'SIZE'];
const ARGS = ['client.example', '<a@example.com>', '<>', '<rcpt@example.com> SIZE=100', '<x@[127.0.0.1]>', 'BODY=8BITMIME', 'SMTPUTF8', '=', '*', 'AGFsaWNlAGFsaWNlLXB3', 'AGFsaWNlAHdyb25n', '%%%', 'dXNlcg==', ''];

function generator(rand: () => number) {
  const pick = <T,>(a: readonly T[]): T => a[Math.floor(rand() * a.length)] as T;
  const bytes = (n: number, from = 0, to = 256) => Buffer.from(Array.from({ length: n }, () => from + Math.floor(rand() * (to - from))));
  const b64junk = () => {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=!*-_ ';
    return Array.from({ length: 1 + Math.floor(rand() * 60) }, () => alphabet[Math.floor(rand() * alphabet.length)]).join('');
  };
  const mutate = (line: Buffer): Buffer => {
    const b = Buffer.from(line);
    switch (Math.floor(rand() * 7)) {
      case 0: return Buffer.concat([b.subarray(0, Math.floor(rand() * b.length)), bytes(1 + Math.floor(rand() * 4))]);
      case 1: return Buffer.from(b.toString('latin1').split('').map((c) => (rand() < 0.5 ? c.toLowerCase() : c.toUpperCase())).join(''), 'latin1');
      case 2: { if (b.length) b[Math.floor(rand() * b.length)] = pick([0, 0x80, 0xff, 0x0d, 0x0a, 0x1b, 0x7f]); return b; }
      case 3: return Buffer.concat([b, Buffer.from(' '), b]);
      case 4: return Buffer.concat([bytes(Math.floor(rand() * 8), 0x80, 0x100), b]);
      case 5: return b.subarray(0, Math.max(1, Math.floor(b.length / 2)));
      default: return b;
    }
  };
  /** One input: bytes including its line end (CRLF, bare LF, bare CR or none). */
  return (): Buffer => {
    const kind = rand();
    let line: Buffer;
    if (kind < 0.5) line = Buffer.from(`${pick(VERBS)} ${pick(ARGS)}`, 'latin1');
    else if (kind < 0.65) line = mutate(Buffer.from(`${pick(VERBS)} ${pick(ARGS)}`, 'latin1'));
    else if (kind < 0.75) line = Buffer.from(`AUTH ${pick(['PLAIN', 'LOGIN', 'plain', 'EXTERNAL'])} ${b64junk()}`);
    else if (kind < 0.82) line = Buffer.from(b64junk()); // a SASL continuation, or junk
    else if (kind < 0.9) line = bytes(1 + Math.floor(rand() * 200));
    else if (kind < 0.95) line = Buffer.alloc(1000 + Math.floor(rand() * 70_000), pick(['A', '\0', '\xff', ' ']), 'latin1');
    else line = Buffer.from(pick(['', '.', '..', 'QUIT extra', 'DATA\r\n.\r\n', '\0\0\0']), 'latin1');
    const end = pick(['\r\n', '\r\n', '\r\n', '\n', '\r', '']);
    return Buffer.concat([line, Buffer.from(end, 'latin1')]);
  };
}

/** Every line the server sent must be `ddd ` or `ddd-` with a 2xx-5xx code, printable. */
function badLines(received: string): string[] {
  const lines = received.split('\r\n');
  const last = lines.pop();
  const bad = lines.filter((l) => !/^[2-5][0-9]{2}[ -][\x20-\x7e]*$/.test(l) && !/^[2-5][0-9]{2}$/.test(l));
  if (last !== '') bad.push(`unterminated: ${JSON.stringify(last?.slice(0, 80))}`);
  return bad;
}

let sys: System;
let port = 0;
let implicitPort = 0;

before(async () => {
  sys = await startSystem({ workers: 1 });
  await sys.slapd.add(peopleLdif(people()));
  const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  port = await freePort();
  implicitPort = await freePort();
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: false, smtpAuth: true }));
  await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name: 'ldap-auth', type: 'ldap', ldapProfile: 'corp', checkWithLdap: false });
  // Deep enough to reach every state: many bad commands and failures allowed per session.
  await sys.api.ok('POST', '/v1/mail-flow-policies', {
    name: 'FUZZ', action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: true, smtpAuthRequiresTls: false,
    maxMessageBytes: 100_000, maxRecipients: 5, maxBadCommands: 1000, maxAuthFailuresPerConnection: 1000, maxConnectionsPerClient: null,
    authFailureThrottle: { perClient: null, perUser: null },
  });
  const tlsConf = { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: sys.pki.root.certPem };
  await sys.api.ok('POST', '/v1/listeners', { ...listener(sys, { name: 'fuzz', port, authProfile: 'ldap-auth', tls: tlsConf, policy: 'FUZZ' }), idleTimeoutSeconds: 5 });
  await sys.api.ok('POST', '/v1/listeners', { ...listener(sys, { name: 'fuzz-tls', port: implicitPort, implicitTls: true, authProfile: 'ldap-auth', tls: tlsConf, policy: 'FUZZ' }), idleTimeoutSeconds: 5 });
  await sys.settled();
});

after(async () => {
  await sys?.stop();
});

/** One session: greeting, then the inputs pipelined in small bursts; resolves with all it received. */
function fuzzSession(inputs: Buffer[]): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let received = '';
    let i = 0;
    s.on('data', (b: Buffer) => {
      received += b.toString('latin1');
      // A 220 to STARTTLS hands the socket to TLS: nothing more to fuzz here in plain text.
      if (/^220 .*\r\n$/m.test(received.split('\r\n').slice(-2).join('\r\n')) && i > 0 && /STARTTLS/i.test(inputs[i - 1]!.toString('latin1'))) s.end();
    });
    s.on('error', () => undefined);
    s.on('close', () => resolve(received));
    const timer = setTimeout(() => s.destroy(), 15_000);
    s.on('close', () => clearTimeout(timer));
    const next = () => {
      if (s.destroyed || !s.writable) return;
      if (i >= inputs.length) { s.write('\r\nQUIT\r\n'); return; }
      s.write(inputs[i++]!);
      setImmediate(next);
    };
    s.once('data', () => next());
  });
}

/** A real ClientHello from Node's TLS stack, as the first bytes a TLS client sends. */
async function captureClientHello(): Promise<Buffer> {
  const server = net.createServer();
  const p = await listening(server);
  const hello = new Promise<Buffer>((resolve) => server.once('connection', (s) => s.once('data', (b: Buffer) => { resolve(b); s.destroy(); })));
  const client = tls.connect({ port: p, host: '127.0.0.1', rejectUnauthorized: false });
  client.on('error', () => undefined);
  const b = await hello;
  client.destroy();
  server.close();
  return b;
}

/** A TLS handshake whose client flight stops after `cut` bytes (after EHLO and STARTTLS when `starttls`). */
function cutHandshake(target: number, hello: Buffer, cut: number, starttls: boolean): Promise<void> {
  return new Promise((resolve) => {
    const raw = net.connect(target, '127.0.0.1');
    raw.on('error', () => undefined);
    const timer = setTimeout(() => raw.destroy(), 10_000);
    raw.on('close', () => { clearTimeout(timer); resolve(); });
    const send = () => {
      raw.write(hello.subarray(0, cut));
      setTimeout(() => raw.destroy(), 20);
    };
    if (!starttls) return send();
    let seen = '';
    let step = 0;
    raw.on('data', (b: Buffer) => {
      seen += b.toString('latin1');
      if (step === 0 && /^220 [^\r\n]*\r\n/.test(seen)) {
        step = 1;
        raw.write('EHLO fuzz\r\nSTARTTLS\r\n');
      } else if (step === 1 && /\r\n220 [^\r\n]*\r\n$/.test(seen)) {
        step = 2;
        send();
      }
    });
  });
}

describe(`SMTP fuzz (seed ${SEED})`, () => {
  test(`${SESSIONS * LINES_PER_SESSION} inputs in ${SESSIONS} sessions: well-formed replies only, nothing relayed, worker up`, async () => {
    const rand = seededRandom(SEED);
    const input = generator(rand);
    const plan = Array.from({ length: SESSIONS }, () => Array.from({ length: LINES_PER_SESSION }, input));
    const problems: string[] = [];
    for (let start = 0; start < plan.length; start += PARALLEL) {
      const batch = plan.slice(start, start + PARALLEL);
      const results = await Promise.all(batch.map((inputs) => fuzzSession(inputs)));
      results.forEach((received, k) => {
        if (!received.startsWith('220 ')) problems.push(`session ${start + k}: no greeting: ${JSON.stringify(received.slice(0, 80))}`);
        for (const bad of badLines(received)) problems.push(`session ${start + k}: ${JSON.stringify(bad.slice(0, 120))}`);
      });
      assert.equal(sys.workers[0]!.child.exitCode, null, `worker exited during session ${start} (seed ${SEED}): ${sys.workers[0]!.output().slice(-2000)}`);
    }
    assert.deepEqual(problems.slice(0, 10), [], `seed ${SEED}`);
    assert.equal(sys.sink.messages.length, 0, `nothing reaches the next hop from an unauthenticated session (seed ${SEED})`);
  });

  test(`${CUT_HANDSHAKES} cut TLS handshakes (implicit TLS and STARTTLS): the worker stays up and serves`, async () => {
    const rand = seededRandom(SEED ^ 0x5eed);
    const hello = await captureClientHello();
    for (let i = 0; i < CUT_HANDSHAKES; i += PARALLEL) {
      await Promise.all(Array.from({ length: PARALLEL }, (_, k) => cutHandshake(k % 2 ? port : implicitPort, hello, Math.floor(rand() * hello.length), k % 2 === 1)));
    }
    assert.equal(sys.workers[0]!.child.exitCode, null, sys.workers[0]!.output().slice(-2000));
    const r = await swaks(['--server', `127.0.0.1:${port}`, '--tls', '--quit-after', 'EHLO']);
    assert.equal(r.exitCode, 0, r.transcript);
    assert.deepEqual(r.replies.at(-1), { code: 221, text: '2.0.0 Bye' }, r.transcript);
    assert.equal(sys.sink.messages.length, 0);
  });
});
