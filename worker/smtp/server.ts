// An SMTP server for one listener: smtp-server's options for it, the factory of its sessions,
// and what becomes of a connection refused before it was one (PROXY protocol).
import { SERVER_SECURE_OPTIONS } from '../../shared/pki/verify.ts';
import type { Listener, NewSessionEvent } from '../../shared/config/schemas.ts';
import { GatewayServer, type RefusedConnection } from './adapter.ts';
import type { ListenerRuntime } from './runtime.ts';
import { Session, type SessionDeps } from './session.ts';
import { randomId } from '../../shared/util/random-id.ts';

export interface ListenerServerHooks {
  /** The listener's current runtime; new sessions take the one in force when they connect. */
  runtime(): ListenerRuntime;
  deps: SessionDeps;
  onError(err: Error): void;
  /** A connection closed without a greeting (untrusted peer, no or a bad PROXY header): for metrics and logs. */
  onRefused(listener: string, connection: RefusedConnection): void;
}

/** The event reason of each way a connection is refused before its session. */
const REFUSED_REASON: Record<RefusedConnection['reason'], string> = {
  untrusted: 'proxy-untrusted',
  invalid: 'proxy-header-invalid',
  timeout: 'proxy-header-timeout',
  closed: 'proxy-header-incomplete',
};

/** The TLS options of a listener, for the server and for updateSecureContext. */
export function tlsOptions(listener: Listener): { key?: string; cert?: string; ca?: string; allowPartialTrustChain?: boolean; secureOptions?: number } {
  if (!listener.tls) return {};
  return {
    // A full handshake every session (no resumption) and no TLS 1.2 renegotiation.
    secureOptions: SERVER_SECURE_OPTIONS,
    key: listener.tls.privateKeyPem ?? undefined,
    cert: listener.tls.certificatePem,
    // The trust anchors OpenSSL verifies client certificates against; also sent as the
    // acceptable CA names of the certificate request (smart-card middleware picks the card
    // certificate by them). An intermediate CA in the bundle is an anchor of its own.
    ca: listener.tls.clientCaPem ?? undefined,
    allowPartialTrustChain: listener.tls.clientCaPem ? true : undefined,
  };
}

export function createListenerServer(initial: Listener, hooks: ListenerServerHooks): GatewayServer {
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
    // smtp-server's own timeout now bounds only a PROXY header or an implicit TLS handshake that
    // does not come (5 minutes, as Postfix's smtpd_starttls_timeout); a session's idle timeout is
    // the listener's idleTimeoutSeconds, kept by the adapter.
    socketTimeout: 300_000,
    createSession: (connection) => new Session(hooks.runtime(), hooks.deps, connection),
    onHookError: hooks.onError,
    proxyProtocol: () => hooks.runtime().proxyProtocol,
    onRefused: (connection) => {
      const listener = hooks.runtime().listener.name;
      hooks.onRefused(listener, connection);
      // A peer that closed without sending a byte (a TCP health check, a port scan) said nothing worth an event.
      if (connection.reason !== 'closed' || connection.bytesReceived > 0) hooks.deps.record(refusedEvent(hooks.deps, listener, connection));
    },
    maxConnections: () => hooks.runtime().listener.maxConnections,
    onConnectionRefused: () => hooks.deps.observe.limit('max-connections'),
  });
  // Without an error listener, a client dropping mid-handshake would crash the process.
  server.on('error', (err) => hooks.onError(err));
  return server;
}

function refusedEvent(deps: SessionDeps, listener: string, connection: RefusedConnection): NewSessionEvent {
  return {
    time: deps.now().toISOString(),
    worker: deps.workerId,
    listener,
    sessionId: randomId(),
    clientAddress: connection.peerAddress,
    tlsVersion: null,
    certificate: null,
    method: 'none',
    user: null,
    outcome: 'rejected',
    reason: REFUSED_REASON[connection.reason],
    detail: connection.detail,
    command: 'CONNECT',
    reply: null,
    envelope: null,
  };
}
