// SPEC §2.5 `proxyProtocol` end to end: two real workers behind a real HAProxy (TCP mode,
// `send-proxy` and `send-proxy-v2`), clients bound to different loopback source addresses.
// The address in the header drives sender groups (a client in a reject group gets 554 through
// HAProxy exactly as directly), per-client limits, events and Received:; STARTTLS and implicit
// TLS pass through (the header goes before the TLS bytes). Connections from an untrusted
// address, without a header, with a malformed or truncated one (fuzzed over real sockets), or
// whose header never completes, are closed without a greeting, and the worker lives on.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startSystem, type System } from './helpers/system.ts';
import { startHaproxy, type TestHaproxy } from './helpers/haproxy.ts';
import { swaks, type SwaksResult } from './helpers/smtp-clients.ts';
import { proxyHeaderV1, proxyHeaderV2 } from './helpers/proxy-header.ts';
import { freePort } from './helpers/ports.ts';
import { fetchText } from '../bench/lib/stats.ts';
import { parseProxyHeader } from '../worker/smtp/proxy-protocol.ts';

let sys: System;
let haproxy: TestHaproxy;
const ports = { plain: 0, implicit: 0, direct: 0, slow: 0 };
/** A client address in the listeners' reject sender group, and one in the limited group. */
const BLOCKED = '127.0.0.3';
const LIMITED = '127.0.0.4';
const CLIENT = '127.0.0.2';
const PER_CLIENT_LIMIT = 2;

const policy = (name: string, o: Record<string, unknown>) => ({
  name, action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false,
  maxMessageBytes: 1_000_000, maxRecipients: 10, ...o,
});

function listenerBody(name: string, port: number, o: Record<string, unknown>) {
  return {
    name, address: '127.0.0.1', port, hostname: 'gateway.example.com',
    senderGroups: [
      { name: 'BLOCKED', senders: [`${BLOCKED}/32`], policy: 'REJECTED' },
      { name: 'LIMITED', senders: [`${LIMITED}/32`], policy: 'LIMITED' },
    ],
    defaultPolicy: 'RELAYED',
    acceptedDomains: ['example.com'],
    nextHop: { host: '127.0.0.1', port: sys.sink.port, tls: 'none', caPem: null },
    ...o,
  };
}

const workerPorts = (port: number) => sys.workers.map((w) => ({ port: port + w.offset }));

function send(port: number, from: string, extra: string[] = []): Promise<SwaksResult> {
  return swaks(['--server', `127.0.0.1:${port}`, '--local-interface', from, '--from', 'sender@example.com', '--to', 'rcpt@example.com', ...extra]);
}

const relayed = (r: SwaksResult) => r.replies.some((x) => x.code === 250 && /relayed|queued|Ok/i.test(x.text)) && r.replyTo('.')?.code === 250;

/** What a raw client sees: everything the server wrote, and whether the server closed. */
async function raw(o: { port: number; localAddress?: string; bytes: Buffer; end?: boolean; waitMs?: number }): Promise<{ data: string; closed: boolean }> {
  return new Promise((resolve) => {
    let data = '';
    let closed = false;
    const s = net.connect({ port: o.port, host: '127.0.0.1', localAddress: o.localAddress }, () => {
      s.write(o.bytes);
      if (o.end) s.end();
    });
    s.setEncoding('latin1');
    s.on('data', (d: string) => (data += d));
    s.on('error', () => undefined);
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ data, closed });
    }, o.waitMs ?? 15_000);
    s.on('close', () => {
      closed = true;
      clearTimeout(timer);
      resolve({ data, closed });
    });
  });
}

before(async () => {
  sys = await startSystem({ workers: 2 });
  const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
  const tls = { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: null };
  for (const key of Object.keys(ports) as (keyof typeof ports)[]) ports[key] = await freePort();
  await sys.api.ok('POST', '/v1/mail-flow-policies', policy('RELAYED', {}));
  await sys.api.ok('POST', '/v1/mail-flow-policies', policy('REJECTED', { action: 'reject' }));
  await sys.api.ok('POST', '/v1/mail-flow-policies', policy('LIMITED', { maxConnectionsPerClient: PER_CLIENT_LIMIT }));
  const behindBalancer = { proxyProtocol: { trustedProxies: ['127.0.0.1/32'] } };
  await sys.api.ok('POST', '/v1/listeners', listenerBody('edge', ports.plain, { ...behindBalancer, tls }));
  await sys.api.ok('POST', '/v1/listeners', listenerBody('edge-tls', ports.implicit, { ...behindBalancer, tls, implicitTls: true }));
  await sys.api.ok('POST', '/v1/listeners', listenerBody('direct', ports.direct, { tls }));
  // The header deadline is the listener's idle timeout when that is shorter than 10 s.
  await sys.api.ok('POST', '/v1/listeners', listenerBody('slow', ports.slow, { ...behindBalancer, tls, idleTimeoutSeconds: 2 }));
  await sys.settled(10_000);
  haproxy = await startHaproxy([
    { name: 'v1', proxy: 'v1', backends: workerPorts(ports.plain) },
    { name: 'v2', proxy: 'v2', backends: workerPorts(ports.plain), serverOptions: 'proxy-v2-options crc32c' },
    { name: 'v2tls', proxy: 'v2', backends: workerPorts(ports.implicit) },
    { name: 'none', proxy: 'none', backends: workerPorts(ports.plain) },
    { name: 'v2check', proxy: 'v2', backends: workerPorts(ports.plain), smtpCheck: true },
    { name: 'v1check', proxy: 'v1', backends: workerPorts(ports.plain), smtpCheck: true },
  ]);
});

after(async () => {
  await haproxy?.stop();
  await sys?.stop();
});

describe('through HAProxy, the header\'s address is the client address', () => {
  for (const mode of ['v1', 'v2'] as const) {
    test(`${mode}: a client in a reject sender group gets 554 exactly as directly; another relays, and Received: names it`, async () => {
      const direct = await send(ports.direct, BLOCKED);
      assert.equal(direct.replies[0]?.code, 554, direct.transcript);
      const blocked = await send(haproxy.ports[mode]!, BLOCKED);
      assert.deepEqual(blocked.replies[0], direct.replies[0], blocked.transcript);

      const before = sys.sink.messages.length;
      // Both workers serve (round robin): two sessions.
      for (let i = 0; i < 2; i++) {
        const ok = await send(haproxy.ports[mode]!, CLIENT);
        assert.ok(relayed(ok), ok.transcript);
      }
      await sys.sink.waitFor(before + 2);
      for (const m of sys.sink.messages.slice(before)) assert.match(m.raw.toString('latin1'), new RegExp(`^Received: from \\S+ \\(unknown \\[${CLIENT.replace(/\./g, '\\.')}\\]\\)`, 'm'));
    });
  }

  test('events record the client address from the header', async () => {
    const since = new Date(Date.now() - 1000).toISOString();
    await send(haproxy.ports.v2!, BLOCKED);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const { items } = await sys.api.ok<{ items: Array<{ clientAddress: string; reason: string; listener: string }> }>('GET', `/v1/events?outcome=rejected&listener=edge&since=${encodeURIComponent(since)}`);
      if (items.some((e) => e.clientAddress === BLOCKED && e.reason === 'policy-reject')) break;
      assert.ok(Date.now() < deadline, `no policy-reject event for ${BLOCKED}: ${JSON.stringify(items)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  test('STARTTLS and implicit TLS pass through with the header before the TLS bytes', async () => {
    const starttls = await send(haproxy.ports.v2!, CLIENT, ['--tls']);
    assert.ok(relayed(starttls) && /STARTTLS/.test(starttls.transcript), starttls.transcript);
    const implicit = await send(haproxy.ports.v2tls!, CLIENT, ['--tlsc']);
    assert.ok(relayed(implicit), implicit.transcript);
    const blocked = await send(haproxy.ports.v2tls!, BLOCKED, ['--tlsc']);
    assert.equal(blocked.replies[0]?.code, 554, blocked.transcript);
  });

  // The accept path hands the header's address to the session as its clientAddress, which the
  // per-client count (worker/smtp/client-connections.ts) keys on.
  test('maxConnectionsPerClient counts the header\'s address, not the balancer\'s', async () => {
    // One worker, so that the count is that process's (SPEC §2.4): a client header sent by hand.
    const port = ports.plain + sys.workers[0]!.offset;
    const open: net.Socket[] = [];
    const greeting = (from: string) => new Promise<string>((resolve) => {
      const s = net.connect({ port, host: '127.0.0.1' }, () => s.write(proxyHeaderV2({ address: from, port: 40000 + open.length }, { address: '127.0.0.1', port })));
      open.push(s);
      s.setEncoding('latin1');
      s.once('data', (d: string) => resolve(d.split('\r\n')[0] ?? ''));
      s.on('error', () => resolve('error'));
    });
    try {
      for (let i = 0; i < PER_CLIENT_LIMIT; i++) assert.match(await greeting(LIMITED), /^220 /);
      assert.equal(await greeting(LIMITED), '421 4.7.0 Too many connections from your address');
      assert.match(await greeting('127.0.0.5'), /^220 /, 'another client behind the same balancer is not affected');
    } finally {
      for (const s of open) s.destroy();
    }
  });

  test('HAProxy\'s SMTP health checks (v2 LOCAL, v1 with its own address) get a greeting: servers UP', async () => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const states = [await haproxy.serverStates('v2check'), await haproxy.serverStates('v1check')];
      if (states.every((s) => Object.values(s).length === 2 && Object.values(s).every((v) => v === 'UP'))) break;
      assert.ok(Date.now() < deadline, `health checks: ${JSON.stringify(states)}\n${haproxy.log().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  });
});

describe('anything but a trusted proxy with a valid header is closed without a greeting', () => {
  test('a balancer that sends no header, a client straight to the port, a header from an untrusted address', async () => {
    const viaPlain = await raw({ port: haproxy.ports.none!, bytes: Buffer.from('EHLO client\r\n') });
    assert.deepEqual(viaPlain, { data: '', closed: true }, 'HAProxy without send-proxy');
    const port = ports.plain + sys.workers[0]!.offset;
    const noHeader = await raw({ port, bytes: Buffer.from('EHLO client\r\n') });
    assert.deepEqual(noHeader, { data: '', closed: true }, 'SMTP without a header');
    const header = proxyHeaderV1({ address: CLIENT, port: 1234 }, { address: '127.0.0.1', port });
    const untrusted = await raw({ port, localAddress: CLIENT, bytes: header });
    assert.deepEqual(untrusted, { data: '', closed: true }, 'a valid header from 127.0.0.2, which is not a trusted proxy');
    const tlsFirst = await raw({ port: ports.implicit + sys.workers[0]!.offset, bytes: Buffer.from('160301', 'hex') });
    assert.deepEqual(tlsFirst, { data: '', closed: true }, 'a TLS ClientHello without a header');
  });

  test('a header that never completes is closed at the deadline (the listener\'s idle timeout, 2 s)', async () => {
    const port = ports.slow + sys.workers[0]!.offset;
    const started = Date.now();
    const partial = await raw({ port, bytes: Buffer.from('PROXY TCP4 127.0.0.2 127.0.0.1 4000'), waitMs: 30_000 });
    assert.deepEqual(partial, { data: '', closed: true });
    assert.ok(Date.now() - started >= 1_500, 'not before the deadline');
  });

  test('fuzz: 160 malformed or truncated headers over real sockets never yield a session nor hurt the worker', async () => {
    const port = ports.plain + sys.workers[0]!.offset;
    let seed = 0x5eed;
    const next = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const valid = [
      proxyHeaderV1({ address: CLIENT, port: 1 }, { address: '127.0.0.1', port }),
      proxyHeaderV2({ address: CLIENT, port: 1 }, { address: '127.0.0.1', port }),
    ];
    const inputs: Buffer[] = [];
    for (let i = 0; i < 160; i++) {
      const base = Buffer.from(valid[i % 2]!);
      const kind = i % 4;
      if (kind === 0) inputs.push(base.subarray(0, Math.floor(next() * base.length))); // truncated, then the client ends
      else if (kind === 1) { base[Math.floor(next() * base.length)] ^= 1 + Math.floor(next() * 255); inputs.push(base); } // one byte changed
      else if (kind === 2) inputs.push(Buffer.from(Array.from({ length: 1 + Math.floor(next() * 120) }, () => Math.floor(next() * 256)))); // noise
      else inputs.push(Buffer.concat([base.subarray(0, 12 + Math.floor(next() * 8)), Buffer.alloc(Math.floor(next() * 200), 0xff)])); // a broken tail
    }
    let sessions = 0;
    // Bounded concurrency: 8 at a time.
    for (let i = 0; i < inputs.length; i += 8) {
      const results = await Promise.all(inputs.slice(i, i + 8).map((bytes) => raw({ port, bytes, end: true, waitMs: 20_000 })));
      results.forEach((r, j) => {
        const input = inputs[i + j]!;
        // A mutation may leave a valid header (a changed port digit): then, and only then, a session
        // (the parser is checked against a reference decoder in test/proxy-protocol.test.ts).
        if (parseProxyHeader(input).state === 'header') sessions++;
        else assert.deepEqual(r, { data: '', closed: true }, `input ${input.toString('hex')}`);
      });
    }
    assert.ok(sessions < 40, `most inputs are invalid: ${sessions} were valid headers`);
    for (const w of sys.workers) assert.equal(w.child.exitCode, null, `worker ${w.offset} alive\n${w.output().slice(-2000)}`);
    assert.doesNotMatch(sys.workers[0]!.output(), /uncaught|unhandled/i);
    const ok = await send(haproxy.ports.v2!, CLIENT);
    assert.ok(relayed(ok), `a real session afterwards\n${ok.transcript}`);
    const metrics = await fetchText(`http://127.0.0.1:${sys.workers[0]!.metricsPort}/metrics`);
    const rejected = [...metrics.matchAll(/^certgate_proxy_protocol_rejected_total\{[^}]*\} (\d+)/gm)].reduce((a, m) => a + Number(m[1]), 0);
    assert.ok(rejected >= 100, `certgate_proxy_protocol_rejected_total ${rejected}`);
  });
});
