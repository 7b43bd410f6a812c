// An SMTP server for one listener: smtp-server's hooks handed to the session controller.
import type { TLSSocket } from 'node:tls';
import type { SMTPServerSession } from 'smtp-server';
import { requestsClientCertificate, type Reply } from '../../shared/policy/rules.ts';
import type { Listener } from '../../shared/config/schemas.ts';
import { GatewayServer, controllerOf } from './adapter.ts';
import { Session, type ListenerRuntime, type SessionDeps } from './session.ts';

/** An Error smtp-server turns into exactly this reply. */
function smtpError(r: Reply): Error & { responseCode: number } {
  return Object.assign(new Error(r.text), { responseCode: r.code });
}

const TEMPORARY_FAILURE: Reply = { code: 451, text: '4.3.0 Internal error, try again later' };

export interface ListenerServerHooks {
  /** The listener's current runtime; new sessions take the one in force when they connect. */
  runtime(): ListenerRuntime;
  deps: SessionDeps;
  onSessionOpen(listener: string): void;
  onSessionClose(): void;
  onError(err: Error): void;
}

export function tlsOptions(listener: Listener): { key?: string; cert?: string; ca?: string } {
  if (!listener.tls) return {};
  return {
    key: listener.tls.privateKeyPem ?? undefined,
    cert: listener.tls.certificatePem,
    // Sent as the acceptable CA names of the certificate request: smart-card middleware picks the card certificate by them.
    ca: listener.tls.clientCaPem ?? undefined,
  };
}

export function createListenerServer(initial: Listener, hooks: ListenerServerHooks): GatewayServer {
  const session = (s: SMTPServerSession) => controllerOf(s) as Session;
  const fail = (cb: (err?: Error | null) => void) => (err: unknown) => {
    hooks.onError(err instanceof Error ? err : new Error(String(err)));
    cb(smtpError(TEMPORARY_FAILURE));
  };

  const server = new GatewayServer({
    name: initial.hostname,
    banner: 'certgate',
    secure: initial.implicitTls,
    minVersion: 'TLSv1.2',
    ...tlsOptions(initial),
    logger: false,
    disableReverseLookup: true,
    // The gateway drains for 30 s itself before it calls close(); what is left then is ended soon.
    closeTimeout: 1_000,
    // RFC 5321 §4.5.3.2.7: at least 5 minutes; the client also waits while the next hop decides.
    socketTimeout: 300_000,
    createController: ({ remoteAddress, session: s }) => {
      const runtime = hooks.runtime();
      hooks.onSessionOpen(runtime.listener.name);
      return new Session(runtime, hooks.deps, s, remoteAddress, runtime.listener.implicitTls);
    },
    requestsCertificateFor: (address) => {
      const runtime = hooks.runtime();
      return requestsClientCertificate(runtime.policyFor(address), runtime.auth);
    },
    onConnect(s, cb) {
      const refusal = session(s).connect();
      cb(refusal ? smtpError(refusal) : undefined);
    },
    onSecure(socket, s, cb) {
      session(s).secured(socket as TLSSocket).then((refusal) => cb(refusal ? smtpError(refusal) : undefined), fail(cb));
    },
    onAuth(auth, s, cb) {
      session(s)
        .authenticate(auth.username ?? '', auth.password ?? '', (auth as { authzid?: string }).authzid ?? '')
        .then((r) => (r.code === 235 ? cb(null, { user: auth.username }) : cb(smtpError(r))), fail(cb));
    },
    onMailFrom(address, s, cb) {
      const declared = address.args ? address.args.SIZE : undefined;
      const refusal = session(s).mailFrom(declared ? Number(declared) : null);
      cb(refusal ? smtpError(refusal) : undefined);
    },
    onRcptTo(address, s, cb) {
      const refusal = session(s).rcptTo(address.address, s.envelope.rcptTo.length);
      cb(refusal ? smtpError(refusal) : undefined);
    },
    onData(stream, s, cb) {
      session(s).data(stream).then((r) => (r.code === 250 ? cb(null, r.text) : cb(smtpError(r))), fail(cb));
    },
    onClose() {
      hooks.onSessionClose();
    },
  });
  // Without an error listener, a client dropping mid-handshake would crash the process.
  server.on('error', (err) => hooks.onError(err));
  return server;
}
