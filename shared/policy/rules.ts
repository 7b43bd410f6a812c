// The SMTP session rules of SPEC §3 as pure functions: given the policy, the TLS state,
// the certificate check and the directory's answer, what does the session reply?
// No I/O here. The worker's smtp-server adapter gathers the facts, calls these and applies
// the answer; each rule of §3 lives in exactly one function below, named after it.
import type { CertificateAuthProfile, LdapAuthProfile, MailFlowPolicy, SmtpReply } from '../config/schemas.ts';
import { domainToASCII } from 'node:url';

/** An SMTP reply: the one reply type of the worker (the same shape as a configured notAllowedResponse). */
export type Reply = SmtpReply;

/** A reply from its code and text (the tables of replies here and in limits.ts). */
export const reply = (code: number, text: string): Reply => ({ code, text });

export const REPLIES = {
  rejectedAtConnect: reply(554, '5.7.1 Access denied'),
  startTlsFirst: reply(530, '5.7.0 Must issue a STARTTLS command first'),
  encryptionRequired: reply(538, '5.7.11 Encryption required for requested authentication mechanism'),
  authRequired: reply(530, '5.7.0 Authentication required'),
  authSucceeded: reply(235, '2.7.0 Authentication successful'),
  authFailed: reply(535, '5.7.8 Authentication credentials invalid'),
  directoryUnavailable: reply(454, '4.7.0 Temporary authentication failure'),
  authNotEnabled: reply(503, '5.5.1 Error: authentication not enabled'),
  alreadyAuthenticated: reply(503, '5.5.1 Error: already authenticated'),
  unknownMechanism: reply(504, '5.5.4 Unrecognized authentication type'),
  relayDenied: reply(550, '5.7.1 Recipient address rejected: relay access denied'),
  tooManyRecipients: reply(452, '4.5.3 Too many recipients'),
  messageTooBig: reply(552, '5.3.4 Message size exceeds fixed maximum message size'),
  startTlsNotAvailable: reply(502, '5.5.1 Error: STARTTLS not available'),
  authAborted: reply(501, '5.7.0 Authentication aborted'),
  /** RFC 4954 §4: a response that is not base64 is rejected with 501 5.5.2. */
  cannotDecode: reply(501, '5.5.2 Cannot decode the AUTH EXTERNAL response: send your user name in base64, or = for none'),
  /** A hook failed inside certgate: the client should retry (no message is lost: it was not accepted). */
  internalError: reply(451, '4.3.0 Internal error, try again later'),
} as const;

// ---------------------------------------------------------------- the facts a session carries

/** The listener's authentication profile with its fallback already resolved. */
export type AuthSetup =
  | { type: 'none' }
  | { type: 'ldap'; profile: LdapAuthProfile }
  | { type: 'certificate'; profile: CertificateAuthProfile; fallback: LdapAuthProfile | null };

/** What the directory said about a certificate (the certificate query). */
export type DirectoryMatch =
  | { kind: 'one'; userId: string }
  | { kind: 'none' }
  | { kind: 'many' }
  | { kind: 'missing-field' }
  | { kind: 'unavailable' };

/** The result of checking the client certificate after a TLS handshake. */
export type CertificateCheck =
  | { kind: 'not-requested' }
  | { kind: 'absent' }
  /** reason: a VerifyFailure of shared/pki/verify.ts, or revoked, crl-expired, revocation-unavailable */
  | { kind: 'invalid'; reason: string }
  /** directory: null when the listener's profile runs no certificate query. */
  | { kind: 'valid'; directory: DirectoryMatch | null };

export interface SessionUser { id: string; method: 'certificate' | 'smtp-auth' }

export interface SessionState {
  policy: MailFlowPolicy;
  auth: AuthSetup;
  /** The listener has a server certificate, so TLS can be offered. */
  tlsConfigured: boolean;
  /** TLS is active (after STARTTLS, or an implicit-TLS listener). */
  secure: boolean;
  user: SessionUser | null;
}

// ---------------------------------------------------------------- rule 1: action reject

export function connectReply(policy: MailFlowPolicy): Reply | null {
  return policy.action === 'reject' ? REPLIES.rejectedAtConnect : null;
}

// ---------------------------------------------------------------- rule 2: STARTTLS offer and requirement

export function offersStartTls(s: SessionState): boolean {
  return s.policy.tls !== 'off' && s.tlsConfigured && !s.secure;
}

/** STARTTLS when it is not offered (`tls: off`, or no server certificate) is not available. */
export function startTlsCommandReply(s: SessionState): Reply | null {
  return s.secure || offersStartTls(s) ? null : REPLIES.startTlsNotAvailable;
}

/** Rule 2's gate, checked before every MAIL, RCPT, DATA and AUTH (it wins over rule 5's 538). */
export function startTlsGate(s: SessionState): Reply | null {
  return s.policy.tls === 'required' && !s.secure ? REPLIES.startTlsFirst : null;
}

// ---------------------------------------------------------------- rule 3: client certificates

/** Whether the TLS handshake asks the client for a certificate. */
export function requestsClientCertificate(policy: MailFlowPolicy, auth: AuthSetup): boolean {
  return policy.verifyClientCertificate || auth.type === 'certificate';
}

export interface HandshakeDecision {
  /** Set: answer this and close the connection. */
  refuse: Reply | null;
  /** Set: the certificate authenticated the session (rule 4). */
  user: SessionUser | null;
  /** Why, for the event: a certificate-check reason or a directory outcome. */
  reason: string;
}

/**
 * Rules 3 and 4 after the TLS handshake. `verifyClientCertificate` refuses any invalid
 * certificate, a missing one under `tls: required`, and (rule 4) one the directory does
 * not match exactly once; without it a certificate that does not authenticate just
 * leaves the session unauthenticated, so SMTP AUTH (rule 5) may still apply.
 */
export function afterHandshake(s: SessionState, cert: CertificateCheck): HandshakeDecision {
  const verify = s.policy.verifyClientCertificate;
  const refuse = (reason: string, r: Reply = reply(554, `5.7.1 ${REFUSAL_TEXT.get(reason) ?? `Client certificate rejected: ${reason}`}`)): HandshakeDecision =>
    ({ refuse: r, user: null, reason });
  const goOn = (reason: string): HandshakeDecision => ({ refuse: null, user: null, reason });

  switch (cert.kind) {
    case 'not-requested':
      return goOn('no-certificate-requested');
    case 'absent':
      return verify && s.policy.tls === 'required' ? refuse('no-certificate') : goOn('no-certificate');
    case 'invalid':
      return verify ? refuse(cert.reason) : goOn(cert.reason);
    case 'valid': {
      if (s.auth.type !== 'certificate' || cert.directory === null) return goOn('certificate-valid');
      const match = cert.directory;
      if (match.kind === 'one') return { refuse: null, user: { id: match.userId, method: 'certificate' }, reason: 'certificate-authenticated' };
      const reason = DIRECTORY_REASON[match.kind];
      if (!verify) return goOn(reason);
      // A directory we cannot reach is a temporary failure: the client should retry later.
      return match.kind === 'unavailable' ? refuse(reason, REPLIES.directoryUnavailable) : refuse(reason);
    }
  }
}

const DIRECTORY_REASON = {
  none: 'not-in-directory',
  many: 'ambiguous-directory-match',
  'missing-field': 'certificate-field-missing',
  unavailable: 'directory-unavailable',
} as const;

const REFUSAL_TEXT = new Map<string, string>([
  ['no-certificate', 'Client certificate required'],
  ['expired', 'Client certificate expired'],
  ['not-yet-valid', 'Client certificate not yet valid'],
  ['untrusted-issuer', 'Client certificate not issued by a trusted CA'],
  ['bad-key-usage', 'Client certificate not valid for client authentication'],
  ['bad-signature', 'Client certificate signature invalid'],
  ['not-a-ca', 'Client certificate issued by a certificate that may not issue certificates'],
  ['malformed', 'Client certificate malformed'],
  ['revoked', 'Client certificate revoked'],
  ['crl-expired', 'Revocation data for the client certificate has expired'],
  ['revocation-unavailable', 'Revocation status of the client certificate is unavailable'],
  ['not-in-directory', 'Client certificate not listed in the directory'],
  ['ambiguous-directory-match', 'Client certificate matches more than one directory entry'],
  ['certificate-field-missing', 'Client certificate lacks a field the directory query needs'],
]);

// ---------------------------------------------------------------- rules 4 and 5: AUTH

/** The LDAP profile through which AUTH PLAIN/LOGIN runs in this session, or null if SMTP AUTH is not available. */
export function smtpAuthProfile(s: SessionState): LdapAuthProfile | null {
  if (s.auth.type === 'ldap') return s.auth.profile;
  if (s.auth.type === 'certificate' && s.auth.profile.allowSmtpAuthWithoutCertificate && s.user?.method !== 'certificate') {
    return s.auth.fallback;
  }
  return null;
}

/** The SASL mechanisms EHLO advertises now. */
export function authMechanisms(s: SessionState): string[] {
  if (s.user) return s.user.method === 'certificate' ? ['EXTERNAL'] : [];
  if (!smtpAuthProfile(s)) return [];
  // Not advertised where using it would be refused (rules 2 and 5): clients then STARTTLS first.
  if (!s.secure && (s.policy.tls === 'required' || s.policy.smtpAuthRequiresTls)) return [];
  return ['PLAIN', 'LOGIN'];
}

export interface EhloFeatures { startTls: boolean; auth: string[]; size: number }

export function ehloFeatures(s: SessionState): EhloFeatures {
  return { startTls: offersStartTls(s), auth: authMechanisms(s), size: s.policy.maxMessageBytes };
}

/** What to do with `AUTH <mechanism> [initial-response]`. */
export type AuthCommandDecision =
  | { action: 'reply'; reply: Reply; reason: string }
  /** RFC 4954: no initial response; send an empty `334 ` challenge and decide on the client's answer. */
  | { action: 'challenge' }
  /** Run the SASL exchange (PLAIN or LOGIN) against `profile`. */
  | { action: 'sasl'; profile: LdapAuthProfile };

/**
 * AUTH EXTERNAL (RFC 4422 appendix A): the certificate already authenticated the session;
 * the optional authorization identity (base64, `=` for empty) must be empty or that user.
 */
export function authCommand(s: SessionState, mechanism: string, initialResponse: string | undefined): AuthCommandDecision {
  const answer = (r: Reply, reason: string): AuthCommandDecision => ({ action: 'reply', reply: r, reason });
  const gate = startTlsGate(s);
  if (gate) return answer(gate, 'tls-required');
  const mech = mechanism.toUpperCase();

  if (s.user?.method === 'certificate') {
    if (mech !== 'EXTERNAL') return answer(REPLIES.alreadyAuthenticated, 'authenticated-by-certificate');
    if (initialResponse === undefined) return { action: 'challenge' };
    if (initialResponse === '*') return answer(REPLIES.authAborted, 'auth-aborted');
    const identity = decodeAuthzid(initialResponse);
    if (identity === null) return answer(REPLIES.cannotDecode, 'undecodable-response');
    return identity === '' || identity === s.user.id
      ? answer(REPLIES.authSucceeded, 'external-accepted')
      : answer(REPLIES.authFailed, 'external-identity-mismatch');
  }
  if (s.user) return answer(REPLIES.alreadyAuthenticated, 'already-authenticated');

  const profile = smtpAuthProfile(s);
  if (!profile) return answer(REPLIES.authNotEnabled, 'smtp-auth-not-enabled');
  if (s.policy.smtpAuthRequiresTls && !s.secure) return answer(REPLIES.encryptionRequired, 'smtp-auth-requires-tls');
  if (mech !== 'PLAIN' && mech !== 'LOGIN') return answer(REPLIES.unknownMechanism, 'unknown-mechanism');
  return { action: 'sasl', profile };
}

/**
 * The answer to the `334 ` challenge of AUTH EXTERNAL: RFC 4954 §4 takes an empty line as
 * an empty response and `*` as cancelling; `=` (the empty initial response) is read as empty
 * here too, as clients that always send it mean. A line that is not base64 gets 501 5.5.2.
 * msmtp built with GNU SASL (Debian's) sends no answer at all when `auth external` has no
 * `user`, and goes on with `MAIL FROM:<...>`: that line is no response in any reading of
 * RFC 4954 / RFC 4422, so it gets the 501, whose text says what to send.
 */
export function externalContinuation(s: SessionState, line: string): AuthCommandDecision {
  return authCommand(s, 'EXTERNAL', line.trim() === '' ? '=' : line.trim());
}

/** RFC 4422 / RFC 4954: `=` means an empty response; otherwise base64 (padding optional). null: not base64. */
function decodeAuthzid(initialResponse: string): string | null {
  if (initialResponse === '=') return '';
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(initialResponse)) return null;
  const unpadded = initialResponse.replace(/=+$/, '');
  if (unpadded.length % 4 === 1 || (initialResponse.length !== unpadded.length && initialResponse.length % 4 !== 0)) return null;
  return Buffer.from(unpadded, 'base64').toString('utf8');
}

/** What the directory answered for AUTH PLAIN/LOGIN credentials. */
export type CredentialCheck = 'authenticated' | 'invalid-credentials' | 'unknown-user' | 'empty-password' | 'ambiguous' | 'directory-unavailable';
/** What the allowance query answered (`not-checked` without `checkWithLdap`). */
export type AllowanceCheck = 'allowed' | 'not-allowed' | 'directory-unavailable' | 'not-checked';

export interface AuthOutcome {
  reply: Reply;
  /** The session is now authenticated (possibly as not permitted but allowed and logged). */
  authenticated: boolean;
  /** `allow-and-log`: every later command of the session is recorded as allowed-not-permitted. */
  allowedNotPermitted: boolean;
  outcome: 'accepted' | 'rejected' | 'allowed-not-permitted';
  reason: string;
}

/** Rule 5 and §2.3: the reply to AUTH PLAIN/LOGIN once the directory has answered. */
export function authOutcome(profile: LdapAuthProfile, credentials: CredentialCheck, allowance: AllowanceCheck): AuthOutcome {
  const reject = (r: Reply, reason: string): AuthOutcome => ({ reply: r, authenticated: false, allowedNotPermitted: false, outcome: 'rejected', reason });
  if (credentials === 'directory-unavailable') return reject(REPLIES.directoryUnavailable, 'directory-unavailable');
  if (credentials !== 'authenticated') return reject(REPLIES.authFailed, credentials);
  if (!profile.checkWithLdap || allowance === 'allowed') {
    return { reply: REPLIES.authSucceeded, authenticated: true, allowedNotPermitted: false, outcome: 'accepted', reason: 'authenticated' };
  }
  if (allowance === 'directory-unavailable') return reject(REPLIES.directoryUnavailable, 'directory-unavailable');
  // allowance is 'not-allowed' ('not-checked' cannot occur with checkWithLdap; treat it alike: fail closed)
  if (profile.onNotAllowed === 'allow-and-log') {
    return { reply: REPLIES.authSucceeded, authenticated: true, allowedNotPermitted: true, outcome: 'allowed-not-permitted', reason: 'not-allowed-by-allow-query' };
  }
  return reject(profile.notAllowedResponse, 'not-allowed-by-allow-query');
}

// ---------------------------------------------------------------- rules 2 and 6: MAIL FROM

/** MAIL FROM: rule 2, then rule 6, then the declared SIZE against the policy's limit. */
export function mailFromReply(s: SessionState, declaredSize: number | null): Reply | null {
  const gate = startTlsGate(s);
  if (gate) return gate;
  if (s.policy.requireSmtpAuth && !s.user) return REPLIES.authRequired;
  if (declaredSize !== null && declaredSize > s.policy.maxMessageBytes) return REPLIES.messageTooBig;
  return null;
}

// ---------------------------------------------------------------- rule 7: RCPT TO

/** RCPT TO: rule 2, then the accepted domains of `accept`, then `maxRecipients`. */
export function rcptToReply(s: SessionState, recipient: string, acceptedDomains: readonly string[], recipientsSoFar: number): Reply | null {
  const gate = startTlsGate(s);
  if (gate) return gate;
  if (s.policy.action === 'accept' && !isAcceptedDomain(recipient, acceptedDomains)) return REPLIES.relayDenied;
  if (recipientsSoFar >= s.policy.maxRecipients) return REPLIES.tooManyRecipients;
  return null;
}

function isAcceptedDomain(recipient: string, acceptedDomains: readonly string[]): boolean {
  const at = recipient.lastIndexOf('@');
  if (at < 0) return false;
  const domain = canonicalDomain(recipient.slice(at + 1));
  return domain !== '' && acceptedDomains.some((d) => canonicalDomain(d) === domain);
}

/** Lower case, no trailing dot, IDNs as their `xn--` A-label form (SMTPUTF8 clients send U-labels). */
function canonicalDomain(d: string): string {
  return domainToASCII(d.replace(/\.$/, '')).toLowerCase();
}

/** After the message: over the policy's size limit (counted while streaming). */
export function sizeExceeded(s: SessionState, bytes: number): Reply | null {
  return bytes > s.policy.maxMessageBytes ? REPLIES.messageTooBig : null;
}

// ---------------------------------------------------------------- rule 8: relay verdict

/** The `Received:` protocol keyword of RFC 3848 for this session. */
export function receivedProtocol(s: Pick<SessionState, 'secure' | 'user'>): string {
  return `ESMTP${s.secure ? 'S' : ''}${s.user ? 'A' : ''}`;
}
