// An SMTP server for one listener: smtp-server's options for it and the factory of its sessions.
import type { Listener } from '../../shared/config/schemas.ts';
import { GatewayServer } from './adapter.ts';
import type { ListenerRuntime } from './runtime.ts';
import { Session, type SessionDeps } from './session.ts';

export interface ListenerServerHooks {
  /** The listener's current runtime; new sessions take the one in force when they connect. */
  runtime(): ListenerRuntime;
  deps: SessionDeps;
  onError(err: Error): void;
}

/** The TLS options of a listener, for the server and for updateSecureContext. */
export function tlsOptions(listener: Listener): { key?: string; cert?: string; ca?: string; allowPartialTrustChain?: boolean } {
  if (!listener.tls) return {};
  return {
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
    // RFC 5321 §4.5.3.2.7: at least 5 minutes; the client also waits while the next hop decides.
    socketTimeout: 300_000,
    createSession: (connection) => new Session(hooks.runtime(), hooks.deps, connection),
    onHookError: hooks.onError,
  });
  // Without an error listener, a client dropping mid-handshake would crash the process.
  server.on('error', (err) => hooks.onError(err));
  return server;
}
