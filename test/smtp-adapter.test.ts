// worker/smtp/adapter.ts against the installed smtp-server: the internals it relies on still
// exist, and a session controller sees every hook in the order SPEC §3 expects, over a real
// socket with a stub controller. When an smtp-server upgrade changes what the adapter uses,
// this file fails first and says what moved.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { SMTPServer } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { COMMAND_ROUTES, GatewayServer, type Envelope, type SessionController } from '../worker/smtp/adapter.ts';
import type { Reply } from '../shared/policy/rules.ts';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> };
const installed = JSON.parse(readFileSync(new URL('../node_modules/smtp-server/package.json', import.meta.url), 'utf8')) as { version: string };

describe('smtp-server internals the adapter uses', () => {
  test('package.json pins smtp-server to one exact version, the one installed', () => {
    assert.match(pkg.dependencies['smtp-server'] ?? '', /^\d+\.\d+\.\d+$/, 'an exact version, not a range');
    assert.equal(installed.version, pkg.dependencies['smtp-server']);
  });

  for (const member of ['_onCommand', 'handler_EHLO', 'upgrade', 'send', 'init', 'connectionReady', '_setListeners', '_refuse', '_sendGreeting', '_onTimeout', '_armTimeout', '_createParser', '_onClose']) {
    test(`SMTPConnection.prototype.${member} exists`, () => {
      assert.equal(typeof (SMTPConnection.prototype as unknown as Record<string, unknown>)[member], 'function');
    });
  }
  for (const member of ['_acceptSocket', '_upgrade', '_onError', '_onClientConnect', 'onConnect', 'onSecure', 'onAuth', 'onMailFrom', 'onRcptTo', 'onData', 'onClose', 'updateSecureContext']) {
    test(`SMTPServer.prototype.${member} exists`, () => {
      assert.equal(typeof (SMTPServer.prototype as unknown as Record<string, unknown>)[member], 'function');
    });
  }
  test('the net server has exactly one connection listener, the adapter\'s', () => {
    const server = new GatewayServer({ logger: false, createSession: () => stub([]), onHookError: () => undefined, ...unlimited });
    assert.equal(server.server.listenerCount('connection'), 1);
  });
});

const unlimited = { maxConnections: () => 1000, onConnectionRefused: () => undefined };

/** A controller that records the hooks it sees and answers what `answers` says. */
function stub(seen: string[], answers: Partial<Record<string, Reply | null>> = {}): SessionController {
  return {
    requestsCertificate: () => false,
    admit: () => null,
    idleTimeoutMs: () => 60_000,
    idle: () => null,
    connect: () => (seen.push('connect'), answers.connect ?? null),
    secured: async () => (seen.push('secured'), null),
    ehloFeatures: () => ({ startTls: false, auth: ['PLAIN'], size: 1000 }),
    beforeCommand: (command) => (seen.push(`before ${command}`), answers[`before ${command}`] ?? null),
    authenticate: async () => (seen.push('authenticate'), { code: 235, text: '2.7.0 Authentication successful' }),
    mailFrom: (size) => (seen.push(`mailFrom ${size}`), null),
    rcptTo: (rcpt, n) => (seen.push(`rcptTo ${rcpt} ${n}`), null),
    data: async (message: Readable, envelope: Envelope) => {
      for await (const _chunk of message) void _chunk;
      seen.push(`data ${envelope.from} ${envelope.to.join(',')} ${envelope.helo}`);
      return { code: 250, text: '2.0.0 Ok: relayed' };
    },
    replied: (command, r) => (seen.push(`replied ${command} ${r.code}`), null),
    closed: () => seen.push('closed'),
  };
}

/** Sends each line after the previous reply; answers the greeting and the last line of every reply. */
async function converse(port: number, lines: string[]): Promise<string[]> {
  const socket = net.connect(port, '127.0.0.1');
  const replies: string[] = [];
  let buffer = '';
  let pending: ((line: string) => void) | null = null;
  const waiters: string[] = [];
  socket.on('data', (d) => {
    buffer += d.toString();
    for (let nl = buffer.indexOf('\r\n'); nl >= 0; nl = buffer.indexOf('\r\n')) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 2);
      if (/^\d{3}-/.test(line)) continue; // continuation of a multi-line reply
      if (pending) {
        const p = pending;
        pending = null;
        p(line);
      } else waiters.push(line);
    }
  });
  const next = () => new Promise<string>((resolve) => (waiters.length ? resolve(waiters.shift() as string) : (pending = resolve)));
  replies.push(await next());
  for (const line of lines) {
    socket.write(`${line}\r\n`); // one reply each (a message body is one "line" ending in the dot)
    replies.push(await next());
  }
  socket.end();
  await new Promise((r) => socket.once('close', r));
  return replies;
}

describe('a session through the adapter', () => {
  let server: GatewayServer;
  let port: number;
  const seen: string[] = [];
  let refuse = false;

  before(async () => {
    server = new GatewayServer({
      logger: false,
      name: 'gw.test',
      disableReverseLookup: true,
      createSession: () => stub(seen, refuse ? { connect: { code: 554, text: '5.7.1 Access denied' } } : { 'before NOOP': { code: 250, text: '2.0.0 certgate answered' } }),
      onHookError: (err) => assert.fail(err),
      ...unlimited,
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    port = (server.server.address() as net.AddressInfo).port;
  });
  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  test('hooks in order; the session answers before smtp-server; smtp-server texts get enhanced codes; EHLO lists the session\'s features', async () => {
    seen.length = 0;
    const replies = await converse(port, ['EHLO client.test', 'NOOP', 'MAIL FROM:<a@x.test> SIZE=10', 'RCPT TO:<b@y.test>', 'DATA', 'Subject: t\r\n\r\nhello\r\n.', 'QUIT']);
    assert.match(replies[0] ?? '', /^220 gw\.test/);
    assert.equal(replies[1], '250 AUTH PLAIN', 'the last EHLO line is the session\'s AUTH feature');
    assert.equal(replies[2], '250 2.0.0 certgate answered');
    assert.equal(replies[3], '250 2.1.0 Ok');
    assert.equal(replies[4], '250 2.1.5 Ok');
    assert.match(replies[5] ?? '', /^354 /);
    assert.equal(replies[6], '250 2.0.0 Ok: relayed');
    assert.equal(replies[7], '221 2.0.0 Bye');
    await waitFor(() => seen.includes('closed'));
    const hooks = seen.filter((s) => !s.startsWith('replied'));
    assert.deepEqual(hooks, [
      'connect', 'before EHLO', 'before NOOP', 'before MAIL', 'mailFrom 10', 'before RCPT', 'rcptTo b@y.test 0', 'before DATA',
      'data a@x.test b@y.test client.test', 'before QUIT', 'closed',
    ]);
    assert.ok(seen.includes('replied DATA 250'), 'replies are observed with their command');
  });

  test('a refusal at connect is the greeting; closed() still comes once', async () => {
    seen.length = 0;
    refuse = true;
    try {
      const socket = net.connect(port, '127.0.0.1');
      const greeting = await new Promise<string>((resolve) => socket.once('data', (d) => resolve(d.toString())));
      assert.match(greeting, /^554 5\.7\.1 Access denied/);
      socket.destroy();
      await waitFor(() => seen.includes('closed'));
      assert.equal(seen.filter((s) => s === 'closed').length, 1);
    } finally {
      refuse = false;
    }
  });

  test('COMMAND_ROUTES names every command a session meets', () => {
    for (const c of ['EHLO', 'HELO', 'STARTTLS', 'AUTH', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'QUIT']) assert.ok(c in COMMAND_ROUTES, c);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
