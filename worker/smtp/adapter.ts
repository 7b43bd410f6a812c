// The thin layer between smtp-server and certgate's per-session rules. smtp-server decides
// its EHLO features, certificate requests and AUTH handling from server-wide options; SPEC
// §3 needs them per session (the policy depends on the client's address) and needs AUTH
// EXTERNAL, which smtp-server lacks. So its connection class is extended at exactly four
// points: the command dispatcher (to let the session answer first), EHLO (to list the
// session's features), send (to observe replies) and the STARTTLS upgrade (to ask for a
// client certificate only when the session's policy wants one).
import type net from 'node:net';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import type { EhloFeatures, Reply } from '../../shared/policy/rules.ts';

/** What a session decides; implemented by worker/session.ts. */
export interface SessionController {
  /** Whether the TLS handshake (STARTTLS or implicit) asks the client for a certificate. */
  requestsCertificate(): boolean;
  ehloFeatures(): EhloFeatures;
  /**
   * Runs before smtp-server handles a command (after EHLO, outside SASL exchanges).
   * A reply answers the command instead of smtp-server; null lets smtp-server go on.
   */
  beforeCommand(command: string, args: string[]): Reply | Challenge | null;
  /** Every reply the session sends, with the command it answers (for events of allow-and-log sessions). */
  onReply(command: string, reply: Reply): void;
}

/** An empty `334 ` challenge; the client's next line goes to `answer` (AUTH EXTERNAL without initial response). */
export interface Challenge { answer(line: string): Reply }

export type ControllerFactory = (info: { remoteAddress: string; session: SMTPServerSession }) => SessionController;

type NextHandler = (line: Buffer, done: () => void) => void;

const controllers = new WeakMap<SMTPServerSession, SessionController>();

/** The controller of a session, for smtp-server's hooks (onSecure, onAuth, onMailFrom, ...). */
export function controllerOf(session: SMTPServerSession): SessionController {
  const c = controllers.get(session);
  if (!c) throw new Error(`no controller for session ${session.id}`);
  return c;
}

class GatewayConnection extends SMTPConnection {
  readonly controller: SessionController;
  private currentCommand = 'CONNECT';
  private inEhlo = false;

  constructor(server: GatewayServer, socket: net.Socket, options: ConstructorParameters<typeof SMTPConnection>[2]) {
    super(server, socket, options);
    this.controller = server.createController({ remoteAddress: this.remoteAddress, session: this.session });
    controllers.set(this.session, this.controller);
  }

  /**
   * smtp-server waits a fixed 100 ms before every greeting to catch spam bots that talk
   * too soon. certgate's listeners are submission ports for clients that must present a
   * certificate or log in, so the wait only adds latency to every session (and, at 32
   * concurrent clients, caps throughput: bench/smtp). Clients that do talk too soon are
   * still answered 421 by smtp-server until the greeting is out.
   */
  override init(): void {
    this._setListeners(() => {
      const max = this._server.options.maxClients;
      if (max && this._server.connections.size > max) {
        this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
        return;
      }
      setImmediate(() => this.connectionReady());
    });
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    // SASL continuation lines, data sent too early and commands during a TLS upgrade stay
    // with smtp-server; so does everything before EHLO/HELO ("send HELO/EHLO first").
    const self = this as unknown as { _nextHandler: NextHandler | false; _upgrading: boolean; _ready: boolean; hostNameAppearsAs: string | false };
    const line = (command || '').toString();
    const [name = '', ...args] = line.trim().split(/\s+/);
    const upper = name.toUpperCase();
    if (!self._nextHandler && !self._upgrading && self._ready) {
      this.currentCommand = upper;
      if (self.hostNameAppearsAs || !['MAIL', 'RCPT', 'DATA', 'AUTH'].includes(upper)) {
        const answer = this.controller.beforeCommand(upper, args);
        if (answer && 'answer' in answer) {
          this.send(334, '');
          self._nextHandler = (line, done) => {
            const r = answer.answer(line.toString());
            this.send(r.code, r.text);
            done();
          };
          setImmediate(() => callback?.());
          return;
        }
        if (answer) {
          this.send(answer.code, answer.text);
          setImmediate(() => callback?.());
          return;
        }
      }
    }
    super._onCommand(command, callback);
  }

  override handler_EHLO(command: Buffer, callback: () => void): void {
    this.inEhlo = true;
    try {
      super.handler_EHLO(command, callback);
    } finally {
      this.inEhlo = false;
    }
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (this.inEhlo && code === 250 && Array.isArray(data)) {
      data = [data[0] ?? '', ...featureLines(this.controller.ehloFeatures())];
    } else if (typeof data === 'string') {
      data = LIBRARY_REPLY_TEXT[`${this.currentCommand} ${code} ${data}`] ?? data;
    }
    super.send(code, data, context);
    const text = Array.isArray(data) ? data.join('\n') : (data ?? '');
    this.controller.onReply(this.currentCommand, { code, text });
  }

  override upgrade(callback: () => void, secureCallback?: () => void): void {
    this.currentCommand = 'STARTTLS';
    const server = this._server as GatewayServer;
    server.withCertificateRequest(this.controller.requestsCertificate(), () => super.upgrade(callback, secureCallback));
  }
}

/**
 * smtp-server's own success texts carry no enhanced status code; SPEC §3 wants
 * `235 2.7.0`, and the rest get theirs for consistency (RFC 3463).
 */
const LIBRARY_REPLY_TEXT: Record<string, string> = {
  'AUTH 235 Authentication successful': '2.7.0 Authentication successful',
  'MAIL 250 Accepted': '2.1.0 Ok',
  'RCPT 250 Accepted': '2.1.5 Ok',
  'QUIT 221 Bye': '2.0.0 Bye',
};

function featureLines(f: EhloFeatures): string[] {
  const lines = ['PIPELINING', '8BITMIME', 'SMTPUTF8', `SIZE ${f.size}`];
  if (f.startTls) lines.push('STARTTLS');
  if (f.auth.length > 0) lines.push(`AUTH ${f.auth.join(' ')}`);
  return lines;
}

export interface GatewayServerOptions extends SMTPServerOptions {
  /** Creates the controller of each new session (the policy is chosen here, at connect). */
  createController: ControllerFactory;
  /** For implicit TLS: whether a client at this address is asked for a certificate. */
  requestsCertificateFor: (remoteAddress: string) => boolean;
}

export class GatewayServer extends SMTPServer {
  readonly createController: ControllerFactory;
  private readonly requestsCertificateFor: (remoteAddress: string) => boolean;

  constructor(options: GatewayServerOptions) {
    const { createController, requestsCertificateFor, ...smtpOptions } = options;
    super({
      ...smtpOptions,
      // certgate's rules decide these per session (shared/policy.ts); smtp-server's own must stay out of the way
      authOptional: true,
      allowInsecureAuth: true,
      rejectUnauthorized: false,
      requestCert: false,
      hideENHANCEDSTATUSCODES: true,
      size: 0,
    });
    this.createController = createController;
    this.requestsCertificateFor = requestsCertificateFor;
  }

  override connect(socket: net.Socket, socketOptions?: ConstructorParameters<typeof SMTPConnection>[2]): void {
    const connection = new GatewayConnection(this, socket, socketOptions ?? null);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
  }

  override _upgrade(socket: net.Socket, callback: Parameters<SMTPServer['_upgrade']>[1]): void {
    const address = socket.remoteAddress ?? '';
    this.withCertificateRequest(this.requestsCertificateFor(address), () => super._upgrade(socket, callback));
  }

  /**
   * smtp-server copies `requestCert` from the server options into each TLS socket it
   * creates, synchronously; setting it around that call makes it per session.
   */
  withCertificateRequest(request: boolean, createSocket: () => void): void {
    const options = this.options as { requestCert?: boolean };
    options.requestCert = request;
    try {
      createSocket();
    } finally {
      options.requestCert = false;
    }
  }
}
