// The per-session limits of SPEC §2.4 and §2.5 and the refused session of §3 rules 1 and 3,
// as pure functions: given the counts a session keeps, what does it answer, and does it
// close? The worker counts and applies; nothing here does I/O.
//
// How the limits are counted (decided where SPEC is silent, as Postfix and AsyncOS do):
// - a limit is reached at its value: with maxAuthFailuresPerConnection 3, the 3rd failed
//   AUTH is answered with its own reply and then the session gets the 421 and is closed
//   (Postfix's hard error limit works the same way); `null` is no limit;
// - maxMessagesPerConnection counts accepted MAIL FROM commands (transactions begun), so
//   that MAIL/RSET loops are bounded too;
// - maxBadCommands counts the replies 500-504: unknown commands, syntax errors, commands
//   out of sequence, parameters or mechanisms not implemented. Policy refusals (530, 535,
//   550, ...) are not the client's mistakes and do not count;
// - a refused session (rules 1 and 3) answers every command but QUIT with its 554 (and
//   counts each as a bad command: nothing is in sequence there), QUIT with 221; it closes
//   after QUIT or after REFUSED_SESSION_SILENCE_MS without a command.
import type { Listener, MailFlowPolicy } from '../config/schemas.ts';
import type { Reply } from './rules.ts';

const reply = (code: number, text: string): Reply => ({ code, text });

export const LIMIT_REPLIES = {
  tooManyMessages: reply(452, '4.5.3 Too many messages in this connection'),
  tooManyConnectionsFromClient: reply(421, '4.7.0 Too many connections from your address'),
  tooManyConnections: reply(421, '4.3.2 Too many connections, try again later'),
  tooManyAuthFailures: reply(421, '4.7.0 Too many authentication failures'),
  tooManyErrors: reply(421, '4.7.0 Too many errors'),
  idleTimeout: reply(421, '4.4.2 Idle timeout'),
  bye: reply(221, '2.0.0 Bye'),
} as const;

/** RFC 5321 §3.1 / SPEC §3 rule 3: how long a refused session waits for the client's next command. */
export const REFUSED_SESSION_SILENCE_MS = 10_000;

/** `MAIL FROM` when `accepted` transactions were begun before in this session. */
export function messageLimitReply(policy: Pick<MailFlowPolicy, 'maxMessagesPerConnection'>, accepted: number): Reply | null {
  const max = policy.maxMessagesPerConnection;
  return max !== null && accepted >= max ? LIMIT_REPLIES.tooManyMessages : null;
}

/** After a failed AUTH (the `failures`-th of the session): the 421 that ends it, or null. */
export function authFailureLimitReply(policy: Pick<MailFlowPolicy, 'maxAuthFailuresPerConnection'>, failures: number): Reply | null {
  const max = policy.maxAuthFailuresPerConnection;
  return max !== null && failures >= max ? LIMIT_REPLIES.tooManyAuthFailures : null;
}

/** Whether a reply the session sent says the client's command was unknown, malformed or out of sequence. */
export function isBadCommandReply(r: Reply): boolean {
  return r.code >= 500 && r.code <= 504;
}

/** After the `count`-th bad command of the session: the 421 that ends it, or null. */
export function badCommandLimitReply(policy: Pick<MailFlowPolicy, 'maxBadCommands'>, count: number): Reply | null {
  const max = policy.maxBadCommands;
  return max !== null && count >= max ? LIMIT_REPLIES.tooManyErrors : null;
}

/** What a refused session answers to `command` (upper case), and whether it closes after it. */
export function refusedSessionReply(refusal: Reply, command: string): { reply: Reply; close: boolean } {
  return command === 'QUIT' ? { reply: LIMIT_REPLIES.bye, close: true } : { reply: refusal, close: false };
}

/** The idle timeout of a listener's sessions, in ms (§2.5 idleTimeoutSeconds). */
export function idleTimeoutMs(listener: Pick<Listener, 'idleTimeoutSeconds'>): number {
  return listener.idleTimeoutSeconds * 1000;
}

/** Connections open now, as the admission decision sees them. */
export interface OpenConnections {
  /** On this listener, in this worker process (handshakes in progress included). */
  listener: number;
  /** From this client (sender-groups clientKey) to this worker process, on any listener. */
  client: number;
}

export type Admission =
  | { admit: true }
  /** Refused: `reply` is written (unless `silent`) and the connection closed. */
  | { admit: false; reply: Reply; reason: 'max-connections' | 'max-connections-per-client'; silent: boolean };

/**
 * §2.5 maxConnections, then §2.4 maxConnectionsPerClient, for a new connection (not yet
 * counted in `open`). `beforeTls`: an implicit-TLS listener that has not shaken hands yet.
 * There maxConnections refuses without a word (a plain-text 421 would be garbage to a TLS
 * client, and a handshake is the RSA work the limit is there to save); the per-client limit
 * is decided after the handshake, so that the client can read its 421 (as Postfix does).
 */
export function admitConnection(
  listener: Pick<Listener, 'maxConnections'>,
  policy: Pick<MailFlowPolicy, 'maxConnectionsPerClient'>,
  open: OpenConnections,
  stage: 'before-tls' | 'session',
): Admission {
  if (open.listener >= listener.maxConnections) {
    return { admit: false, reply: LIMIT_REPLIES.tooManyConnections, reason: 'max-connections', silent: stage === 'before-tls' };
  }
  const perClient = policy.maxConnectionsPerClient;
  if (stage === 'session' && perClient !== null && open.client >= perClient) {
    return { admit: false, reply: LIMIT_REPLIES.tooManyConnectionsFromClient, reason: 'max-connections-per-client', silent: false };
  }
  return { admit: true };
}
