// The references bench/smtp.ts compares certgate with, in their own child process (fork,
// IPC) as certgate's worker is in its own:
// - `smtpAuth`: a bare smtp-server with the listener's certificate, STARTTLS, AUTH PLAIN
//   accepted without any check, each message relayed with worker/relay/next-hop.ts through a
//   NextHopPool (kept next-hop connections, as certgate's worker does and Postfix does);
// - `smtpCert`: the same with `requestCert` (client CA as in certgate) and no AUTH;
// - `tlsBare`: a bare Node TLS server, implicit TLS, `requestCert`, that ends each socket
//   right after its handshake (the reference of the certificate-handshake target);
// - `smtpAuthLdap`, `smtpCertLdap`: `smtpAuth` and `smtpCert` doing the directory work of
//   certgate's deployments B and A with ldapts directly (see ReferenceDirectory). Not a target
//   of issue 12; what separates certgate from them is what certgate adds besides the directory
//   (policy, events, metrics, limits), which the plain references leave out with the directory.
// The parent sends `{ type: 'start', config }` and gets `{ type: 'ready', ports }`.
import net from 'node:net';
import tls from 'node:tls';
import { Client } from 'ldapts';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { generalizedTime, renderFilter } from '../../shared/directory/filter.ts';
import type { TokenValues } from '../../shared/directory/tokens.ts';
import type { NextHopTarget } from '../../worker/relay/next-hop.ts';
import { NextHopPool } from '../../worker/relay/pool.ts';

export interface ReferenceConfig {
  certPem: string;
  keyPem: string;
  clientCaPem: string;
  sinkPort: number;
  hostname: string;
  directory: ReferenceDirectoryConfig;
}

/** The directory of certgate's profiles in bench/smtp.ts: its service account and queries. */
export interface ReferenceDirectoryConfig {
  url: string;
  bindDn: string;
  bindPassword: string;
  baseDn: string;
  certificateQuery: string;
  userQuery: string;
  allowQuery: string;
}

export interface ReferencePorts {
  smtpAuth: number;
  smtpCert: number;
  tlsBare: number;
  smtpAuthLdap: number;
  smtpCertLdap: number;
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

/**
 * The directory work of a session, the way a plain program would write it with ldapts: the
 * searches on one connection bound as the service account (ldapts pipelines them), the users'
 * binds one at a time on a second connection (as certgate's pool does with `maxConnections` 4:
 * three connections search, one binds users). A refusal is an error the load generator counts.
 */
class ReferenceDirectory {
  private readonly searcher: Client;
  private readonly binder: Client;
  private bound: Promise<unknown> = Promise.resolve();

  constructor(private readonly c: ReferenceDirectoryConfig) {
    this.searcher = new Client({ url: c.url, timeout: 5000, connectTimeout: 5000 });
    this.binder = new Client({ url: c.url, timeout: 5000, connectTimeout: 5000 });
  }

  start(): Promise<void> {
    return this.searcher.bind(this.c.bindDn, this.c.bindPassword);
  }

  /** Deployment A: exactly one entry for the certificate's CN and serial. */
  async certificate(cn: string, serial: string): Promise<void> {
    await this.one(this.c.certificateQuery, { cn, sn: serial });
  }

  /** Deployment B: the user's entry, a bind as it, and the allowance query beside them. */
  async login(user: string, password: string): Promise<void> {
    if (password === '') throw new Error('empty password'); // an LDAP bind with it would be anonymous
    const allowed = this.one(this.c.allowQuery, { u: user, t: generalizedTime(new Date()) });
    const dn = await this.one(this.c.userQuery, { u: user });
    const bind = this.bound.then(() => this.binder.bind(dn, password));
    this.bound = bind.catch(() => undefined);
    await Promise.all([bind, allowed]);
  }

  private async one(template: string, values: TokenValues): Promise<string> {
    const filter = renderFilter(template, values);
    if (filter === null) throw new Error('a token has no value');
    const { searchEntries } = await this.searcher.search(this.c.baseDn, { scope: 'sub', filter, attributes: ['uid'], sizeLimit: 2 });
    const [entry, other] = searchEntries;
    if (!entry || other) throw new Error(`${searchEntries.length} entries for ${filter}`);
    return entry.dn;
  }

  close(): Promise<void> {
    return Promise.all([this.searcher.unbind(), this.binder.unbind()]).then(() => undefined);
  }
}

function smtpReference(c: ReferenceConfig, withClientCert: boolean, directory: ReferenceDirectory | null): SMTPServer {
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
      ? {
          requestCert: true, rejectUnauthorized: false, ca: c.clientCaPem, authOptional: true, disabledCommands: ['AUTH'],
          ...(directory && {
            onSecure(socket, _session, cb) {
              const cert = (socket as tls.TLSSocket).getPeerCertificate(false);
              directory.certificate(String(cert.subject.CN ?? ''), cert.serialNumber).then(() => cb(), cb);
            },
          }),
        }
      : {
          authMethods: ['PLAIN', 'LOGIN'],
          onAuth(auth, _session, cb) {
            if (!directory) return cb(null, { user: auth.username });
            directory.login(auth.username ?? '', auth.password ?? '').then(() => cb(null, { user: auth.username }), (err: Error) => cb(err));
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
  const directory = new ReferenceDirectory(c.directory);
  await directory.start();
  closers.push(() => directory.close());
  const smtp = async (withClientCert: boolean, dir: ReferenceDirectory | null): Promise<number> => {
    const server = smtpReference(c, withClientCert, dir);
    closers.push(() => new Promise<void>((r) => server.close(() => r())));
    return listen(server.server);
  };
  const bare = tlsReference(c);
  closers.push(() => new Promise<void>((r) => bare.close(() => r())));
  return {
    smtpAuth: await smtp(false, null),
    smtpCert: await smtp(true, null),
    tlsBare: await listen(bare),
    smtpAuthLdap: await smtp(false, directory),
    smtpCertLdap: await smtp(true, directory),
  };
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
