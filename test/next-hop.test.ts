import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { X509Certificate } from 'node:crypto';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerAddressArgs, SMTPServerOptions } from 'smtp-server';
import { DotStuffer, ReplyParser, relayMessage } from '../worker/relay/next-hop.ts';
import { listening } from './helpers/ports.ts';
import { assertRejected, envelope, PREFIX, target } from './helpers/relay.ts';

const run = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// A next hop built on smtp-server (inline on purpose: independent of the shared test sink)

interface Received {
  from: string;
  to: string[];
  mailArgs: SMTPServerAddressArgs | false;
  raw: Buffer;
  bytes: number;
  secure: boolean;
}

interface Reject {
  at: 'mail' | 'rcpt' | 'data';
  code: number;
  message: string;
  /** rcpt: only this recipient is refused. */
  rcpt?: string;
}

interface HopOptions {
  tls?: { key: string; cert: string };
  reject?: Reject;
  /** Count the bytes of a message without keeping them (large messages). */
  discard?: boolean;
  options?: Partial<SMTPServerOptions>;
}

interface Hop {
  port: number;
  messages: Received[];
  /** DATA transfers started (complete or not). */
  dataStarts: number;
  /** DATA transfers that ended with an error (the connection dropped mid-message). */
  aborted: number;
  stop(): Promise<void>;
}

function smtpError(r: Reject): Error & { responseCode: number } {
  return Object.assign(new Error(r.message), { responseCode: r.code });
}

async function startHop(opts: HopOptions = {}): Promise<Hop> {
  const hop: Hop = { port: 0, messages: [], dataStarts: 0, aborted: 0, stop: async () => undefined };
  const reject = opts.reject;
  const server = new SMTPServer({
    ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert } : { hideSTARTTLS: true }),
    disabledCommands: ['AUTH'],
    authOptional: true,
    logger: false,
    closeTimeout: 200,
    disableReverseLookup: true,
    size: 64 * 1024 * 1024,
    ...opts.options,
    onMailFrom(_address, _session, cb) {
      cb(reject?.at === 'mail' ? smtpError(reject) : null);
    },
    onRcptTo(address, _session, cb) {
      const refused = reject?.at === 'rcpt' && (reject.rcpt === undefined || reject.rcpt === address.address);
      cb(refused ? smtpError(reject) : null);
    },
    onData(stream, session, cb) {
      hop.dataStarts++;
      const chunks: Buffer[] = [];
      let bytes = 0;
      stream.on('data', (c: Buffer) => {
        bytes += c.length;
        if (!opts.discard) chunks.push(c);
      });
      stream.on('error', (e: Error) => {
        hop.aborted++;
        cb(e);
      });
      stream.on('end', () => {
        if (reject?.at === 'data') return cb(smtpError(reject));
        hop.messages.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          mailArgs: session.envelope.mailFrom ? session.envelope.mailFrom.args : false,
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
          bytes,
          secure: session.secure,
        });
        cb(null, '2.0.0 queued as TEST1');
      });
    },
  });
  server.on('error', (e: Error) => console.error('next hop error:', e.message));
  hop.port = await listening(server.server, () => server.listen(0, '127.0.0.1'));
  hop.stop = () => new Promise((resolve) => server.close(() => resolve()));
  return hop;
}

/** A raw TCP next hop speaking a scripted dialogue (for what smtp-server cannot be made to do). */
async function startRaw(onConnect: (socket: net.Socket) => void): Promise<{ port: number; stop(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    onConnect(s);
  });
  srv.on('error', (e: Error) => console.error('raw server error:', e.message));
  const port = await listening(srv);
  return {
    port,
    stop: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        srv.close(() => resolve());
      }),
  };
}

/** Calls `reply(line)` for each command line; returns what to answer (null: stay silent). */
function scripted(greeting: string | null, reply: (line: string, socket: net.Socket) => string | null): (s: net.Socket) => void {
  return (socket) => {
    if (greeting !== null) socket.write(greeting);
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let nl: number;
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        const out = reply(line, socket);
        if (out !== null && !socket.destroyed) socket.write(out);
      }
    });
  };
}

async function closedPort(): Promise<number> {
  const srv = net.createServer();
  const port = await listening(srv);
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** A message stream that hands out exactly these chunks (Buffers, not strings). */
function chunks(...parts: (string | Buffer)[]): Readable {
  return Readable.from(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p)));
}

const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1);

/** global.gc without --expose-gc: the flag can be set at run time and read from a fresh context. */
function exposeGc(): () => void {
  v8.setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Certificates (openssl CLI, always asynchronous: a sync child blocks the servers in this process)

interface Pki {
  caPem: string;
  otherCaPem: string;
  key: string;
  cert: string;
  /** Same key and CA, but names only mx.other.example. */
  otherNameCert: string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  await run('openssl', args, { cwd: dir, timeout: 30_000 });
}

async function makePki(dir: string): Promise<Pki> {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const caExt = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'];
  await openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=certgate test CA', ...caExt]);
  await openssl(dir, ['req', '-x509', ...ec, '-keyout', 'other.key', '-out', 'other.pem', '-days', '2', '-subj', '/CN=certgate other CA', ...caExt]);
  await openssl(dir, ['req', ...ec, '-keyout', 'srv.key', '-out', 'srv.csr', '-subj', '/CN=localhost']);
  await writeFile(
    path.join(dir, 'srv.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n',
  );
  await openssl(dir, ['x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'srv.pem', '-days', '2', '-extfile', 'srv.ext']);
  await writeFile(path.join(dir, 'other.ext'), 'subjectAltName=DNS:mx.other.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await openssl(dir, ['x509', '-req', '-in', 'srv.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'other-name.pem', '-days', '2', '-extfile', 'other.ext']);
  const read = (f: string): Promise<string> => readFile(path.join(dir, f), 'utf8');
  return { caPem: await read('ca.pem'), otherCaPem: await read('other.pem'), key: await read('srv.key'), cert: await read('srv.pem'), otherNameCert: await read('other-name.pem') };
}

// ---------------------------------------------------------------------------------------------
// Units: dot-stuffing and reply parsing

describe('DotStuffer', () => {
  const stuffAll = (input: Buffer, cut: number[]): string => {
    const s = new DotStuffer();
    const out: Buffer[] = [];
    let from = 0;
    for (const c of [...cut, input.length]) {
      out.push(s.push(input.subarray(from, c)));
      from = c;
    }
    out.push(s.end());
    return Buffer.concat(out).toString('latin1');
  };

  test('stuffs leading dots, normalises bare LF and CR, whatever the chunk boundaries', () => {
    const input = Buffer.from('.a\r\n..b\nc\r.d\r\n\r\n.\r\nend');
    const expected = '..a\r\n...b\r\nc\r\n..d\r\n\r\n..\r\nend\r\n.\r\n';
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j++) {
        assert.equal(stuffAll(input, [i, j]), expected, `cut at ${i},${j}`);
      }
    }
  });

  test('end marker completes the last line', () => {
    assert.equal(stuffAll(Buffer.from('x\r\n'), []), 'x\r\n.\r\n');
    assert.equal(stuffAll(Buffer.from('x'), []), 'x\r\n.\r\n');
    assert.equal(stuffAll(Buffer.from('x\r'), []), 'x\r\n.\r\n');
    assert.equal(stuffAll(Buffer.alloc(0), []), '.\r\n');
  });
});

describe('ReplyParser', () => {
  test('joins multi-line replies, keeps text as sent, across chunk boundaries', () => {
    const p = new ReplyParser();
    assert.deepEqual(p.feed(Buffer.from('250-mx.example\r\n250-PIPE')), []);
    assert.deepEqual(p.feed(Buffer.from('LINING\r\n250 SIZE 100\r\n354\r\n')), [
      { code: 250, text: 'mx.example\nPIPELINING\nSIZE 100' },
      { code: 354, text: '' },
    ]);
    assert.deepEqual(p.feed(Buffer.from('550 5.1.1 <x@y> unknown\n')), [{ code: 550, text: '5.1.1 <x@y> unknown' }]);
  });

  test('rejects inconsistent codes, garbage and over-long lines', () => {
    assert.throws(() => new ReplyParser().feed(Buffer.from('250-a\r\n251 b\r\n')), /code changed/);
    assert.throws(() => new ReplyParser().feed(Buffer.from('hello\r\n')), /malformed/);
    assert.throws(() => new ReplyParser().feed(Buffer.from('25O ok\r\n')), /malformed/);
    assert.throws(() => new ReplyParser().feed(Buffer.from('250 ' + 'x'.repeat(5000))), /longer than/);
    assert.throws(() => new ReplyParser().feed(Buffer.from('250 ' + 'x'.repeat(5000) + '\r\n')), /longer than/);
  });
});

// ---------------------------------------------------------------------------------------------
// Plain relay

describe('relay over plain SMTP', () => {
  let hop: Hop;
  before(async () => {
    hop = await startHop();
  });
  after(async () => {
    await hop.stop();
  });

  test('the message arrives intact, prefix first, dots stuffed across chunks, final CRLF added', async () => {
    hop.messages.length = 0;
    const message = chunks('Subject: dots\r\n\r\n.one\r\n.', '.two\r', '\n...three\nbare lf\r\n.', '\r\nlast line without CRLF');
    const r = await relayMessage(target(hop.port), envelope({ to: ['bob@example.org', 'carol@example.net'] }), PREFIX, message);
    assert.equal(r.accepted, true, JSON.stringify(r));
    assert.deepEqual(r.reply, { code: 250, text: '2.0.0 queued as TEST1' });
    assert.equal(hop.messages.length, 1);
    const m = hop.messages[0]!;
    assert.equal(m.from, 'alice@example.com');
    assert.deepEqual(m.to, ['bob@example.org', 'carol@example.net']);
    const expected = Buffer.concat([PREFIX, Buffer.from('Subject: dots\r\n\r\n.one\r\n..two\r\n...three\r\nbare lf\r\n.\r\nlast line without CRLF\r\n')]);
    assert.equal(m.raw.toString('latin1'), expected.toString('latin1'));
    assert.ok(m.raw.equals(expected));
    assert.equal(m.secure, false);
    assert.equal(message.readableEnded, true);
  });

  test('8-bit UTF-8 content with SMTPUTF8 addresses arrives byte for byte with SMTPUTF8 and BODY=8BITMIME', async () => {
    hop.messages.length = 0;
    const body = Buffer.from('Subject: Grüße\r\nFrom: jörg@bücher.example\r\n\r\nDéjà vu — 日本語\r\n', 'utf8');
    // split inside a multi-byte character: bytes must pass through untouched
    const message = chunks(body.subarray(0, 12), body.subarray(12));
    const env = envelope({ from: 'jörg@bücher.example', to: ['ünïcode@exämple.org'], smtpUtf8: true, body8bit: true, size: body.length });
    const r = await relayMessage(target(hop.port), env, PREFIX, message);
    assert.equal(r.accepted, true, JSON.stringify(r));
    const m = hop.messages[0]!;
    assert.equal(m.from, 'jörg@bücher.example');
    assert.deepEqual(m.to, ['ünïcode@exämple.org']);
    assert.ok(m.raw.equals(Buffer.concat([PREFIX, body])));
    assert.ok(m.mailArgs);
    assert.equal(m.mailArgs.SMTPUTF8, true);
    assert.equal(m.mailArgs.BODY, '8BITMIME');
    assert.equal(m.mailArgs.SIZE, String(body.length));
  });
});

describe('next hop refusals are passed back and nothing is delivered', () => {
  const cases: { name: string; reject: Reject; to?: string[]; options?: Partial<SMTPServerOptions>; stage: string }[] = [
    { name: '4xx at MAIL', reject: { at: 'mail', code: 451, message: '4.3.0 sender check unavailable' }, stage: 'mail' },
    { name: '5xx at MAIL', reject: { at: 'mail', code: 550, message: '5.7.1 sender not allowed' }, stage: 'mail' },
    {
      name: '5xx at one RCPT (pipelined)',
      reject: { at: 'rcpt', code: 550, message: '5.1.1 <nobody@example.org>: user unknown', rcpt: 'nobody@example.org' },
      to: ['bob@example.org', 'nobody@example.org', 'carol@example.org'],
      stage: 'rcpt',
    },
    {
      name: '4xx at one RCPT (no PIPELINING)',
      reject: { at: 'rcpt', code: 452, message: '4.2.2 mailbox full', rcpt: 'carol@example.org' },
      to: ['bob@example.org', 'carol@example.org'],
      options: { hidePIPELINING: true },
      stage: 'rcpt',
    },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const hop = await startHop({ reject: c.reject, ...(c.options ? { options: c.options } : {}) });
      try {
        const message = chunks('Subject: x\r\n\r\nbody\r\n');
        const r = await relayMessage(target(hop.port), envelope(c.to ? { to: c.to } : {}), PREFIX, message);
        assertRejected(r, c.reject.code, c.stage);
        assert.equal(r.reply.text, c.reject.message);
        assert.equal(hop.dataStarts, 0, 'DATA must not be sent');
        assert.equal(message.readableEnded, true, 'the client message is drained');
      } finally {
        await hop.stop();
      }
    });
  }

  test('5xx at the end of DATA', async () => {
    const hop = await startHop({ reject: { at: 'data', code: 554, message: '5.7.1 message content rejected' } });
    try {
      const r = await relayMessage(target(hop.port), envelope(), PREFIX, chunks('Subject: x\r\n\r\nbody\r\n'));
      assertRejected(r, 554, 'message');
      assert.equal(r.reply.text, '5.7.1 message content rejected');
      assert.equal(hop.messages.length, 0);
    } finally {
      await hop.stop();
    }
  });

  test('4xx at the end of DATA', async () => {
    const hop = await startHop({ reject: { at: 'data', code: 452, message: '4.3.1 insufficient system storage' } });
    try {
      const r = await relayMessage(target(hop.port), envelope(), PREFIX, chunks('body\r\n'));
      assertRejected(r, 452, 'message');
      assert.equal(r.reply.text, '4.3.1 insufficient system storage');
    } finally {
      await hop.stop();
    }
  });

  test('a non-ASCII address to a next hop without SMTPUTF8 → 550 5.6.7 before MAIL', async () => {
    const hop = await startHop({ options: { hideSMTPUTF8: true } });
    try {
      const r = await relayMessage(target(hop.port), envelope({ to: ['ünïcode@exämple.org'], smtpUtf8: true }), PREFIX, chunks('body\r\n'));
      assertRejected(r, 550, 'mail', /^5\.6\.7 /);
      assert.equal(hop.dataStarts, 0);
    } finally {
      await hop.stop();
    }
  });

  test('ASCII addresses with the SMTPUTF8 flag are relayed without the parameter when the next hop lacks it', async () => {
    const hop = await startHop({ options: { hideSMTPUTF8: true } });
    try {
      const r = await relayMessage(target(hop.port), envelope({ smtpUtf8: true }), PREFIX, chunks('Subject: Grüße\r\n\r\nx\r\n'));
      assert.equal(r.accepted, true, JSON.stringify(r));
      const args = hop.messages[0]!.mailArgs;
      assert.ok(!args || !('SMTPUTF8' in args));
    } finally {
      await hop.stop();
    }
  });
});

describe('unreachable, silent and misbehaving next hops → 451 4.4.1', () => {
  test('nothing listens on the port: fails fast', async () => {
    const port = await closedPort();
    const started = Date.now();
    const message = chunks('body\r\n');
    const r = await relayMessage(target(port), envelope(), PREFIX, message);
    assertRejected(r, 451, 'connect', /^4\.4\.1 cannot connect to 127\.0\.0\.1:\d+: .*ECONNREFUSED/);
    assert.ok(Date.now() - started < 2000);
    assert.equal(message.readableEnded, true);
  });

  test('a next hop that never answers: fails after timeoutMs', async () => {
    const raw = await startRaw(() => undefined);
    try {
      const started = Date.now();
      const r = await relayMessage(target(raw.port, { timeoutMs: 300 }), envelope(), PREFIX, chunks('body\r\n'));
      const elapsed = Date.now() - started;
      assertRejected(r, 451, 'connect', /^4\.4\.1 no reply to greeting from next hop within 300 ms/);
      assert.ok(elapsed >= 280 && elapsed < 2000, `elapsed ${elapsed}`);
    } finally {
      await raw.stop();
    }
  });

  test('a next hop that stops answering after MAIL: fails after timeoutMs', async () => {
    const raw = await startRaw(scripted('220 mx\r\n', (l) => (l.startsWith('EHLO') ? '250 mx\r\n' : null)));
    try {
      const r = await relayMessage(target(raw.port, { timeoutMs: 300 }), envelope(), PREFIX, chunks('body\r\n'));
      assertRejected(r, 451, 'mail', /^4\.4\.1 no reply to MAIL/);
    } finally {
      await raw.stop();
    }
  });

  test('a 554 greeting is passed back; a 421 greeting becomes 451 with the next hop text', async () => {
    const raw554 = await startRaw(scripted('554 5.3.2 no service here\r\n', () => null));
    const raw421 = await startRaw(scripted('421 4.3.2 shutting down\r\n', () => null));
    try {
      assertRejected(await relayMessage(target(raw554.port), envelope(), PREFIX, chunks('x\r\n')), 554, 'connect', /^5\.3\.2 no service here$/);
      assertRejected(await relayMessage(target(raw421.port), envelope(), PREFIX, chunks('x\r\n')), 451, 'connect', /^4\.3\.2 shutting down$/);
    } finally {
      await raw554.stop();
      await raw421.stop();
    }
  });

  test('a malformed or inconsistent reply is a protocol error', async () => {
    const bad = await startRaw(scripted('220 mx\r\n', (l) => (l.startsWith('EHLO') ? '250-mx\r\n220 PIPELINING\r\n' : null)));
    const long = await startRaw(scripted('220-' + 'x'.repeat(5000) + '\r\n', () => null));
    try {
      assertRejected(await relayMessage(target(bad.port), envelope(), PREFIX, chunks('x\r\n')), 451, 'ehlo', /^4\.4\.1 protocol error: reply code changed/);
      assertRejected(await relayMessage(target(long.port), envelope(), PREFIX, chunks('x\r\n')), 451, 'connect', /^4\.4\.1 protocol error: reply line longer/);
    } finally {
      await bad.stop();
      await long.stop();
    }
  });

  test('EHLO refused with 5xx falls back to HELO', async () => {
    let helo = false;
    const raw = await startRaw(
      scripted('220 mx\r\n', (l) => {
        if (l.startsWith('EHLO')) return '502 5.5.1 unrecognised\r\n';
        if (l.startsWith('HELO')) return (helo = true), '250 mx\r\n';
        if (l.startsWith('MAIL')) return l === 'MAIL FROM:<alice@example.com>' ? '250 ok\r\n' : '501 params\r\n';
        if (l.startsWith('RCPT')) return '250 ok\r\n';
        if (l === 'DATA') return '354 go\r\n';
        if (l === '.') return '250 2.0.0 done\r\n';
        if (l === 'QUIT') return '221 bye\r\n';
        return null;
      }),
    );
    try {
      const r = await relayMessage(target(raw.port), envelope({ body8bit: true, size: 10 }), PREFIX, chunks('x\r\n'));
      assert.equal(r.accepted, true, JSON.stringify(r));
      assert.equal(helo, true);
    } finally {
      await raw.stop();
    }
  });

  test('the connection drops in the middle of DATA → 451, the client message is still drained', async () => {
    let received = 0;
    const raw = await startRaw(
      scripted('220 mx\r\n', (l, socket) => {
        if (l.startsWith('EHLO')) return '250 mx\r\n';
        if (l.startsWith('MAIL') || l.startsWith('RCPT')) return '250 ok\r\n';
        if (l === 'DATA') return '354 go\r\n';
        if (++received === 3) socket.destroy();
        return null;
      }),
    );
    try {
      const message = Readable.from(
        (function* () {
          for (let i = 0; i < 2000; i++) yield Buffer.from(`line ${i} ${'y'.repeat(200)}\r\n`);
        })(),
      );
      const r = await relayMessage(target(raw.port), envelope(), PREFIX, message);
      assertRejected(r, 451, 'message', /^4\.4\.1 /);
      assert.equal(message.readableEnded, true);
    } finally {
      await raw.stop();
    }
  });
});

describe('STARTTLS', () => {
  let dir: string;
  let pki: Pki;
  let tlsHop: Hop;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'certgate-next-hop-'));
    pki = await makePki(dir);
    tlsHop = await startHop({ tls: { key: pki.key, cert: pki.cert } });
  });
  after(async () => {
    await tlsHop.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('required, next hop without STARTTLS → 451 4.4.1, nothing delivered', async () => {
    const hop = await startHop();
    try {
      const r = await relayMessage(target(hop.port, { tls: 'required', caPem: pki.caPem }), envelope(), PREFIX, chunks('x\r\n'));
      assertRejected(r, 451, 'tls', /^4\.4\.1 next hop does not offer STARTTLS$/);
      assert.equal(hop.dataStarts, 0);
    } finally {
      await hop.stop();
    }
  });

  test('required with the CA that signed the next hop certificate → delivered over TLS', async () => {
    tlsHop.messages.length = 0;
    const r = await relayMessage(target(tlsHop.port, { tls: 'required', caPem: pki.caPem }), envelope(), PREFIX, chunks('Subject: tls\r\n\r\nsecret\r\n'));
    assert.equal(r.accepted, true, JSON.stringify(r));
    assert.equal(tlsHop.messages.length, 1);
    assert.equal(tlsHop.messages[0]!.secure, true);
    assert.ok(tlsHop.messages[0]!.raw.equals(Buffer.concat([PREFIX, Buffer.from('Subject: tls\r\n\r\nsecret\r\n')])));
  });

  test('required: the host name must match the certificate (IP and DNS SANs match, another name does not)', async () => {
    const dns = await relayMessage(target(tlsHop.port, { host: 'localhost', tls: 'required', caPem: pki.caPem }), envelope(), PREFIX, chunks('x\r\n'));
    assert.equal(dns.accepted, true, JSON.stringify(dns));
    const hop = await startHop({ tls: { key: pki.key, cert: pki.otherNameCert } });
    try {
      const r = await relayMessage(target(hop.port, { tls: 'required', caPem: pki.caPem }), envelope(), PREFIX, chunks('x\r\n'));
      assertRejected(r, 451, 'tls', /^4\.4\.1 TLS handshake with next hop failed: ERR_TLS_CERT_ALTNAME_INVALID/);
      assert.equal(hop.dataStarts, 0);
    } finally {
      await hop.stop();
    }
  });

  test('required with a wrong CA → 451 4.4.1, nothing delivered', async () => {
    const before = tlsHop.dataStarts;
    const r = await relayMessage(target(tlsHop.port, { tls: 'required', caPem: pki.otherCaPem }), envelope(), PREFIX, chunks('x\r\n'));
    assertRejected(r, 451, 'tls', /^4\.4\.1 TLS handshake with next hop failed/);
    assert.equal(tlsHop.dataStarts, before);
  });

  test('required with no caPem uses the system store, which does not know the test CA → 451', async () => {
    const r = await relayMessage(target(tlsHop.port, { tls: 'required' }), envelope(), PREFIX, chunks('x\r\n'));
    assertRejected(r, 451, 'tls', /^4\.4\.1 TLS handshake with next hop failed/);
  });

  test('opportunistic uses TLS when offered (any certificate without caPem)', async () => {
    tlsHop.messages.length = 0;
    const r = await relayMessage(target(tlsHop.port, { tls: 'opportunistic' }), envelope(), PREFIX, chunks('x\r\n'));
    assert.equal(r.accepted, true, JSON.stringify(r));
    assert.equal(tlsHop.messages[0]!.secure, true);
  });

  test('opportunistic with a caPem that does not match → 451 (no downgrade to plain)', async () => {
    const r = await relayMessage(target(tlsHop.port, { tls: 'opportunistic', caPem: pki.otherCaPem }), envelope(), PREFIX, chunks('x\r\n'));
    assertRejected(r, 451, 'tls');
  });

  test('opportunistic without STARTTLS on offer goes on in plain text', async () => {
    const hop = await startHop();
    try {
      const r = await relayMessage(target(hop.port, { tls: 'opportunistic' }), envelope(), PREFIX, chunks('x\r\n'));
      assert.equal(r.accepted, true, JSON.stringify(r));
      assert.equal(hop.messages[0]!.secure, false);
    } finally {
      await hop.stop();
    }
  });

  test('none never uses STARTTLS even when offered', async () => {
    tlsHop.messages.length = 0;
    const r = await relayMessage(target(tlsHop.port, { tls: 'none' }), envelope(), PREFIX, chunks('x\r\n'));
    assert.equal(r.accepted, true, JSON.stringify(r));
    assert.equal(tlsHop.messages[0]!.secure, false);
  });

  test("checkServerCertificate returning 'revoked' → 451 4.4.1, nothing delivered; it gets the chain leaf first", async () => {
    const before = tlsHop.dataStarts;
    let seen: X509Certificate[] = [];
    const check = async (chain: X509Certificate[]): Promise<string | null> => {
      seen = chain;
      return 'revoked';
    };
    const r = await relayMessage(target(tlsHop.port, { tls: 'required', caPem: pki.caPem, checkServerCertificate: check }), envelope(), PREFIX, chunks('x\r\n'));
    assertRejected(r, 451, 'tls', /^4\.4\.1 next hop certificate revoked$/);
    assert.equal(tlsHop.dataStarts, before);
    assert.ok(seen.length >= 1);
    assert.match(seen[0]!.subject, /CN=localhost/);
    assert.match(seen[0]!.issuer, /CN=certgate test CA/);
  });

  test('checkServerCertificate returning null lets the message through', async () => {
    const r = await relayMessage(
      target(tlsHop.port, { tls: 'required', caPem: pki.caPem, checkServerCertificate: async () => null }),
      envelope(),
      PREFIX,
      chunks('x\r\n'),
    );
    assert.equal(r.accepted, true, JSON.stringify(r));
  });
});

describe('streaming', () => {
  test('a 25 MB message is streamed: it arrives in full and RSS grows by less than 30 MB', async (t) => {
    const hop = await startHop({ discard: true });
    try {
      const chunkSize = 64 * 1024;
      const count = 400; // 25 MiB
      const line = Buffer.from('.a line that starts with a dot and is long enough to matter in this test 0123456789\r\n');
      const block = Buffer.alloc(chunkSize);
      for (let o = 0; o < chunkSize; o += line.length) line.copy(block, o);
      let sent = 0;
      const message = new Readable({
        read() {
          // a fresh copy each time, as a socket would hand out: nothing is retained by the producer
          this.push(sent++ < count ? Buffer.from(block) : null);
        },
      });
      // Fresh 64 KB buffers are garbage as soon as they are written; V8 collects them lazily
      // (its external-memory trigger is tens of MB), which says nothing about buffering. So each
      // sample is taken after a full GC: what remains is what the relay holds on to.
      const gc = exposeGc();
      gc();
      const rssBefore = process.memoryUsage().rss;
      let rssMax = rssBefore;
      const sampler = setInterval(() => {
        gc();
        rssMax = Math.max(rssMax, process.memoryUsage().rss);
      }, 200); // a full GC takes 10-40 ms here: sampling more often would starve the transfer
      const r = await relayMessage(target(hop.port), envelope({ size: chunkSize * count }), PREFIX, message);
      clearInterval(sampler);
      t.diagnostic(`RSS growth (sampled after GC): ${mb(rssMax - rssBefore)} MB`);
      assert.equal(r.accepted, true, JSON.stringify(r));
      await sleep(50);
      assert.equal(hop.messages.length, 1);
      // the next hop un-stuffs the dots: it counts exactly the original bytes (+ the final CRLF the
      // block does not end with)
      const endsWithCrlf = block.subarray(-2).equals(Buffer.from('\r\n'));
      assert.equal(hop.messages[0]!.bytes, PREFIX.length + chunkSize * count + (endsWithCrlf ? 0 : 2));
      assert.ok(rssMax - rssBefore < 30 * 1024 * 1024, `RSS grew by ${mb(rssMax - rssBefore)} MB`);
    } finally {
      await hop.stop();
    }
  });

  test('a client stream that errors mid-way → 451 4.4.1 and the next hop gets no message', async () => {
    const hop = await startHop();
    try {
      let reads = 0;
      const message = new Readable({
        read() {
          if (++reads <= 3) this.push(Buffer.from(`chunk ${reads} ${'z'.repeat(1000)}\r\n`));
          else this.destroy(new Error('client connection lost'));
        },
      });
      const r = await relayMessage(target(hop.port), envelope(), PREFIX, message);
      assertRejected(r, 451, 'message', /^4\.4\.1 message from the client was not received in full: client connection lost/);
      await sleep(200);
      assert.equal(hop.dataStarts, 1, 'DATA had begun');
      assert.equal(hop.messages.length, 0, 'no message delivered');
      assert.equal(hop.aborted, 1);
    } finally {
      await hop.stop();
    }
  });

  test('a client stream that already failed before DATA → 451, DATA never sent', async () => {
    const hop = await startHop();
    try {
      const message = new Readable({ read() {} });
      message.destroy(new Error('gone early'));
      const r = await relayMessage(target(hop.port), envelope(), PREFIX, message);
      assertRejected(r, 451, 'data', /gone early/);
      assert.equal(hop.dataStarts, 0);
    } finally {
      await hop.stop();
    }
  });
});
