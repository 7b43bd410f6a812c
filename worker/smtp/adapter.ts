// The one seam between smtp-server and certgate's sessions. smtp-server parses commands, runs
// the STARTTLS upgrade and the SASL PLAIN/LOGIN exchanges, and streams DATA; certgate decides.
// Every decision goes through one interface, SessionController (worker/smtp/session.ts), which
// asks the pure rules of shared/policy/rules.ts.
//
// smtp-server decides its EHLO features, certificate requests and AUTH handling from
// server-wide options; SPEC §3 needs them per session (the policy depends on the client's
// address) and needs AUTH EXTERNAL, which smtp-server lacks. So this module:
//   - owns the accept path: socket → PROXY protocol header on listeners behind a balancer
//     (the client's address; untrusted peers and bad headers closed without a greeting) →
//     session (policy chosen once) → implicit TLS handshake (certificate requested per
//     session) → SMTP connection;
//   - lets the session answer a command before smtp-server does (COMMAND_ROUTES);
//   - lists the session's EHLO features, observes every reply, and asks for a client
//     certificate at STARTTLS only when the session's policy wants one;
//   - admits connections (SPEC §2.5 maxConnections before anything else, before an implicit
//     TLS handshake too; §2.4 maxConnectionsPerClient once the session exists), keeps the idle
//     timeout of §2.5 (a completed command or, inside DATA, any byte resets it; smtp-server's
//     own timeout is reset by every byte, so a client dribbling one line would never time out),
//     and keeps a refused session (rules 1 and 3) open, answering every command, instead of
//     closing it under the client's next command.
// Every close is smtp-server's close() or closeGracefully(): the last reply written, a FIN,
// what the client still sends read and dropped for a moment, then the socket destroyed; never
// a reset that could destroy a reply the client has not read.
//
// It uses members of smtp-server that are not its documented API (they are typed in its .d.ts):
// the connection's `_onCommand`, `_nextHandler`, `_upgrading`, `_ready`, `_setListeners`,
// `connectionReady`, `handler_EHLO`, `upgrade`, `send`, `_refuse`, `_sendGreeting`, `_onTimeout`,
// `_armTimeout`, `_createParser`, `_handlerPending`, `_dataStream`, `_parser` (with its
// `_dataMode`), `_socket`, and the server's `_acceptSocket`, `_pendingSockets`, `_upgrade`,
// `_onError`, `_onClientConnect` and its `connection` listener. package.json pins
// smtp-server to the exact version these were read from, and test/smtp-adapter.test.ts fails
// loudly if one of them changes.
import type net from 'node:net';
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import {
  SMTPServer, type SMTPServerAddress, type SMTPServerAuthentication, type SMTPServerAuthenticationResponse,
  type SMTPServerDataStream, type SMTPServerOptions, type SMTPServerSession,
} from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { REPLIES, type EhloFeatures, type Reply } from '../../shared/policy/rules.ts';
import { proxiedClient, type ProxyEndpoint } from './proxy-protocol.ts';
import { ProxyHeaderError, readProxyHeader, type ProxyFailure } from './proxy-socket.ts';
import { listenerAdmission, REFUSED_SESSION_SILENCE_MS } from '../../shared/policy/limits.ts';
import { closeGracefully } from '../../shared/util/sockets.ts';
import { randomId } from '../../shared/util/random-id.ts';

/** The message's envelope as smtp-server collected it, at the end of DATA. */
export interface Envelope {
  from: string;
  to: string[];
  smtpUtf8: boolean;
  body8bit: boolean;
  /** The name the client gave in EHLO/HELO. */
  helo: string;
}

/**
 * Everything certgate decides in one SMTP session, in the order a connection meets it.
 * The adapter calls `closed()` exactly once for every controller it created.
 */
export interface SessionController {
  /** Whether the TLS handshake (implicit, or at STARTTLS) asks the client for a certificate. */
  requestsCertificate(): boolean;
  /**
   * Once the connection is the session's (after an implicit TLS handshake): a reply refuses
   * it at once, and the adapter closes it (§2.4 maxConnectionsPerClient).
   */
  admit(): Reply | null;
  /**
   * Before the greeting: a reply refuses the session (rule 1). A refused session stays open:
   * every command goes to beforeCommand (QUIT included, which it lets through).
   */
  connect(): Reply | null;
  /** After a TLS handshake: a reply refuses the session (rules 3 and 4), as connect's does. */
  secured(socket: TLSSocket): Promise<Reply | null>;
  /** How long the session waits for a command (inside DATA, for a byte) before idle() (§2.5). */
  idleTimeoutMs(): number;
  /** The session waited that long: the reply that ends it, or null to close without one (a refused session). */
  idle(): Reply | null;
  ehloFeatures(): EhloFeatures;
  /** Before smtp-server handles a command (see COMMAND_ROUTES): a reply answers it instead. */
  beforeCommand(command: string, args: string[]): Reply | Challenge | null;
  /** AUTH PLAIN/LOGIN once smtp-server has the credentials. */
  authenticate(username: string, password: string, authzid: string): Promise<Reply>;
  mailFrom(declaredSize: number | null): Reply | null;
  rcptTo(recipient: string, recipientsSoFar: number): Reply | null;
  /** The message: relayed before the answer (rule 8). */
  data(message: Readable, envelope: Envelope): Promise<Reply>;
  /** Every reply sent, with the command it answers; a reply returned is sent next and ends the session (a 421). */
  replied(command: string, reply: Reply): Reply | null;
  closed(): void;
}

/** An empty `334 ` challenge; the client's next line goes to `answer` (AUTH EXTERNAL without initial response). */
export interface Challenge { answer(line: string): Reply }

/** A connection accepted by a listener, before its session exists. */
export interface AcceptedConnection {
  /** Session id, for smtp-server's logs and certgate's events. */
  id: string;
  /** The client's address: the peer's, or behind a balancer the one its PROXY header names. */
  clientAddress: string;
}

/** SPEC §2.5 `proxyProtocol` of a listener, as the accept path applies it (worker/smtp/runtime.ts builds it). */
export interface ProxyProtocolSetting {
  /** Whether a peer may connect at all, and must then send the header. */
  trusts(peerAddress: string): boolean;
  /** How long the whole header may take to arrive. */
  headerTimeoutMs: number;
}

/** A connection closed without a greeting on a listener with `proxyProtocol`. */
export interface RefusedConnection {
  peerAddress: string;
  /** `untrusted`: the peer is not a trusted proxy; else what went wrong with its header. */
  reason: 'untrusted' | ProxyFailure;
  detail: string;
  /** Bytes the peer sent before it was refused (0 for `untrusted`). */
  bytesReceived: number;
}

/**
 * Who decides each command. `session` commands go to `beforeCommand` first (once EHLO/HELO was
 * seen for MAIL, RCPT, DATA and AUTH: before it smtp-server answers "send HELO/EHLO first"),
 * then to smtp-server if the session lets them through, whose hooks call the session again.
 * ARCHITECTURE.md shows the same table with the rule behind each decision.
 */
export const COMMAND_ROUTES = {
  EHLO: 'smtp-server answers; the session lists the features (ehloFeatures)',
  HELO: 'smtp-server',
  STARTTLS: 'session: offered or not (beforeCommand); smtp-server upgrades; session: certificate request (requestsCertificate) and verdict (secured)',
  AUTH: 'session: mechanism and gates (beforeCommand), EXTERNAL wholly; smtp-server runs PLAIN/LOGIN; session: credentials (authenticate)',
  MAIL: 'session: STARTTLS gate (beforeCommand); smtp-server parses; session: decision (mailFrom)',
  RCPT: 'session: STARTTLS gate (beforeCommand); smtp-server parses; session: decision (rcptTo)',
  DATA: 'session: STARTTLS gate (beforeCommand); smtp-server streams; session: relay and verdict (data)',
  RSET: 'smtp-server',
  NOOP: 'smtp-server',
  QUIT: 'smtp-server',
  HELP: 'smtp-server',
  VRFY: 'smtp-server (252, never a lookup)',
  '(other)': 'session: 500 5.5.2, counted for maxBadCommands (smtp-server\'s own cap of 10 would override the policy)',
  '(refused session)': 'session: every command (QUIT: smtp-server, 221 and close)',
} as const;

/** Commands smtp-server refuses before EHLO/HELO, before the session is asked. */
const NEEDS_GREETING = new Set(['MAIL', 'RCPT', 'DATA', 'AUTH']);

/** An Error smtp-server turns into exactly this reply. */
function smtpError(r: Reply): Error & { responseCode: number } {
  return Object.assign(new Error(r.text), { responseCode: r.code });
}

class GatewayConnection extends SMTPConnection {
  private currentCommand = 'CONNECT';
  private inEhlo = false;
  private greeted = false;
  /** Rules 1 and 3: the session was refused and answers every command itself. */
  private refused = false;
  private idleTimer: NodeJS.Timeout | null = null;

  constructor(
    server: GatewayServer,
    socket: net.Socket,
    options: ConstructorParameters<typeof SMTPConnection>[2],
    readonly controller: SessionController,
  ) {
    super(server, socket, options);
  }

  /**
   * smtp-server waits a fixed 100 ms before every greeting to catch spam bots that talk
   * too soon. certgate's listeners are submission ports for clients that must present a
   * certificate or log in, so the wait only adds latency to every session (and, at 32
   * concurrent clients, caps throughput: bench/smtp). Clients that do talk too soon are
   * still answered 421 by smtp-server until the greeting is out.
   */
  override init(): void {
    this._setListeners(() => setImmediate(() => this.connectionReady()));
    this.resetIdle();
  }

  override _sendGreeting(): void {
    this.greeted = true;
    super._sendGreeting();
  }

  /**
   * smtp-server closes a refused session right after the refusal, often under the client's
   * next command (Postfix answers a refused EHLO with HELO and then logs "lost connection").
   * A refused session stays open instead: a refusal before the greeting is the greeting; one
   * after a STARTTLS handshake is the answer to the next command (nothing is sent unasked,
   * which would shift every later reply by one). From then on the session answers each command.
   */
  override _refuse(err: Error & { responseCode?: number }): void {
    this.refused = true;
    if (!this.greeted) {
      this.greeted = true;
      this.send(err.responseCode ?? 554, err.message, false);
      this._ready = true;
    } else if (this._parser && !this._socket.destroyed) {
      // upgrade() pipes the TLS socket into the parser only when the session was not refused
      this._socket.pipe(this._parser);
    }
    this.resetIdle();
  }

  // ---------------------------------------------------------------- idle timeout (§2.5)

  /** (Re)arms the idle timer: at connect, at every complete command, every reply, every DATA byte. */
  private resetIdle(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    if (this._closing || this._closed) return;
    this.idleTimer = setTimeout(() => this.onIdle(), this.refused ? REFUSED_SESSION_SILENCE_MS : this.controller.idleTimeoutMs());
    this.idleTimer.unref();
  }

  private onIdle(): void {
    this.idleTimer = null;
    if (this._closing || this._closed) return;
    // certgate is working (the directory, the next hop): the client waits for us, not we for it.
    if (this._handlerPending || (this._dataStream && this._parser && !this._parser._dataMode)) return this.resetIdle();
    const end = this.controller.idle();
    if (end) this.send(end.code, end.text); // a 421: smtp-server closes after it
    else this.close();
  }

  /** smtp-server's own idle timeout is reset by any byte; certgate's (above) governs, this one only ends what is closing. */
  override _onTimeout(): void {
    if (this._closing) return super._onTimeout();
    this._armTimeout();
  }

  /** Inside DATA every byte counts as activity: the parser sees them all. */
  override _createParser(): ReturnType<SMTPConnection['_createParser']> {
    const parser = super._createParser();
    const write = parser._write.bind(parser);
    parser._write = (chunk, encoding, done) => {
      if (parser._dataMode) this.resetIdle();
      write(chunk, encoding, done);
    };
    return parser;
  }

  override _onClose(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    super._onClose();
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    // SASL continuation lines, data sent too early and commands during a TLS upgrade stay
    // with smtp-server; so do MAIL/RCPT/DATA/AUTH before EHLO/HELO ("send HELO/EHLO first").
    const [name = '', ...args] = (command || '').toString().trim().split(/\s+/);
    const upper = name.toUpperCase();
    if (!this._upgrading) this.resetIdle(); // a complete line (a SASL continuation too)
    if (!this._nextHandler && !this._upgrading && this._ready) {
      this.currentCommand = upper;
      if (this.refused || this.hostNameAppearsAs || !NEEDS_GREETING.has(upper)) {
        const answer = this.controller.beforeCommand(upper, args);
        if (answer) {
          if ('answer' in answer) {
            this.send(334, '');
            this._nextHandler = (line, done) => {
              const r = answer.answer(line.toString());
              this.send(r.code, r.text);
              done();
            };
          } else {
            this.send(answer.code, answer.text);
          }
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
    this.resetIdle(); // the client's turn again
    const end = this.controller.replied(this.currentCommand, { code, text });
    if (end && !this._closing) this.send(end.code, end.text); // a 421: smtp-server closes after it
  }

  override upgrade(callback: () => void, secureCallback?: () => void): void {
    this.currentCommand = 'STARTTLS';
    (this._server as GatewayServer).withCertificateRequest(this.controller.requestsCertificate(), () => super.upgrade(callback, secureCallback));
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
  /** Creates the session of a new connection: its policy is chosen here, once. */
  createSession(connection: AcceptedConnection): SessionController;
  /** A session hook failed (a bug or an unexpected fault): the client got 451 4.3.0. */
  onHookError(err: Error): void;
  /** The listener's PROXY protocol setting now; null (and without this option): the peer is the client. */
  proxyProtocol?(): ProxyProtocolSetting | null;
  /** A connection closed before it became a session (see ProxyProtocolSetting). */
  onRefused?(connection: RefusedConnection): void;
  /** §2.5 maxConnections of the listener as configured now (connections per process, handshakes included). */
  maxConnections(): number;
  /** A connection refused by maxConnections before it had a session. */
  onConnectionRefused(): void;
}

export class GatewayServer extends SMTPServer {
  private readonly createSession: GatewayServerOptions['createSession'];
  private readonly onHookError: GatewayServerOptions['onHookError'];
  private readonly proxyProtocol: () => ProxyProtocolSetting | null;
  private readonly onRefused: (connection: RefusedConnection) => void;
  private readonly maxConnections: GatewayServerOptions['maxConnections'];
  private readonly onConnectionRefused: GatewayServerOptions['onConnectionRefused'];
  private readonly controllers = new WeakMap<SMTPServerSession, SessionController>();

  constructor(options: GatewayServerOptions) {
    const { createSession, onHookError, proxyProtocol, onRefused, maxConnections, onConnectionRefused, ...smtpOptions } = options;
    super({
      ...smtpOptions,
      // certgate's rules decide these per session (shared/policy/rules.ts); smtp-server's own must stay out of the way
      authOptional: true,
      allowInsecureAuth: true,
      rejectUnauthorized: false,
      requestCert: false,
      hideENHANCEDSTATUSCODES: true,
      size: 0,
    });
    this.createSession = createSession;
    this.onHookError = onHookError;
    this.proxyProtocol = proxyProtocol ?? (() => null);
    this.onRefused = onRefused ?? (() => undefined);
    this.maxConnections = maxConnections;
    this.onConnectionRefused = onConnectionRefused;
    // The accept path is certgate's (see the top of this file): smtp-server's handler goes.
    this.server.removeAllListeners('connection');
    this.server.on('connection', (socket: net.Socket) => this.accept(socket));
  }

  /**
   * socket → maxConnections → [trusted proxy and its PROXY header] → session → implicit TLS
   * handshake → maxConnectionsPerClient → SMTP connection.
   */
  private accept(socket: net.Socket): void {
    const implicitTls = Boolean(this.options.secure);
    const full = listenerAdmission({ maxConnections: this.maxConnections() }, this.connections.size + this._pendingSockets.size, implicitTls);
    if (full) {
      closeGracefully(socket, full.silent ? undefined : `${full.reply.code} ${full.reply.text}\r\n`);
      this.onConnectionRefused();
      return;
    }
    // Until the SMTP connection exists, smtp-server's guard bounds the time an implicit TLS
    // socket may take; the PROXY header has its own, shorter deadline.
    const release = this._acceptSocket(socket, implicitTls);
    if (!release) return;
    const peer: ProxyEndpoint = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    const proxy = this.proxyProtocol();
    if (!proxy) {
      this.begin(socket, release, peer);
      return;
    }
    if (!proxy.trusts(peer.address)) {
      this.refuse(socket, release, { peerAddress: peer.address, reason: 'untrusted', detail: `${peer.address} is not a trusted proxy`, bytesReceived: 0 });
      return;
    }
    readProxyHeader(socket, proxy.headerTimeoutMs).then(
      (header) => this.begin(socket, release, proxiedClient(header, peer)),
      (err: unknown) => {
        const e = err instanceof ProxyHeaderError ? err : new ProxyHeaderError('invalid', String(err), 0);
        this.refuse(socket, release, { peerAddress: peer.address, reason: e.failure, detail: e.message, bytesReceived: e.bytesReceived });
      },
    );
  }

  /** Closes a connection without a word: nothing is written before a valid header from a trusted proxy. */
  private refuse(socket: net.Socket, release: () => void, refused: RefusedConnection): void {
    release();
    socket.on('error', () => undefined);
    socket.destroy();
    this.onRefused(refused);
  }

  /** The client is known: its session (policy chosen once), then TLS if implicit, then SMTP. */
  private begin(socket: net.Socket, release: () => void, client: ProxyEndpoint): void {
    const implicitTls = Boolean(this.options.secure);
    const id = randomId();
    const controller = this.createSession({ id, clientAddress: client.address });
    const options = { id, remoteAddress: client.address, remotePort: client.port };
    if (!implicitTls) {
      release();
      this.open(socket, options, controller);
      return;
    }
    this.withCertificateRequest(controller.requestsCertificate(), () =>
      this._upgrade(socket, (err, tlsSocket) => {
        release();
        if (err || !tlsSocket) {
          // the guard is gone: a failed handshake must not leave the socket open
          socket.destroy();
          controller.closed();
          if (err) this._onError(err);
          return;
        }
        this.open(tlsSocket, options, controller);
      }),
    );
  }

  private open(socket: net.Socket, options: { id: string; remoteAddress: string; remotePort: number }, controller: SessionController): void {
    const refusal = controller.admit();
    if (refusal) {
      closeGracefully(socket, `${refusal.code} ${refusal.text}\r\n`);
      controller.closed();
      return;
    }
    const connection = new GatewayConnection(this, socket, options, controller);
    this.controllers.set(connection.session, controller);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this._onError(err));
    connection.on('connect', (data) => this._onClientConnect(data));
    connection.init();
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

  private controllerOf(session: SMTPServerSession): SessionController {
    const c = this.controllers.get(session);
    if (!c) throw new Error(`no session controller for ${session.id}`);
    return c;
  }

  /** For an async hook: its rejection answers 451 4.3.0 and is reported. */
  private failed(cb: (err?: Error | null) => void): (err: unknown) => void {
    return (err) => {
      this.onHookError(err instanceof Error ? err : new Error(String(err)));
      cb(smtpError(REPLIES.internalError));
    };
  }

  // ---------------------------------------------------------------- smtp-server's hooks

  override onConnect(session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const refusal = this.controllerOf(session).connect();
    cb(refusal ? smtpError(refusal) : undefined);
  }

  override onSecure(socket: net.Socket | TLSSocket, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    this.controllerOf(session).secured(socket as TLSSocket).then((refusal) => cb(refusal ? smtpError(refusal) : undefined), this.failed(cb));
  }

  override onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    cb: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void,
  ): void {
    this.controllerOf(session)
      .authenticate(auth.username ?? '', auth.password ?? '', auth.authzid ?? '')
      .then((r) => (r.code === 235 ? cb(null, { user: auth.username }) : cb(smtpError(r))), this.failed(cb));
  }

  override onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const declared = address.args ? address.args.SIZE : undefined;
    const refusal = this.controllerOf(session).mailFrom(declared ? Number(declared) : null);
    cb(refusal ? smtpError(refusal) : undefined);
  }

  override onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const refusal = this.controllerOf(session).rcptTo(address.address, session.envelope.rcptTo.length);
    cb(refusal ? smtpError(refusal) : undefined);
  }

  override onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null, message?: string) => void): void {
    const env = session.envelope;
    const envelope: Envelope = {
      from: env.mailFrom ? env.mailFrom.address : '',
      to: env.rcptTo.map((r) => r.address),
      smtpUtf8: Boolean(env.smtpUtf8),
      body8bit: env.bodyType === '8bitmime',
      helo: session.hostNameAppearsAs || '',
    };
    this.controllerOf(session).data(stream, envelope).then((r) => (r.code === 250 ? cb(null, r.text) : cb(smtpError(r))), this.failed(cb));
  }

  override onClose(session: SMTPServerSession): void {
    this.controllers.get(session)?.closed();
  }
}
