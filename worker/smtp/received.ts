// The trace header a relayed message gains (SPEC §3 rule 8, RFC 5321 §4.4, RFC 3848).

export interface ReceivedFacts {
  helo: string;
  clientHostname: string | null;
  clientAddress: string;
  hostname: string;
  protocol: string;
  id: string;
  user: { id: string; method: string } | null;
  date: Date;
}

/** Keeps client-chosen names from breaking out of their header comment. */
function clean(s: string): string {
  return s.replace(/[^A-Za-z0-9.:\-_[\]]/g, '?').slice(0, 255);
}

/**
 * A user id inside the `(authenticated as ...)` comment: RFC 5322 atext, `.` and `@`
 * (`asmith@samdom.example.com` stays whole); anything else, parentheses, backslash,
 * spaces, `;`, control and non-ASCII characters included, becomes `?`.
 */
function cleanUser(s: string): string {
  return s.replace(/[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.@]/g, '?').slice(0, 255);
}

/** RFC 5322 date-time, e.g. `Fri, 27 Nov 2026 18:30:00 +0000`. */
export function rfc5322Date(d: Date): string {
  // toUTCString gives "Fri, 27 Nov 2026 18:30:00 GMT"; RFC 5322 prefers the numeric zone.
  return d.toUTCString().replace(/GMT$/, '+0000');
}

/**
 * One unfolded line (about 200 characters, far below RFC 5322's 998), in the form SPEC §3
 * rule 8 shows, so that tools matching it on the raw message need not unfold it.
 */
export function receivedHeader(f: ReceivedFacts): string {
  const address = f.clientAddress.includes(':') ? `IPv6:${f.clientAddress}` : f.clientAddress;
  // smtp-server gives "[address]" when there is no reverse name (lookups are off: no DNS delay per session).
  const reverse = f.clientHostname && !f.clientHostname.startsWith('[') ? clean(f.clientHostname) : 'unknown';
  const from = `from ${clean(f.helo) || 'unknown'} (${reverse} [${clean(address)}])`;
  const auth = f.user ? ` (authenticated as ${cleanUser(f.user.id)} by ${f.user.method})` : '';
  return `Received: ${from} by ${clean(f.hostname)} (certgate) with ${f.protocol} id ${f.id}${auth}; ${rfc5322Date(f.date)}\r\n`;
}
