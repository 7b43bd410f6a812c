// The worker's log line for a session decision that is not a success: at `info`, one line
// per refused command (and per certificate that did not authenticate a session that goes
// on), saying why in the event's own words: the reason, the user or the certificate subject,
// and what the directory or the revocation check said. Successes stay at `debug` (every
// event is there): a busy gateway's `info` log is then the list of what went wrong.
// Pure: the gateway hands the line to pino.
import type { NewSessionEvent } from '../shared/config/schemas.ts';

export interface SessionLogLine {
  msg: string;
  fields: Record<string, unknown>;
}

/**
 * Reasons of a STARTTLS event that goes on without the certificate having authenticated
 * the session although it was asked for one (a certificate auth profile without
 * verifyClientCertificate): the client meets `530 Authentication required` at MAIL later.
 */
const CERTIFICATE_DID_NOT_AUTHENTICATE = new Set(['not-in-directory', 'ambiguous-directory-match', 'certificate-field-missing', 'directory-unavailable']);

export function sessionLogLine(e: NewSessionEvent): SessionLogLine | null {
  const fields = {
    listener: e.listener,
    sessionId: e.sessionId,
    client: e.clientAddress,
    command: e.command,
    reason: e.reason,
    reply: e.reply,
    user: e.user,
    certificate: e.certificate?.subject ?? null,
    detail: e.detail,
  };
  const who = e.user ?? e.certificate?.subject ?? e.clientAddress;
  const said = e.detail ? ` (${e.detail})` : '';
  if (e.outcome === 'rejected' && e.command === 'STARTTLS' && e.reply === null) {
    // Without verifyClientCertificate a bad certificate does not end the session.
    return { msg: `certificate of ${who} not accepted: ${e.reason}${said}; the session goes on without it`, fields };
  }
  if (e.outcome === 'rejected') {
    return { msg: `${e.command ?? 'session'} refused for ${who}: ${e.reason}${said}${e.reply ? ` → ${e.reply}` : ''}`, fields };
  }
  if (e.outcome === 'accepted' && e.command === 'STARTTLS' && CERTIFICATE_DID_NOT_AUTHENTICATE.has(e.reason)) {
    return { msg: `certificate did not authenticate the session of ${who}: ${e.reason}${said}`, fields };
  }
  if (e.outcome === 'allowed-not-permitted' && e.command === 'AUTH') {
    return { msg: `${who} authenticated but not permitted (allow-and-log): ${e.reason}`, fields };
  }
  return null;
}
