// Next-hop connection reuse (worker/relay/pool.ts with relayMessage): SPEC §3 rule 8 still holds
// on pooled connections — 250 only after the next hop accepted this message, its own 4xx/5xx
// passed back, nothing delivered twice. A real smtp-server next hop for reuse, idle close and TLS;
// a small scripted next hop for the faults no real server makes on demand (a connection dropped
// at RSET, 421 on a reused connection, death mid-message or right after the final dot).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Readable } from 'node:stream';
import type { X509Certificate } from 'node:crypto';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerOptions } from 'smtp-server';
import type { RelayResult } from '../worker/relay/next-hop.ts';
import { NextHopPool } from '../worker/relay/pool.ts';
import { createPki, type Pki } from './helpers/pki.ts';
import { listening } from './helpers/ports.ts';
import { assertRejected, envelope, PREFIX, target } from './helpers/relay.ts';

const body = (text: string): Readable => Readable.from([Buffer.from(`Subject: ${text}\r\n\r\n${text}\r\n`)]);

function assertAccepted(r: RelayResult): void {
  assert.equal(r.accepted, true, JSON.stringify(r));
}

/** Polls `cond` every 20 ms until it holds; fails with `what` after 10 s. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.fail(`timed out waiting for ${what}`);
}

// ---------------------------------------------------------------------------------------------
// A real next hop (smtp-server) that counts connections

interface RealHop {
  port: number;
  connections: number;
  closed: number;
  subjects: string[];
  stop(): Promise<void>;
}

async function startRealHop(options: Partial<SMTPServerOptions> = {}): Promise<RealHop> {
  const hop: RealHop = { port: 0, connections: 0, closed: 0, subjects: [], stop: async () => undefined };
  const server = new SMTPServer({
    hideSTARTTLS: !options.key,
    disabledCommands: ['AUTH'],
    authOptional: true,
    logger: false,
    closeTimeout: 200,
    disableReverseLookup: true,
    ...options,
    onConnect(_session, cb) {
      hop.connections++;
      cb();
    },
    onClose() {
      hop.closed++;
    },
    onData(stream, _session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        hop.subjects.push(/^Subject: (.*)$/m.exec(Buffer.concat(chunks).toString())?.[1]?.trim() ?? '');
        cb(null, '2.0.0 queued');
      });
    },
  });
  server.on('error', () => undefined);
  hop.port = await listening(server.server);
  hop.stop = () => new Promise((resolve) => server.close(() => resolve()));
  return hop;
}

// ---------------------------------------------------------------------------------------------
// A scripted next hop: plain SMTP with PIPELINING, and a fault hook per command

interface Ctx {
  /** 1-based connection number. */
  connection: number;
  /** 1-based mail transaction on this connection (counted at MAIL). */
  transaction: number;
  /** The command verb, 'DATA-LINE' for the first line of message data, '.' for the end of data. */
  command: string;
}

/** null: behave normally; a reply line to send instead (a 421 also closes); 'drop': close without a word. */
type Fault = (ctx: Ctx) => string | 'drop' | null;

interface FakeHop {
  port: number;
  connections: number;
  /** Connection numbers closed so far. */
  closed: Set<number>;
  /** Every command line received, per connection: `${connection} ${line}`. */
  log: string[];
  /** Messages received in full (the final dot arrived), whatever was answered. */
  complete: string[];
  fault: Fault;
  stop(): Promise<void>;
}

async function startFakeHop(): Promise<FakeHop> {
  const sockets = new Set<net.Socket>();
  const hop: FakeHop = { port: 0, connections: 0, closed: new Set(), log: [], complete: [], fault: () => null, stop: async () => undefined };
  const srv = net.createServer((socket) => {
    sockets.add(socket);
    const ctx: Ctx = { connection: ++hop.connections, transaction: 0, command: '' };
    socket.on('error', () => undefined);
    socket.on('close', () => {
      sockets.delete(socket);
      hop.closed.add(ctx.connection);
    });
    socket.write('220 fake.example ESMTP\r\n');
    let buf = '';
    let data: string[] | null = null;
    /** Recipients accepted in the current transaction. */
    let recipients = 0;
    /** Handles one line; false when the connection is gone. */
    const handle = (line: string): boolean => {
      if (data) {
        ctx.command = data.length === 0 && line !== '.' ? 'DATA-LINE' : line === '.' ? '.' : '';
        if (line !== '.') {
          data.push(line);
          return ctx.command === 'DATA-LINE' ? act(null) !== null : true;
        }
        hop.complete.push(/^Subject: (.*)$/m.exec(data.join('\n'))?.[1] ?? '');
        data = null;
        return act('250 2.0.0 queued\r\n') !== null;
      }
      hop.log.push(`${ctx.connection} ${line}`);
      ctx.command = line.split(/[ :]/, 1)[0]!.toUpperCase();
      if (ctx.command === 'MAIL') ctx.transaction++;
      if (ctx.command === 'MAIL' || ctx.command === 'RSET') recipients = 0;
      const normal: Record<string, string> = {
        EHLO: '250-fake.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n',
        HELO: '250 fake.example\r\n',
        RSET: '250 2.0.0 ok\r\n',
        MAIL: '250 2.1.0 ok\r\n',
        RCPT: '250 2.1.5 ok\r\n',
        DATA: '354 go ahead\r\n',
        QUIT: '221 2.0.0 bye\r\n',
      };
      if (ctx.command === 'DATA') {
        const sent = act(recipients > 0 ? normal.DATA! : '554 5.5.1 no valid recipients\r\n');
        if (sent?.startsWith('354') && !socket.destroyed) data = [];
        return sent !== null;
      }
      const sent = act(normal[ctx.command] ?? '500 5.5.1 unknown\r\n');
      if (ctx.command === 'RCPT' && sent?.startsWith('250')) recipients++;
      const ok = sent !== null;
      if (ctx.command === 'QUIT') socket.end();
      return ok;
    };
    /** Sends `normal` unless the fault hook says otherwise; what was sent, null when the connection is gone. */
    const act = (normal: string | null): string | null => {
      const f = hop.fault(ctx);
      if (f === 'drop') {
        socket.destroy();
        return null;
      }
      const out = f ?? normal ?? '';
      if (out) socket.write(out);
      if (f?.startsWith('421')) {
        socket.end();
        return null;
      }
      return out;
    };
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl !== -1 && !socket.destroyed; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (!handle(line)) {
          buf = '';
          return;
        }
      }
    });
  });
  hop.port = await listening(srv);
  hop.stop = () =>
    new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      srv.close(() => resolve());
    });
  return hop;
}

// ---------------------------------------------------------------------------------------------

describe('next-hop connection reuse', () => {
  let hop: FakeHop;
  let pool = new NextHopPool();
  before(async () => {
    hop = await startFakeHop();
  });
  after(async () => {
    await hop.stop();
  });

  /** A fresh pool, a clean log and a fault for one test. */
  function reset(fault: Fault = () => null, limits = {}): void {
    pool.close();
    pool = new NextHopPool(limits);
    hop.log.length = 0;
    hop.complete.length = 0;
    hop.fault = fault;
  }
  const send = (subject: string): Promise<RelayResult> => pool.relay(target(hop.port), envelope(), PREFIX, body(subject));

  test('consecutive messages share one connection, RSET before each reuse, pipelined with MAIL and RCPT', async () => {
    reset();
    const first = hop.connections;
    for (const s of ['m1', 'm2', 'm3']) assertAccepted(await send(s));
    assert.equal(hop.connections - first, 1, 'one connection for three messages');
    assert.deepEqual(hop.complete, ['m1', 'm2', 'm3']);
    const c = `${first + 1}`;
    const verbs = hop.log.map((l) => l.replace(/^\d+ /, '').split(/[ :]/, 1)[0]);
    assert.deepEqual(verbs, ['EHLO', 'MAIL', 'RCPT', 'DATA', 'RSET', 'MAIL', 'RCPT', 'DATA', 'RSET', 'MAIL', 'RCPT', 'DATA']);
    assert.ok(hop.log.every((l) => l.startsWith(`${c} `)));
    assert.equal(pool.idleCount, 1);
  });

  test('a pooled connection dropped at RSET (closed as it was reused) → retried once on a fresh one, delivered once', async () => {
    reset(({ transaction, command }) => (transaction === 1 && command === 'RSET' ? 'drop' : null));
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertAccepted(await send('m2'));
    assert.equal(hop.connections - first, 2);
    assert.deepEqual(hop.complete, ['m1', 'm2']);
  });

  test('RSET refused on a reused connection → the message goes on a fresh connection', async () => {
    reset(({ transaction, command }) => (transaction === 1 && command === 'RSET' ? '503 5.5.1 confused\r\n' : null));
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertAccepted(await send('m2'));
    assert.equal(hop.connections - first, 2);
    assert.deepEqual(hop.complete, ['m1', 'm2']);
  });

  test('421 on a reused connection → retried on a fresh connection, delivered once', async () => {
    reset(({ transaction, command }) => (transaction === 2 && command === 'MAIL' ? '421 4.7.0 too many messages on this connection\r\n' : null));
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertAccepted(await send('m2'));
    assert.equal(hop.connections - first, 2);
    assert.deepEqual(hop.complete, ['m1', 'm2']);
  });

  test('retried only once: 421 again on the fresh connection goes back to the client as 451 with its text', async () => {
    let sent = 0;
    reset(({ command }) => (command === 'MAIL' && sent++ > 0 ? '421 4.3.2 shutting down\r\n' : null));
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertRejected(await send('m2'), 451, 'mail', /^4\.3\.2 shutting down$/);
    assert.equal(hop.connections - first, 2, 'the pooled connection and one fresh one, no third');
    assert.deepEqual(hop.complete, ['m1']);
  });

  test("the next hop's own 4xx/5xx on a reused connection go back as they are, and the connection stays in use", async () => {
    reset(({ transaction, command }) =>
      transaction === 2 && command === 'RCPT' ? '550 5.1.1 no such user\r\n' : transaction === 3 && command === '.' ? '452 4.3.1 queue full\r\n' : null,
    );
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertRejected(await send('m2'), 550, 'rcpt', /^5\.1\.1 no such user$/);
    assertRejected(await send('m3'), 452, 'message', /^4\.3\.1 queue full$/);
    assertAccepted(await send('m4'));
    assert.equal(hop.connections - first, 1);
    assert.deepEqual(hop.complete, ['m1', 'm3', 'm4']);
  });

  test('one recipient: DATA pipelined with MAIL and RCPT; a next hop answering 354 after refusing it → the connection is dropped, nothing delivered', async () => {
    reset(({ transaction, command }) =>
      transaction === 2 && command === 'RCPT' ? '550 5.1.1 no such user\r\n' : transaction === 2 && command === 'DATA' ? '354 go ahead anyway\r\n' : null,
    );
    const first = hop.connections;
    assertAccepted(await send('m1'));
    const c = hop.connections;
    assertRejected(await send('m2'), 550, 'rcpt', /^5\.1\.1 no such user$/);
    await until(() => hop.closed.has(c), 'the connection left inside DATA dropped');
    assert.ok(!hop.log.some((l) => l.startsWith(`${c} `) && / QUIT$/.test(l)), 'no QUIT sent as message text');
    assertAccepted(await send('m3'));
    assert.equal(hop.connections - first, 2);
    assert.deepEqual(hop.complete, ['m1', 'm3']);
  });

  test('a reused connection dying mid-message → 451 4.4.1, not retried, nothing delivered', async () => {
    reset(({ transaction, command }) => (transaction === 2 && command === 'DATA-LINE' ? 'drop' : null));
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertRejected(await send('m2'), 451, 'message', /^4\.4\.1 /);
    assert.equal(hop.connections - first, 1, 'no retry once the message was under way');
    assert.deepEqual(hop.complete, ['m1']);
  });

  test('a reused connection dying after the final dot, before its reply → 451 4.4.1, never retried (the next hop may have taken it)', async () => {
    reset(({ transaction, command }) => (transaction === 2 && command === '.' ? 'drop' : null));
    const first = hop.connections;
    assertAccepted(await send('m1'));
    assertRejected(await send('m2'), 451, 'message', /^4\.4\.1 /);
    assert.equal(hop.connections - first, 1);
    assert.deepEqual(hop.complete, ['m1', 'm2'], 'the next hop got m2 exactly once');
    assertAccepted(await send('m3'));
    assert.deepEqual(hop.complete, ['m1', 'm2', 'm3']);
  });

  test('idle connections are bounded: maxIdlePerHop kept, the others and idle ones closed with QUIT', async () => {
    reset(() => null, { maxIdlePerHop: 1, idleMs: 300 });
    const first = hop.connections;
    const results = await Promise.all(['c1', 'c2', 'c3'].map(send));
    results.forEach(assertAccepted);
    const ours = [first + 1, first + 2, first + 3];
    assert.equal(hop.connections, first + 3);
    assert.equal(pool.idleCount, 1);
    const closed = (): number => ours.filter((c) => hop.closed.has(c)).length;
    await until(() => closed() >= 2, 'two connections beyond the bound closed');
    await until(() => pool.idleCount === 0 && closed() === 3, 'the idle connection closed after idleMs');
    assert.deepEqual(hop.log.filter((l) => / QUIT$/.test(l)).map((l) => Number(l.split(' ')[0])).filter((c) => ours.includes(c)).sort(), ours, 'each closed politely with QUIT');
  });

  test('maxTransactions: a connection that carried its share is closed, the next message opens a new one', async () => {
    reset(() => null, { maxTransactions: 2 });
    const first = hop.connections;
    for (const s of ['m1', 'm2', 'm3']) assertAccepted(await send(s));
    assert.equal(hop.connections - first, 2);
    assert.deepEqual(hop.complete, ['m1', 'm2', 'm3']);
  });

  test('close() QUITs idle connections and keeps nothing given back later', async () => {
    reset();
    assertAccepted(await send('m1'));
    const c = hop.connections;
    assert.equal(pool.idleCount, 1);
    pool.close();
    assert.equal(pool.idleCount, 0);
    await until(() => hop.closed.has(c), 'the idle connection closed');
    assertAccepted(await send('m2'));
    assert.equal(pool.idleCount, 0);
  });
});

describe('next-hop connection reuse with a real next hop', () => {
  test('a next hop that closes idle connections (smtp-server socketTimeout: 421, close) → the next message on a fresh connection', async () => {
    const hop = await startRealHop({ socketTimeout: 1500 });
    const pool = new NextHopPool({ idleMs: 60_000 });
    try {
      assertAccepted(await pool.relay(target(hop.port), envelope(), PREFIX, body('r1')));
      await until(() => hop.closed === 1, 'the next hop closing the idle connection');
      assertAccepted(await pool.relay(target(hop.port), envelope(), PREFIX, body('r2')));
      assert.equal(hop.connections, 2);
      assert.deepEqual(hop.subjects, ['r1', 'r2']);
      assertAccepted(await pool.relay(target(hop.port), envelope(), PREFIX, body('r3')));
      assert.equal(hop.connections, 2, 'reused while the next hop keeps it');
    } finally {
      pool.close();
      await hop.stop();
    }
  });

  describe('over TLS', () => {
    let pki: Pki;
    let hop: RealHop;
    before(async () => {
      pki = await createPki();
      const server = await pki.server({ cn: 'localhost', ip: ['127.0.0.1'], dns: ['localhost'] });
      hop = await startRealHop({ key: server.keyPem, cert: server.chainPem });
    });
    after(async () => {
      await hop.stop();
      await pki.cleanup();
    });

    test('the outboundSmtpTls check runs on the new connection and again at every reuse; revoked in between → 451, nothing delivered', async () => {
      const pool = new NextHopPool();
      const seen: number[] = [];
      let verdict: string | null = null;
      const check = async (chain: X509Certificate[]): Promise<string | null> => {
        seen.push(chain.length);
        return verdict;
      };
      const t = target(hop.port, { tls: 'required', caPem: pki.root.certPem, checkServerCertificate: check });
      try {
        const before = hop.connections;
        assertAccepted(await pool.relay(t, envelope(), PREFIX, body('t1')));
        assertAccepted(await pool.relay(t, envelope(), PREFIX, body('t2')));
        assert.equal(hop.connections - before, 1, 'the TLS connection was reused');
        assert.equal(seen.length, 2, 'checked at connect and at reuse');
        assert.ok(seen.every((n) => n >= 1));
        verdict = 'revoked';
        assertRejected(await pool.relay(t, envelope(), PREFIX, body('t3')), 451, 'tls', /^4\.4\.1 next hop certificate revoked$/);
        assert.deepEqual(hop.subjects.slice(-2), ['t1', 't2']);
        assert.equal(pool.idleCount, 0, 'a connection whose certificate failed the check is not kept');
      } finally {
        pool.close();
      }
    });

    test('a target with another CA never gets a connection verified against a different one', async () => {
      const pool = new NextHopPool();
      try {
        assertAccepted(await pool.relay(target(hop.port, { tls: 'required', caPem: pki.root.certPem }), envelope(), PREFIX, body('k1')));
        assert.equal(pool.idleCount, 1);
        const r = await pool.relay(target(hop.port, { tls: 'required', caPem: pki.foreign.certPem }), envelope(), PREFIX, body('k2'));
        assertRejected(r, 451, 'tls', /^4\.4\.1 TLS handshake with next hop failed/);
        assert.ok(!hop.subjects.includes('k2'));
        const other = await pool.relay(target(hop.port, { tls: 'required', caPem: pki.root.certPem, heloName: 'other.example.com' }), envelope(), PREFIX, body('k3'));
        assertAccepted(other);
        assert.equal(pool.idleCount, 2, 'another HELO name is another pool key');
      } finally {
        pool.close();
      }
    });
  });
});
