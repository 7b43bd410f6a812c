import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startSink } from './helpers/smtp-sink.ts';

const run = promisify(execFile);

/** Runs a command without throwing on a non-zero exit (async: never block a process that hosts a server). */
async function runAny(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run(cmd, args, { timeout: 60_000 });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const err = e as { code?: number | string; stdout?: string; stderr?: string };
    return { code: typeof err.code === 'number' ? err.code : -1, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

function pySend(port: number, opts: { starttls?: boolean; from?: string; to?: string[]; body?: string } = {}): string {
  const from = opts.from ?? 'b@example.com';
  const to = opts.to ?? ['a@example.com'];
  const body = opts.body ?? 'Subject: hello\r\n\r\nline one\r\nline two\r\n';
  return `
import smtplib, ssl, json, sys
s = smtplib.SMTP('127.0.0.1', ${port}, timeout=20)
s.ehlo('client.example')
feats = sorted(s.esmtp_features.keys())
if ${opts.starttls ? 'True' : 'False'}:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo('client.example')
body = ${JSON.stringify(body)}.encode('utf-8')
refused = s.sendmail(${JSON.stringify(from)}, ${JSON.stringify(to)}, body, mail_options=['BODY=8BITMIME'])
s.quit()
print(json.dumps({"features": feats, "refused": list(refused.keys())}))
`;
}

test('python smtplib: messages arrive with envelope and raw body; AUTH and STARTTLS not advertised', async () => {
  const sink = await startSink();
  try {
    const r = await run('python3', ['-c', pySend(sink.port, { to: ['a@example.com', 'c@example.org'], body: 'Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n' })]);
    const out = JSON.parse(r.stdout) as { features: string[]; refused: string[] };
    assert.deepEqual(out.refused, []);
    assert.ok(out.features.includes('8bitmime'), `features: ${out.features.join(',')}`);
    assert.ok(out.features.includes('smtputf8'), `features: ${out.features.join(',')}`);
    assert.ok(!out.features.includes('auth'), 'AUTH must not be advertised');
    assert.ok(!out.features.includes('starttls'), 'STARTTLS needs tls options');
    await sink.waitFor(1, 5000);
    assert.equal(sink.messages.length, 1);
    const m = sink.messages[0]!;
    assert.equal(m.from, 'b@example.com');
    assert.deepEqual(m.to, ['a@example.com', 'c@example.org']);
    assert.ok(m.receivedAt instanceof Date);
    assert.equal(m.secure, false);
    assert.match(m.raw.toString('utf8'), /d\u00e9j\u00e0 vu/);
  } finally {
    await sink.stop();
  }
});

test('swaks: message arrives; setReply(451) makes swaks see 451; setReply(null) accepts again', async () => {
  const sink = await startSink();
  try {
    const args = ['--server', `127.0.0.1:${sink.port}`, '--to', 'a@example.com', '--from', 'b@example.com', '--timeout', '20'];
    const ok = await runAny('swaks', args);
    assert.equal(ok.code, 0, ok.out);
    await sink.waitFor(1, 5000);
    assert.equal(sink.messages[0]!.from, 'b@example.com');
    assert.deepEqual(sink.messages[0]!.to, ['a@example.com']);
    assert.match(sink.messages[0]!.raw.toString(), /^Subject: test/m);

    sink.setReply({ code: 451, message: '4.3.0 try again later' });
    const tempFail = await runAny('swaks', args);
    assert.notEqual(tempFail.code, 0, tempFail.out);
    assert.match(tempFail.out, /<\*\* 451 4\.3\.0 try again later/);
    assert.equal(sink.messages.length, 1, 'a rejected message is not stored');

    sink.setReply({ code: 550, message: '5.1.1 no such user', at: 'rcpt' });
    const rcptFail = await runAny('swaks', args);
    assert.notEqual(rcptFail.code, 0, rcptFail.out);
    assert.match(rcptFail.out, /<\*\* 550 5\.1\.1 no such user/);

    sink.setReply(null);
    const again = await runAny('swaks', args);
    assert.equal(again.code, 0, again.out);
    await sink.waitFor(2, 5000);
  } finally {
    await sink.stop();
  }
});

test('rejectWith answers from the start', async () => {
  const sink = await startSink({ rejectWith: { code: 554, message: '5.7.1 go away' } });
  try {
    const r = await runAny('swaks', ['--server', `127.0.0.1:${sink.port}`, '--to', 'a@example.com', '--from', 'b@example.com', '--timeout', '20']);
    assert.notEqual(r.code, 0);
    assert.match(r.out, /<\*\* 554 5\.7\.1 go away/);
    assert.equal(sink.messages.length, 0);
  } finally {
    await sink.stop();
  }
});

test('STARTTLS with the given key and certificate (python and swaks)', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sink-tls-'));
  try {
    const keyFile = path.join(dir, 'key.pem');
    const certFile = path.join(dir, 'cert.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile,
      '-days', '2', '-subj', '/CN=sink.example', '-addext', 'subjectAltName=DNS:sink.example,IP:127.0.0.1']);
    const sink = await startSink({ tls: { key: await readFile(keyFile, 'utf8'), cert: await readFile(certFile, 'utf8') } });
    try {
      const r = await run('python3', ['-c', pySend(sink.port, { starttls: true })]);
      const out = JSON.parse(r.stdout) as { features: string[] };
      assert.ok(out.features.includes('starttls'));
      await sink.waitFor(1, 5000);
      assert.equal(sink.messages[0]!.secure, true);

      const s = await runAny('swaks', ['--server', `127.0.0.1:${sink.port}`, '--to', 'a@example.com', '--from', 'b@example.com', '--tls', '--timeout', '20']);
      assert.equal(s.code, 0, s.out);
      assert.match(s.out, /TLS started/);
      await sink.waitFor(2, 5000);
      assert.equal(sink.messages[1]!.secure, true);
    } finally {
      await sink.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('waitFor rejects on timeout; stop closes the port', async () => {
  const sink = await startSink();
  await assert.rejects(sink.waitFor(1, 100), /0 of 1 messages/);
  await sink.stop();
  const r = await runAny('swaks', ['--server', `127.0.0.1:${sink.port}`, '--to', 'a@example.com', '--from', 'b@example.com', '--timeout', '5']);
  assert.notEqual(r.code, 0);
});

test('a client failing the STARTTLS handshake and dropping does not crash the host process', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sink-tls-'));
  try {
    const keyFile = path.join(dir, 'key.pem');
    const certFile = path.join(dir, 'cert.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile,
      '-days', '2', '-subj', '/CN=sink.example']);
    const sink = await startSink({ tls: { key: await readFile(keyFile, 'utf8'), cert: await readFile(certFile, 'utf8') } });
    try {
      for (let i = 0; i < 3; i++) {
        await new Promise<void>((resolve) => {
          const sock = net.connect(sink.port, '127.0.0.1');
          let replies = 0;
          let buf = '';
          sock.on('error', () => resolve());
          sock.on('close', () => resolve());
          sock.on('data', (d: Buffer) => {
            buf += d.toString();
            const lines = buf.split('\r\n');
            buf = lines.pop() ?? '';
            for (const line of lines) {
              if (!/^\d{3} /.test(line)) continue; // last line of a reply only
              replies += 1;
              if (replies === 1) sock.write('EHLO client.example\r\n');
              else if (replies === 2) sock.write('STARTTLS\r\n');
              else if (replies === 3) {
                // bytes that are no TLS record (a failed handshake), then gone
                sock.write('GARBAGE NOT TLS\r\n');
                setTimeout(() => sock.destroy(), 20);
              }
            }
          });
        });
      }
      const r = await runAny('swaks', ['--server', `127.0.0.1:${sink.port}`, '--to', 'a@example.com', '--from', 'b@example.com', '--tls', '--timeout', '20']);
      assert.equal(r.code, 0, r.out);
      await sink.waitFor(1, 5000);
    } finally {
      await sink.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
