// The worker as a process: it follows listener changes without a restart, streams large
// messages, speaks 8BITMIME/SMTPUTF8/PIPELINING, exposes metrics and drains on SIGTERM.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startSystem, type System } from './helpers/system.ts';
import { python, smtplib, swaks } from './helpers/smtp-clients.ts';
import { freePort, waitForPort } from './helpers/ports.ts';
import { listener } from './fixtures/deployments.ts';
import { eventually } from './helpers/wait.ts';

let sys: System;
const open = { name: 'OPEN', action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false, maxMessageBytes: 64 * 1024 * 1024, maxRecipients: 10 };

async function metric(name: string, w = 0): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${sys.workers[w]!.metricsPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').at(-1)) : NaN;
}

/** The certificate a TLS server on `port` presents after STARTTLS. */
async function presentedCertificate(port: number): Promise<X509Certificate> {
  const out = await new Promise<Buffer>((resolve, reject) => {
    import('node:child_process').then(({ execFile }) =>
      execFile('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-starttls', 'smtp', '-showcerts'], { timeout: 10_000 }, (err, stdout) =>
        stdout ? resolve(Buffer.from(stdout)) : reject(err)).stdin?.end('QUIT\n'));
  });
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(out.toString())?.[0];
  assert.ok(pem, 'no certificate presented');
  return new X509Certificate(pem);
}

before(async () => {
  sys = await startSystem({ workers: 1 });
  await sys.api.ok('POST', '/v1/mail-flow-policies', open);
});

after(async () => {
  await sys?.stop();
});

describe('worker lifecycle', () => {
  test('a listener added, moved to another port, given a new certificate and removed: followed without a restart', async () => {
    const a = await sys.pki.server({ cn: 'first.example.com' });
    const b = await sys.pki.server({ cn: 'second.example.com' });
    const port1 = await freePort();
    const body = listener(sys, { name: 'moving', port: port1, authProfile: null, tls: { certificatePem: a.certPem, privateKeyPem: a.keyPem, clientCaPem: null }, policy: 'OPEN' });
    await sys.api.ok('POST', '/v1/listeners', body);
    await sys.settled();
    assert.match((await presentedCertificate(port1)).subject, /CN=first\.example\.com/);

    await sys.api.ok('PUT', '/v1/listeners/moving', { ...body, tls: { certificatePem: b.certPem, privateKeyPem: b.keyPem, clientCaPem: null } });
    await sys.settled();
    assert.match((await presentedCertificate(port1)).subject, /CN=second\.example\.com/);

    const port2 = await freePort();
    await sys.api.ok('PUT', '/v1/listeners/moving', { ...body, port: port2 });
    await sys.settled();
    await waitForPort(port2, 2000);
    const gone = await swaks(['--server', `127.0.0.1:${port1}`, '--quit-after', 'CONNECT']);
    assert.equal(gone.replies.length, 0, gone.transcript);

    await sys.api.call('DELETE', '/v1/listeners/moving');
    await sys.settled();
    const removed = await swaks(['--server', `127.0.0.1:${port2}`, '--quit-after', 'CONNECT']);
    assert.equal(removed.replies.length, 0, removed.transcript);
  });

  describe('relaying', () => {
    let port: number;
    before(async () => {
      const server = await sys.pki.server({ cn: 'gateway.example.com' });
      port = await freePort();
      await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'relay', port, authProfile: null, tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: null }, policy: 'OPEN' }));
      await sys.settled();
    });

    test('EHLO advertises PIPELINING, 8BITMIME, SMTPUTF8, SIZE and STARTTLS', async () => {
      const r = await swaks(['--server', `127.0.0.1:${port}`, '--quit-after', 'EHLO']);
      for (const k of ['PIPELINING', '8BITMIME', 'SMTPUTF8', `SIZE ${open.maxMessageBytes}`, 'STARTTLS']) assert.ok(r.ehlo.includes(k), `${k} in ${r.ehlo.join(', ')}`);
    });

    test('8BITMIME and SMTPUTF8 messages arrive intact, pipelined commands are answered in order', async () => {
      const before = sys.sink.messages.length;
      const steps = await smtplib({
        port, smtputf8: true, from: 'jürgen@example.com', to: ['zoë@example.com'],
        message: 'Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln — ✓\r\n',
      });
      assert.deepEqual(steps.find((s) => s[0] === 'DATA'), ['DATA', 250, '{}'], JSON.stringify(steps));
      await sys.sink.waitFor(before + 1);
      const m = sys.sink.messages.at(-1)!;
      assert.equal(m.from, 'jürgen@example.com');
      assert.deepEqual(m.to, ['zoë@example.com']);
      assert.match(m.raw.toString('utf8'), /Grüße aus Köln — ✓/);
      const pipelined = await swaks(['--server', `127.0.0.1:${port}`, '--pipeline', '--from', 'a@example.com', '--to', 'b@example.com,c@example.com']);
      assert.ok(pipelined.replies.some((x) => x.code === 250 && x.text.includes('relayed')), pipelined.transcript);
    });

    test('25 MB messages are streamed: they arrive whole and the worker does not grow with them', async () => {
      // The first large message lifts RSS once (allocator high-water mark and external buffers
      // that V8 frees lazily); a worker that buffered messages would grow with every one after.
      await smtplib({ port, bodyLines: 25_000 });
      const rssBefore = await metric('process_resident_memory_bytes');
      const heapBefore = await metric('nodejs_heap_size_used_bytes');
      const before = sys.sink.messages.length;
      for (let i = 0; i < 4; i++) {
        const steps = await smtplib({ port, bodyLines: 25_000 });
        assert.deepEqual(steps.find((s) => s[0] === 'DATA'), ['DATA', 250, '{}'], JSON.stringify(steps));
      }
      await sys.sink.waitFor(before + 4);
      assert.ok(sys.sink.messages.at(-1)!.raw.length > 25_000_000);
      const rssGrowth = ((await metric('process_resident_memory_bytes')) - rssBefore) / 1048576;
      const heapGrowth = ((await metric('nodejs_heap_size_used_bytes')) - heapBefore) / 1048576;
      // 100 MB relayed: a worker holding messages would grow by far more than these bounds (RSS
      // also moves with the allocator and lazily freed buffers, hence its wider bound on a busy machine).
      assert.ok(rssGrowth < 40, `worker RSS grew by ${rssGrowth.toFixed(1)} MB over four 25 MB messages`);
      assert.ok(heapGrowth < 5, `worker heap grew by ${heapGrowth.toFixed(1)} MB over four 25 MB messages`);
      sys.sink.messages.splice(before); // keep the test process small
    });

    test('metrics count sessions and relay outcomes', async () => {
      assert.ok((await metric('certgate_smtp_sessions_total')) > 0);
      assert.ok((await metric('certgate_relay_total')) > 0);
      assert.ok((await metric('certgate_config_version')) > 0);
    });

    test('SIGTERM drains: a session in flight finishes, new connections are refused, the worker exits 0', async () => {
      const extra = await sys.startWorker();
      const p = port + extra.offset;
      const dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-drain-'));
      try {
        // A session that has done EHLO when SIGTERM arrives, and sends its message only once told to.
        const inFlight = python<number>(
          'import smtplib,sys,time,json,os; d=sys.argv[2]; s=smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=60); s.ehlo("c.example"); open(os.path.join(d,"ehlo"),"w").close()\n' +
          'for _ in range(600):\n  if os.path.exists(os.path.join(d,"go")): break\n  time.sleep(0.05)\n' +
          's.sendmail("a@example.com", ["b@example.com"], b"Subject: drain\\r\\n\\r\\nx\\r\\n"); s.quit(); print(json.dumps(250))',
          [String(p), dir],
        );
        await eventually(() => existsSync(path.join(dir, 'ehlo')), 30_000, 'the session to be open');
        const exited = new Promise<number | null>((r) => extra.child.once('exit', (code) => r(code)));
        extra.child.kill('SIGTERM');
        // Draining closes the listening socket: a new client soon finds nobody answering.
        await eventually(async () => (await swaks(['--server', `127.0.0.1:${p}`, '--quit-after', 'CONNECT'])).replies.length === 0, 20_000, 'new connections to be refused');
        await writeFile(path.join(dir, 'go'), '');
        assert.equal(await inFlight, 250, 'the session in flight relayed its message');
        assert.equal(await exited, 0);
        sys.workers.splice(sys.workers.indexOf(extra), 1);
        const refused = await swaks(['--server', `127.0.0.1:${p}`, '--quit-after', 'CONNECT']);
        assert.equal(refused.replies.length, 0, refused.transcript);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
});
