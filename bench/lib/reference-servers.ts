// The references bench/smtp.ts compares certgate with, in their own child process (fork,
// IPC) as certgate's worker is in its own:
// - `smtpAuth`: a bare smtp-server with the listener's certificate, STARTTLS, AUTH PLAIN
//   accepted without any check, each message relayed with worker/relay/next-hop.ts through a
//   NextHopPool (kept next-hop connections, as certgate's worker does and Postfix does);
// - `smtpCert`: the same with `requestCert` (client CA as in certgate) and no AUTH;
// - `tlsBare`: a bare Node TLS server, implicit TLS, `requestCert`, that ends each socket
//   right after its handshake (the reference of the certificate-handshake target).
// The parent sends `{ type: 'start', config }` and gets `{ type: 'ready', ports }`.
import net from 'node:net';
import tls from 'node:tls';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import type { NextHopTarget } from '../../worker/relay/next-hop.ts';
import { NextHopPool } from '../../worker/relay/pool.ts';

export interface ReferenceConfig {
  certPem: string;
  keyPem: string;
  clientCaPem: string;
  sinkPort: number;
  hostname: string;
}

export interface ReferencePorts {
  smtpAuth: number;
  smtpCert: number;
  tlsBare: number;
}

export type ReferenceParentMessage = { type: 'start'; config: ReferenceConfig } | { type: 'exit' };
export type ReferenceChildMessage = { type: 'ready'; ports: ReferencePorts } | { type: 'error'; message: string };

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.removeListener('error', reject);
      const a = server.address();
      if (a === null || typeof a === 'string') return reject(new Error('no address'));
      resolve(a.port);
    });
  });
}

const pool = new NextHopPool();

function smtpReference(c: ReferenceConfig, withClientCert: boolean): SMTPServer {
  const target: NextHopTarget = { host: '127.0.0.1', port: c.sinkPort, tls: 'none', caPem: null, heloName: c.hostname };
  const options: SMTPServerOptions = {
    name: c.hostname,
    banner: 'reference',
    secure: false,
    key: c.keyPem,
    cert: c.certPem,
    minVersion: 'TLSv1.2',
    logger: false,
    disableReverseLookup: true,
    closeTimeout: 30_000,
    socketTimeout: 300_000,
    ...(withClientCert
      ? { requestCert: true, rejectUnauthorized: false, ca: c.clientCaPem, authOptional: true, disabledCommands: ['AUTH'] }
      : {
          authMethods: ['PLAIN', 'LOGIN'],
          onAuth(auth, _session, cb) {
            cb(null, { user: auth.username });
          },
        }),
    onData(stream, session, cb) {
      const env = session.envelope;
      pool.relay(
        target,
        { from: env.mailFrom ? env.mailFrom.address : '', to: env.rcptTo.map((r) => r.address), smtpUtf8: false, body8bit: false },
        Buffer.alloc(0),
        stream,
      ).then(
        (r) => (r.accepted ? cb(null, 'relayed') : cb(Object.assign(new Error(r.reply.text), { responseCode: r.reply.code }))),
        (err: Error) => cb(err),
      );
    },
  };
  const server = new SMTPServer(options);
  server.on('error', () => undefined);
  return server;
}

function tlsReference(c: ReferenceConfig): tls.Server {
  const server = tls.createServer(
    { key: c.keyPem, cert: c.certPem, ca: c.clientCaPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2' },
    (socket) => {
      socket.on('error', () => undefined);
      socket.end();
    },
  );
  server.on('tlsClientError', () => undefined);
  server.on('error', () => undefined);
  return server;
}

const closers: Array<() => Promise<void>> = [];

async function start(c: ReferenceConfig): Promise<ReferencePorts> {
  const auth = smtpReference(c, false);
  const cert = smtpReference(c, true);
  const bare = tlsReference(c);
  const ports = { smtpAuth: await listen(auth.server), smtpCert: await listen(cert.server), tlsBare: await listen(bare) };
  closers.push(
    () => new Promise<void>((r) => auth.close(() => r())),
    () => new Promise<void>((r) => cert.close(() => r())),
    () => new Promise<void>((r) => bare.close(() => r())),
  );
  return ports;
}

async function shutdown(): Promise<never> {
  pool.close();
  // Bounded: idle servers close at once; never wait for stragglers beyond 2 s.
  await Promise.race([Promise.all(closers.map((c) => c())), new Promise((r) => setTimeout(r, 2000))]);
  process.exit(0);
}

if (process.send) {
  const send = (m: ReferenceChildMessage) => process.send?.(m);
  process.on('message', (m: ReferenceParentMessage) => {
    if (m.type === 'exit') void shutdown();
    if (m.type === 'start') {
      start(m.config).then(
        (ports) => send({ type: 'ready', ports }),
        (err: Error) => send({ type: 'error', message: err.message }),
      );
    }
  });
  process.on('disconnect', () => void shutdown());
  process.on('SIGTERM', () => void shutdown());
}
