// The per-session limits of SPEC §2.4 and §2.5 and the refused session of §3 rules 1 and 3,
// as pure functions: given the counts a session keeps, what does it answer, and does it
// close? The worker counts and applies; nothing here does I/O.
//
// How the limits are counted (decided where SPEC is silent, as Postfix and AsyncOS do):
// - a limit is reached at its value: with maxAuthFailuresPerConnection 3, the 3rd failed
//   AUTH is answered with its own reply and then the session gets the 421 and is closed
//   (Postfix's hard error limit works the same way); `null` is no limit;
// - maxAuthFailuresPerConnection counts AUTH refused for the credentials (535, a custom
//   notAllowedResponse, a failed AUTH EXTERNAL) and AUTH refused by the throttle (454): a
//   throttled client cannot keep one session asking forever. Not a directory that is down;
// - maxMessagesPerConnection counts accepted MAIL FROM commands (transactions begun), so
//   that MAIL/RSET loops are bounded too;
// - maxBadCommands counts the replies 500-504: unknown commands, syntax errors, commands
//   out of sequence, parameters or mechanisms not implemented. Policy refusals (530, 535,
//   550, ...) are not the client's mistakes and do not count;
// - a refused session (rules 1 and 3) answers every command but QUIT with its 554 (and
//   counts each as a bad command: nothing is in sequence there), QUIT with 221; it closes
//   after QUIT or after REFUSED_SESSION_SILENCE_MS without a command. A STARTTLS session refused
//   after its handshake sends nothing unasked: its next command gets the 554 (an unsolicited
//   reply would shift every later reply by one, QUIT's 221 included); an implicit-TLS or rule-1
//   refusal is the greeting.
import type { Listener, MailFlowPolicy } from '../config/schemas.ts';
import { reply, type Reply } from './rules.ts';

export const LIMIT_REPLIES = {
  tooManyMessages: reply(452, '4.5.3 Too many messages in this connection'),
  tooManyConnectionsFromClient: reply(421, '4.7.0 Too many connections from your address'),
  tooManyConnections: reply(421, '4.3.2 Too many connections, try again later'),
  tooManyAuthFailures: reply(421, '4.7.0 Too many authentication failures'),
  tooManyErrors: reply(421, '4.7.0 Too many errors'),
  idleTimeout: reply(421, '4.4.2 Idle timeout'),
  unknownCommand: reply(500, '5.5.2 Error: command not recognized'),
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

/**
 * §2.5 maxConnections, for a connection just accepted, before anything else (the PROXY header,
 * an implicit TLS handshake): `open` connections of this listener in this process, handshakes
 * in progress included. `silent`: an implicit-TLS listener refuses without a word, since a
 * plain-text 421 is garbage to a TLS client and a handshake is the RSA work the limit saves.
 */
export function listenerAdmission(listener: Pick<Listener, 'maxConnections'>, open: number, implicitTls: boolean): { reply: Reply; silent: boolean } | null {
  return open >= listener.maxConnections ? { reply: LIMIT_REPLIES.tooManyConnections, silent: implicitTls } : null;
}

/**
 * §2.4 maxConnectionsPerClient, once the client's address and policy are known (after the
 * PROXY header, and after an implicit TLS handshake so that the client can read the 421, as
 * Postfix does): `open` connections from this client (clientKey) to this worker process.
 */
export function clientAdmission(policy: Pick<MailFlowPolicy, 'maxConnectionsPerClient'>, open: number): Reply | null {
  const max = policy.maxConnectionsPerClient;
  return max !== null && open >= max ? LIMIT_REPLIES.tooManyConnectionsFromClient : null;
}

/** The commands certgate serves (RFC 5321 and the extensions it offers); anything else is unknown. */
export const KNOWN_COMMANDS: ReadonlySet<string> = new Set(['EHLO', 'HELO', 'STARTTLS', 'AUTH', 'MAIL', 'RCPT', 'DATA', 'RSET', 'NOOP', 'QUIT', 'HELP', 'VRFY']);

/** An unknown command's reply (a bad command: it counts for maxBadCommands). */
export function unknownCommandReply(command: string): Reply | null {
  return KNOWN_COMMANDS.has(command) ? null : LIMIT_REPLIES.unknownCommand;
}
