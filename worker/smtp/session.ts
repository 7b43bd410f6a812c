// One SMTP session: gathers the facts (TLS state, certificate, directory answers), asks
// shared/policy/rules.ts what to reply, applies it, and records events. No rule is decided
// here. The adapter (adapter.ts) calls the SessionController methods below in the order a
// connection meets them; ARCHITECTURE.md lists which rule each one applies.
import type { X509Certificate } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import {
  afterHandshake, authCommand, authOutcome, connectReply, ehloFeatures, mailFromReply, rcptToReply,
  receivedProtocol, REPLIES, requestsClientCertificate, sizeExceeded, startTlsCommandReply, startTlsGate,
  externalContinuation, type AllowanceCheck, type AuthCommandDecision, type CertificateCheck, type CredentialCheck, type DirectoryMatch,
  type EhloFeatures, type Reply, type SessionState,
} from '../../shared/policy/rules.ts';
import {
  authFailureLimitReply, badCommandLimitReply, clientAdmission, idleTimeoutMs, isBadCommandReply, LIMIT_REPLIES,
  messageLimitReply, unknownCommandReply,
} from '../../shared/policy/limits.ts';
import { countsAsFailure, THROTTLED, type ThrottleScope } from '../../shared/policy/auth-throttle.ts';
import type { AuthFailureThrottle, LdapAuthProfile, NewSessionEvent } from '../../shared/config/schemas.ts';
import type { CertificateFacts } from '../../shared/pki/certificate.ts';
import { verifyFailure } from '../../shared/pki/verify.ts';
import { peerCertificate } from './peer-certificate.ts';
import type { RevocationDecision } from '../../shared/pki/revocation.ts';
import { certificateTokenValues, type TokenValues } from '../../shared/directory/tokens.ts';
import type { AcceptedConnection, Challenge, Envelope, SessionController } from './adapter.ts';
import type { ListenerRuntime } from './runtime.ts';
import type { NextHopTarget, RelayResult } from '../relay/next-hop.ts';
import { receivedHeader } from './received.ts';
import { randomId } from '../../shared/util/random-id.ts';

/** The directory operations a session needs (shared/directory/client.ts implements them). */
export interface DirectoryPort {
  /** `detail`: the directory's own reason, for the events (SPEC §2.1, §2.7). */
  authenticate(username: string, password: string): Promise<{ outcome: CredentialCheck; userId: string | null; detail?: string }>;
  checkAllowed(username: string, now: Date): Promise<{ outcome: Exclude<AllowanceCheck, 'not-checked'>; detail?: string }>;
  lookupCertificate(values: TokenValues): Promise<{ outcome: 'one' | 'none' | 'many' | 'missing-field' | 'directory-unavailable'; userId: string | null; detail?: string }>;
}

export interface SessionDeps {
  workerId: string;
  now(): Date;
  /** Whether the worker admits new connections at all (shared/policy/admission.ts); checked first in admit(). */
  admission(): Reply | null;
  record(event: NewSessionEvent): void;
  directory(ldapProfileName: string): DirectoryPort | null;
  /** inboundSmtpTls of the CRL and OCSP settings (shared/pki/revocation.ts); waits at most the OCSP timeoutMs. */
  revocation(chain: X509Certificate[]): Promise<RevocationDecision>;
  /** outboundSmtpTls: null to use the next hop, else why not (e.g. its certificate is revoked). */
  checkNextHop(chain: X509Certificate[]): Promise<string | null>;
  relay(target: NextHopTarget, envelope: { from: string; to: string[]; smtpUtf8: boolean; body8bit: boolean }, prefix: Buffer, message: Readable): Promise<RelayResult>;
  /** §2.4 authFailureThrottle: the counts every worker shares (worker/auth-throttle.ts). */
  throttle: {
    check(throttle: AuthFailureThrottle, clientAddress: string, username: string, nowMs: number): Promise<ThrottleScope | null>;
    recordFailure(throttle: AuthFailureThrottle, clientAddress: string, username: string, nowMs: number): Promise<void>;
  };
  /** §2.4 maxConnectionsPerClient: connections open per client in this process (worker/smtp/client-connections.ts). */
  clients: { count(address: string): number; hold(address: string): () => void };
  observe: {
    /** A session began (counted per listener) or ended. */
    sessionOpened(listener: string): void;
    sessionClosed(): void;
    auth(method: string, outcome: string, reason: string): void;
    relay(outcome: string): void;
    /** An AUTH refused by the throttle, by the count that refused it. */
    throttled(scope: ThrottleScope): void;
    /** A limit of §2.4/§2.5 ended or refused a session (max-connections-per-client, too-many-errors, ...). */
    limit(name: string): void;
  };
}

type EventFields = Pick<NewSessionEvent, 'outcome' | 'reason'> & Partial<Pick<NewSessionEvent, 'command' | 'reply' | 'envelope' | 'method' | 'detail'>>;

export class Session implements SessionController {
  readonly state: SessionState;
  private certificate: CertificateFacts | null = null;
  private tlsVersion: string | null = null;
  /** What the revocation check said of the certificate, for the events that follow. */
  private revocationNote: string | null = null;
  /** What the directory said of the certificate query, when it gave a reason. */
  private directoryNote: string | null = null;
  private allowedNotPermitted = false;
  /** The LDAP auth profile of an AUTH PLAIN/LOGIN exchange in progress. */
  private saslProfile: LdapAuthProfile | null = null;

  private ended = false;
  /** Rules 1 and 3: the refusal this session answers every command with. */
  private refusal: Reply | null = null;
  /** Releases this session's place in the per-client count (maxConnectionsPerClient). */
  private releaseClient: (() => void) | null = null;
  private messages = 0;
  private authFailures = 0;
  private badCommands = 0;
  /** A 421 decided while answering a command: replied() hands it to the adapter after that answer. */
  private ending: { reply: Reply; reason: string } | null = null;

  constructor(
    private readonly runtime: ListenerRuntime,
    private readonly deps: SessionDeps,
    private readonly connection: AcceptedConnection,
  ) {
    this.state = {
      policy: runtime.policyFor(connection.clientAddress),
      auth: runtime.auth,
      tlsConfigured: runtime.listener.tls !== null,
      secure: runtime.listener.implicitTls,
      user: null,
    };
    deps.observe.sessionOpened(runtime.listener.name);
  }

  // ------------------------------------------------------------ SessionController

  requestsCertificate(): boolean {
    return requestsClientCertificate(this.state.policy, this.state.auth);
  }

  ehloFeatures(): EhloFeatures {
    return ehloFeatures(this.state);
  }

  /** §2.4 maxConnectionsPerClient, counted per worker process. */
  admit(): Reply | null {
    // SPEC §1 WORKER_MAX_STALE_SECONDS: before any rule, and without taking a client's slot.
    const unavailable = this.deps.admission();
    if (unavailable) {
      this.event({ outcome: 'rejected', reason: 'configuration-stale', command: 'CONNECT', reply: format(unavailable) });
      return unavailable;
    }
    const refusal = clientAdmission(this.state.policy, this.deps.clients.count(this.connection.clientAddress));
    if (refusal) {
      this.deps.observe.limit('max-connections-per-client');
      this.event({ outcome: 'rejected', reason: 'max-connections-per-client', command: 'CONNECT', reply: format(refusal) });
      return refusal;
    }
    this.releaseClient = this.deps.clients.hold(this.connection.clientAddress);
    return null;
  }

  idleTimeoutMs(): number {
    return idleTimeoutMs(this.runtime.listener);
  }

  idle(): Reply | null {
    if (this.refusal) return null; // a refused session just closes after its 10 s of silence
    this.deps.observe.limit('idle-timeout');
    return LIMIT_REPLIES.idleTimeout;
  }

  beforeCommand(command: string, args: string[]): Reply | Challenge | null {
    // A refused session accepts nothing but QUIT (RFC 5321 §3.1), which smtp-server answers and closes.
    if (this.refusal) return command === 'QUIT' ? null : this.refusal;
    const unknown = unknownCommandReply(command);
    if (unknown) return unknown;
    if (command === 'MAIL' || command === 'RCPT' || command === 'DATA') {
      const gate = startTlsGate(this.state);
      if (gate) this.event({ outcome: 'rejected', reason: 'tls-required', command, reply: format(gate) });
      return gate;
    }
    if (command === 'STARTTLS') return startTlsCommandReply(this.state);
    if (command !== 'AUTH') return null;
    const mechanism = (args[0] ?? '').toUpperCase();
    return this.authDecision(authCommand(this.state, mechanism, args[1]), mechanism);
  }

  private authDecision(decision: AuthCommandDecision, mechanism: string): Reply | Challenge | null {
    if (decision.action === 'sasl') {
      this.saslProfile = decision.profile;
      return null;
    }
    if (decision.action === 'challenge') {
      return { answer: (line) => this.authDecision(externalContinuation(this.state, line), mechanism) as Reply };
    }
    const accepted = decision.reply.code === 235;
    if (decision.reply === REPLIES.authFailed) this.authFailed();
    const method = mechanism === 'EXTERNAL' ? 'certificate' : 'smtp-auth';
    this.deps.observe.auth(method, accepted ? 'accepted' : 'rejected', decision.reason);
    this.event({ outcome: accepted ? 'accepted' : 'rejected', reason: decision.reason, command: 'AUTH', reply: format(decision.reply), method });
    return decision.reply;
  }

  replied(command: string, reply: Reply): Reply | null {
    if (command === 'MAIL' && reply.code === 250) this.messages++;
    // Every command a refused session answers with its refusal is out of sequence.
    const refusedAgain = this.refusal !== null && command !== 'CONNECT' && reply.code === this.refusal.code && reply.text === this.refusal.text;
    if (isBadCommandReply(reply) || refusedAgain) {
      this.badCommands++;
      const end = badCommandLimitReply(this.state.policy, this.badCommands);
      if (end) this.ending ??= { reply: end, reason: 'too-many-errors' };
    }
    // allow-and-log: every command after the AUTH that admitted the user is on record.
    // The final reply to DATA is the message event itself.
    if (this.allowedNotPermitted && command !== 'AUTH' && !(command === 'DATA' && reply.code !== 354)) {
      this.event({ outcome: 'allowed-not-permitted', reason: 'not-allowed-by-allow-query', command, reply: format(reply) });
    }
    const ending = this.ending;
    if (!ending || reply.code === 421) return null;
    this.ending = null;
    this.deps.observe.limit(ending.reason);
    this.event({ outcome: 'rejected', reason: ending.reason, command, reply: format(ending.reply) });
    return ending.reply;
  }

  /** A failed AUTH (credentials, allowance, EXTERNAL identity, throttle): maxAuthFailuresPerConnection. */
  private authFailed(): void {
    this.authFailures++;
    const end = authFailureLimitReply(this.state.policy, this.authFailures);
    if (end) this.ending ??= { reply: end, reason: 'too-many-auth-failures' };
  }

  /** onConnect: rule 1. */
  connect(): Reply | null {
    const refusal = connectReply(this.state.policy);
    if (refusal) {
      this.refusal = refusal;
      this.event({ outcome: 'rejected', reason: 'policy-reject', command: 'CONNECT', reply: format(refusal) });
    }
    return refusal;
  }

  /** onSecure: rules 3 and 4, after the handshake of STARTTLS or of an implicit-TLS listener. */
  async secured(socket: TLSSocket): Promise<Reply | null> {
    // RFC 3207: nothing learnt before TLS survives it, the identity included.
    this.state.secure = true;
    this.state.user = null;
    this.allowedNotPermitted = false;
    this.tlsVersion = socket.getProtocol() ?? null;
    const check = this.requestsCertificate() ? await this.checkCertificate(socket) : ({ kind: 'not-requested' } as const);
    const decision = afterHandshake(this.state, check);
    if (decision.user) this.state.user = decision.user;
    if (check.kind !== 'not-requested') {
      const outcome = decision.refuse ? 'rejected' : decision.user ? 'accepted' : check.kind === 'valid' || check.kind === 'absent' ? 'accepted' : 'rejected';
      this.deps.observe.auth('certificate', outcome, decision.reason);
      this.event({
        outcome, reason: decision.reason, command: 'STARTTLS', method: decision.user ? 'certificate' : 'none',
        reply: decision.refuse ? format(decision.refuse) : null,
        detail: [this.revocationNote, this.directoryNote].filter(Boolean).join('; ') || null,
      });
    }
    this.refusal = decision.refuse;
    return decision.refuse;
  }

  /** onAuth: AUTH PLAIN/LOGIN once smtp-server has the credentials (rule 5, §2.3). */
  async authenticate(username: string, password: string, authzid: string): Promise<Reply> {
    const profile = this.saslProfile;
    this.saslProfile = null;
    if (!profile) return REPLIES.authNotEnabled; // cannot happen: beforeCommand set it for this exchange
    // §2.4: over a throttle count, the directory is not asked, whatever the credentials.
    const nowMs = this.deps.now().getTime();
    const throttle = this.state.policy.authFailureThrottle;
    const clientAddress = this.connection.clientAddress;
    const throttledBy = await this.deps.throttle.check(throttle, clientAddress, username, nowMs);
    if (throttledBy) {
      this.deps.observe.throttled(throttledBy);
      this.deps.observe.auth('smtp-auth', 'rejected', 'throttled');
      this.event({ outcome: 'rejected', reason: 'throttled', command: 'AUTH', reply: format(THROTTLED), method: 'smtp-auth', user: username, detail: `authFailureThrottle per ${throttledBy}` });
      this.authFailed();
      return THROTTLED;
    }
    // Acting on behalf of another identity (PLAIN authzid) is not something certgate grants.
    const proxying = authzid !== '' && authzid !== username;
    const directory = this.deps.directory(profile.ldapProfile);
    // The allowance query runs beside the credential check (one directory round trip less
    // per AUTH); its answer is only used once the credentials are right.
    const allowing = profile.checkWithLdap && directory && !proxying && password.trim() !== ''
      ? directory.checkAllowed(username, this.deps.now())
      : null;
    let credentials: CredentialCheck;
    let userId: string | null = null;
    let detail: string | null = null;
    if (proxying) credentials = 'invalid-credentials';
    else if (!directory) credentials = 'directory-unavailable';
    else ({ outcome: credentials, userId, detail = null } = await directory.authenticate(username, password));
    let allowance: AllowanceCheck = 'not-checked';
    if (allowing) {
      const answer = await allowing;
      if (credentials === 'authenticated') {
        allowance = answer.outcome;
        detail ??= answer.detail ?? null;
      }
    }
    const out = authOutcome(profile, credentials, allowance);
    if (out.authenticated) {
      this.state.user = { id: userId ?? username, method: 'smtp-auth' };
      this.allowedNotPermitted = out.allowedNotPermitted;
    } else if (out.reason !== 'directory-unavailable') {
      this.authFailed();
      // Counted before the answer, so that the client's next try (on any worker) sees it.
      if (countsAsFailure(out.reason)) await this.deps.throttle.recordFailure(throttle, clientAddress, username, nowMs);
    }
    this.deps.observe.auth('smtp-auth', out.outcome, out.reason);
    this.event({
      outcome: out.outcome, reason: out.reason, command: 'AUTH', reply: format(out.reply), method: 'smtp-auth',
      user: out.authenticated ? this.state.user?.id ?? null : username, detail,
    });
    return out.reply;
  }

  /** onMailFrom: rules 2 and 6, SIZE, then maxMessagesPerConnection. */
  mailFrom(declaredSize: number | null): Reply | null {
    const refusal = mailFromReply(this.state, declaredSize);
    if (refusal) this.event({ outcome: 'rejected', reason: refusal === REPLIES.authRequired ? 'authentication-required' : 'size', command: 'MAIL', reply: format(refusal) });
    const tooMany = refusal ? null : messageLimitReply(this.state.policy, this.messages);
    if (tooMany) {
      this.deps.observe.limit('max-messages-per-connection');
      this.event({ outcome: 'rejected', reason: 'max-messages-per-connection', command: 'MAIL', reply: format(tooMany) });
    }
    return refusal ?? tooMany;
  }

  /** onRcptTo: rule 7. */
  rcptTo(recipient: string, recipientsSoFar: number): Reply | null {
    return rcptToReply(this.state, recipient, this.runtime.listener.acceptedDomains, recipientsSoFar);
  }

  /** onData: relay to the next hop, answering what it answered (rule 8). */
  async data(message: Readable, envelope: Envelope): Promise<Reply> {
    const { from, to } = envelope;
    const id = randomId();
    const prefix = Buffer.from(receivedHeader({
      helo: envelope.helo,
      // Reverse DNS is off (no DNS delay per session): the header says `unknown`.
      clientHostname: null,
      clientAddress: this.connection.clientAddress,
      hostname: this.runtime.listener.hostname,
      protocol: receivedProtocol(this.state),
      id,
      user: this.state.user,
      date: this.deps.now(),
    }));
    let bytes = 0;
    let tooBig: Reply | null = null;
    // Counts while streaming; over the limit it stops the relay before the final dot.
    const counter = new Transform({
      transform: (chunk: Buffer, _enc, done) => {
        bytes += chunk.length;
        tooBig = sizeExceeded(this.state, bytes);
        done(tooBig ? new Error('message over the size limit') : null, chunk);
      },
    });
    message.on('error', (err) => counter.destroy(err));
    counter.on('error', () => message.resume()); // let the client finish sending; it reads our reply after
    message.pipe(counter);
    const hop = this.runtime.listener.nextHop;
    const result = await this.deps.relay(
      // The final reply must come before the client's own 5-minute timeout runs out.
      {
        host: hop.host, port: hop.port, tls: hop.tls, caPem: hop.caPem, heloName: this.runtime.listener.hostname, finalReplyTimeoutMs: 240_000,
        checkServerCertificate: (serverChain) => this.deps.checkNextHop(serverChain),
      },
      { from, to, smtpUtf8: envelope.smtpUtf8, body8bit: envelope.body8bit },
      prefix,
      counter,
    );
    const answer: Reply = tooBig ?? result.reply;
    const delivered = result.accepted && !tooBig;
    this.deps.observe.relay(delivered ? 'relayed' : tooBig ? 'too-big' : `failed-${String(answer.code)[0]}xx`);
    this.event({
      outcome: !delivered ? 'rejected' : this.allowedNotPermitted ? 'allowed-not-permitted' : 'accepted',
      reason: delivered ? `relayed as ${id}` : tooBig ? 'message-too-big' : `next-hop: ${result.accepted ? '' : result.stage}`,
      command: 'DATA', reply: format(delivered ? okReply(id, answer) : answer),
      envelope: { from, recipientCount: to.length, size: bytes },
    });
    return delivered ? okReply(id, answer) : answer;
  }

  // ------------------------------------------------------------ helpers

  closed(): void {
    if (this.ended) return;
    this.ended = true;
    this.releaseClient?.();
    this.deps.observe.sessionClosed();
  }

  // ------------------------------------------------------------ helpers

  /** OpenSSL verified the chain in the handshake; certgate adds revocation and the directory. */
  private async checkCertificate(socket: TLSSocket): Promise<CertificateCheck> {
    const peer = peerCertificate(socket, this.runtime.clientCas);
    if (!peer) return { kind: 'absent' };
    const { facts } = peer;
    this.certificate = facts;
    if (!facts) return { kind: 'invalid', reason: 'malformed' };
    if (!socket.authorized) {
      this.revocationNote = `OpenSSL: ${String(socket.authorizationError)}`;
      return { kind: 'invalid', reason: verifyFailure(socket.authorizationError) };
    }
    const revocation = await this.deps.revocation(peer.chain());
    this.revocationNote = revocation.detail;
    if (revocation.refuse) return { kind: 'invalid', reason: revocation.refuse };
    if (this.state.auth.type !== 'certificate') return { kind: 'valid', directory: null };
    const directory = this.deps.directory(this.state.auth.profile.ldapProfile);
    if (!directory) return { kind: 'valid', directory: { kind: 'unavailable' } };
    const found = await directory.lookupCertificate(certificateTokenValues(facts));
    this.directoryNote = found.detail ?? null;
    return { kind: 'valid', directory: directoryMatch(found) };
  }

  private event(fields: EventFields & { user?: string | null }): void {
    const c = this.certificate;
    this.deps.record({
      time: this.deps.now().toISOString(),
      worker: this.deps.workerId,
      listener: this.runtime.listener.name,
      sessionId: this.connection.id,
      clientAddress: this.connection.clientAddress,
      tlsVersion: this.tlsVersion,
      certificate: c ? { subject: c.subjectDn, serial: c.serial, issuer: c.issuerDn } : null,
      method: fields.method ?? (this.state.user?.method ?? 'none'),
      user: fields.user !== undefined ? fields.user : this.state.user?.id ?? null,
      outcome: fields.outcome,
      reason: fields.reason,
      detail: fields.detail ?? null,
      command: fields.command ?? null,
      reply: fields.reply ?? null,
      envelope: fields.envelope ?? null,
    });
  }
}

function directoryMatch(found: Awaited<ReturnType<DirectoryPort['lookupCertificate']>>): DirectoryMatch {
  switch (found.outcome) {
    case 'one': return found.userId ? { kind: 'one', userId: found.userId } : { kind: 'none' };
    case 'directory-unavailable': return { kind: 'unavailable' };
    default: return { kind: found.outcome };
  }
}

function okReply(id: string, nextHop: Reply): Reply {
  return { code: 250, text: `2.0.0 Ok: relayed as ${id} (next hop: ${nextHop.code} ${nextHop.text.split('\n')[0]})` };
}

function format(r: Reply): string {
  return `${r.code} ${r.text}`;
}
