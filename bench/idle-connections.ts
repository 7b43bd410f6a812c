/**
 * What idle SMTP connections cost the worker: its resident memory with N connections held
 * open (greeted and past EHLO), in plain text and after STARTTLS, in MB per connection.
 * The attack it sizes: a client that opens connections and sends nothing (SPEC §2.5
 * maxConnections and idleTimeoutSeconds bound it; this says what the bound costs).
 *
 *   npx tsx bench/idle-connections.ts [--connections 2000] [--help]
 *
 * RSS is read from /proc/<pid>/status (VmRSS) after a forced settle (two seconds, then the
 * figure must hold within 1 MB over one more). Prints numbers; asserts nothing. The machine
 * is shared: RSS is not sensitive to CPU noise, but the baseline moves by a few MB with
 * garbage collection timing, so figures below ~5 kB per connection are within noise.
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { startSystem } from '../test/helpers/system.ts';
import { freePort } from '../test/helpers/ports.ts';
import { listener } from '../test/fixtures/deployments.ts';
import { fmt } from './lib/stats.ts';
import { exitWithUsageIfAsked } from './lib/usage.ts';

exitWithUsageIfAsked(import.meta.url);
const { values: argv } = parseArgs({ options: { connections: { type: 'string', default: '2000' } } });
const N = Number(argv.connections);
if (!(Number.isInteger(N) && N >= 1 && N <= 10_000)) throw new Error('--connections: 1..10000');

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
  return kb / 1024;
}

/** RSS once it holds still (within 1 MB for a second), at most 10 s. */
async function settledRss(pid: number): Promise<number> {
  let last = await rssMb(pid);
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    const now = await rssMb(pid);
    if (Math.abs(now - last) < 1) return now;
    last = now;
  }
  return last;
}

/** Reads until a final reply line (`ddd `) has arrived since the last call. */
function replies(socket: net.Socket | tls.TLSSocket): (count: number) => Promise<void> {
  let seen = 0;
  let buffer = '';
  const waiters: Array<() => void> = [];
  socket.on('data', (b: Buffer) => {
    buffer += b.toString();
    const finals = buffer.split('\r\n').filter((l) => /^\d{3} /.test(l)).length;
    seen = finals;
    for (const w of waiters.splice(0)) w();
  });
  return async (count) => {
    while (seen < count) await new Promise<void>((r) => waiters.push(r));
  };
}

async function hold(port: number, starttls: boolean, from: string): Promise<net.Socket | tls.TLSSocket> {
  const socket = net.connect({ port, host: '127.0.0.1', localAddress: from });
  socket.on('error', () => undefined);
  const wait = replies(socket);
  await wait(1);
  socket.write('EHLO idle.example\r\n');
  await wait(2);
  if (!starttls) return socket;
  socket.write('STARTTLS\r\n');
  await wait(3);
  socket.removeAllListeners('data');
  const secure = tls.connect({ socket, rejectUnauthorized: false });
  secure.on('error', () => undefined);
  await new Promise<void>((r) => secure.once('secureConnect', () => r()));
  const waitTls = replies(secure);
  secure.write('EHLO idle.example\r\n');
  await waitTls(1);
  return secure;
}

async function main(): Promise<void> {
  console.log(`idle connections: ${N} held on one worker process, plain and after STARTTLS`);
  const sys = await startSystem({ workers: 1 });
  try {
    const server = await sys.pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] });
    const port = await freePort();
    await sys.api.ok('POST', '/v1/mail-flow-policies', {
      name: 'OPEN', action: 'relay', tls: 'preferred', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false,
      maxMessageBytes: 1_000_000, maxRecipients: 10, maxConnectionsPerClient: null,
    });
    await sys.api.ok('POST', '/v1/listeners', {
      ...listener(sys, { name: 'idle', port, authProfile: null, tls: { certificatePem: server.certPem, privateKeyPem: server.keyPem, clientCaPem: null }, policy: 'OPEN' }),
      maxConnections: N + 10, idleTimeoutSeconds: 3600,
    });
    await sys.settled();
    const pid = sys.workers[0]!.child.pid!;
    // Spread the client side over a few source addresses (ephemeral ports per address).
    const from = (i: number) => `127.0.1.${1 + (i % 50)}`;
    for (const starttls of [false, true]) {
      const before = await settledRss(pid);
      const sockets: Array<net.Socket | tls.TLSSocket> = [];
      const started = Date.now();
      for (let i = 0; i < N; i += 50) {
        sockets.push(...(await Promise.all(Array.from({ length: Math.min(50, N - i) }, (_, k) => hold(port, starttls, from(i + k))))));
      }
      const opened = Date.now() - started;
      const held = await settledRss(pid);
      const perConn = ((held - before) * 1024) / N;
      console.log(`  ${starttls ? 'after STARTTLS' : 'plain text    '}: RSS ${fmt(before)} MB → ${fmt(held)} MB with ${N} held ` +
        `(+${fmt(held - before)} MB, ${fmt(perConn, 1)} kB = ${fmt(perConn / 1024, 3)} MB per connection; opened in ${fmt(opened / 1000)} s)`);
      for (const s of sockets) s.destroy();
      await new Promise((r) => setTimeout(r, 2000));
    }
  } finally {
    await sys.stop();
  }
}

await main();
