/**
 * Counts what a directory sends on one LDAP connection, as it arrives, so that
 * an answer can be cut off at SPEC §2.1's bounds (at most two entries and at
 * most 1 MiB per search) whatever the server does: `sizeLimit` is only a
 * request, and ldapts buffers every message whole before parsing it (a 10 MB
 * entry, or an endless stream of entries, is held in memory and re-copied).
 *
 * The meter sees the decrypted byte stream (it watches the socket ldapts reads
 * from: the TCP socket, or the TLS socket once TLS is on) and follows the
 * LDAPMessage framing (RFC 4511 §4.1.1: SEQUENCE, definite length, messageID,
 * protocolOp tag) without keeping message bodies: memory is a few bytes per
 * connection. When a bound is passed it calls `onExceeded` once with the
 * reason; the caller destroys the connection.
 *
 * Pure logic: no I/O; `watch` only adds and removes 'data' listeners.
 */
import type { Socket } from 'node:net';

export interface AnswerLimits {
  /** SearchResultEntry messages since the last reset. */
  maxEntries: number;
  /** Bytes since the last reset. */
  maxBytes: number;
}

/** SPEC §2.1: "a search reads at most two entries and at most 1 MiB of answer". */
export const ANSWER_LIMITS: AnswerLimits = { maxEntries: 2, maxBytes: 1024 * 1024 };

/** [APPLICATION 4] SearchResultEntry, constructed. */
const SEARCH_RESULT_ENTRY = 0x64;
/** Long enough for SEQUENCE + 5 length bytes + INTEGER tag, length, 4 id bytes + the op tag. */
const MAX_HEADER = 14;

export class AnswerMeter {
  private bytes = 0;
  private entries = 0;
  /** Header bytes of the message being read (until its protocolOp tag is known). */
  private header: number[] = [];
  /** Body bytes of the current message still to skip. */
  private skip = 0;
  private exceeded: string | null = null;
  private readonly listeners = new Map<Socket, (chunk: Buffer) => void>();

  constructor(
    private readonly limits: AnswerLimits,
    private readonly onExceeded: (reason: string) => void,
  ) {}

  /** Why the connection was cut off, or null. */
  get violation(): string | null {
    return this.exceeded;
  }

  /** Starts counting a new operation's answer (message framing carries over). */
  reset(): void {
    this.bytes = 0;
    this.entries = 0;
  }

  /** Counts the socket's data; call it before ldapts adds its own listener, so the meter sees each chunk first. */
  watch(socket: Socket): void {
    if (this.listeners.has(socket)) return;
    const listener = (chunk: Buffer): void => this.feed(chunk);
    this.listeners.set(socket, listener);
    socket.on('data', listener);
  }

  /** Stops counting a socket's data (a TCP socket about to carry TLS: its bytes are no longer LDAP messages). */
  unwatch(socket: Socket): void {
    const listener = this.listeners.get(socket);
    if (listener) socket.off('data', listener);
    this.listeners.delete(socket);
  }

  feed(chunk: Buffer): void {
    if (this.exceeded) return;
    this.bytes += chunk.length;
    if (this.bytes > this.limits.maxBytes) return this.exceed(`the directory sent more than ${this.limits.maxBytes} bytes for one operation`);
    let at = 0;
    while (at < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - at);
        this.skip -= n;
        at += n;
        continue;
      }
      this.header.push(chunk[at++] as number);
      const parsed = parseHeader(this.header);
      if (parsed === 'incomplete') continue;
      if (typeof parsed === 'string') return this.exceed(`malformed LDAP message from the directory: ${parsed}`);
      this.header = [];
      this.skip = parsed.remaining;
      if (parsed.op === SEARCH_RESULT_ENTRY && ++this.entries > this.limits.maxEntries) {
        return this.exceed(`the directory sent more than ${this.limits.maxEntries} entries for one search (sizeLimit is only a request)`);
      }
    }
  }

  private exceed(reason: string): void {
    this.exceeded = reason;
    for (const [socket, listener] of this.listeners) socket.off('data', listener);
    this.listeners.clear();
    this.onExceeded(reason);
  }
}

/**
 * The protocolOp tag of a message from its first bytes, and how many bytes of
 * the message follow them; 'incomplete' when more bytes are needed; a string
 * when the bytes cannot be an LDAPMessage.
 */
function parseHeader(h: number[]): { op: number; remaining: number } | 'incomplete' | string {
  if (h[0] !== 0x30) return `expected a SEQUENCE, got tag 0x${(h[0] ?? 0).toString(16)}`;
  if (h.length < 2) return 'incomplete';
  const first = h[1] as number;
  let length: number;
  let at: number;
  if (first < 0x80) {
    length = first;
    at = 2;
  } else {
    const n = first & 0x7f;
    // RFC 4511 §5.1: definite lengths only; more than 4 length bytes is never a real message.
    if (n === 0 || n > 4) return `unsupported length form 0x${first.toString(16)}`;
    if (h.length < 2 + n) return 'incomplete';
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (h[2 + i] as number);
    at = 2 + n;
  }
  if (h.length < at + 2) return 'incomplete';
  if (h[at] !== 0x02) return 'expected the messageID INTEGER';
  const idLength = h[at + 1] as number;
  if (idLength < 1 || idLength > 4) return 'bad messageID length';
  const opAt = at + 2 + idLength;
  if (h.length <= opAt) return h.length >= MAX_HEADER ? 'header too long' : 'incomplete';
  const consumed = opAt + 1 - at; // bytes of the SEQUENCE's content read so far
  if (consumed > length) return 'message shorter than its header';
  return { op: h[opAt] as number, remaining: length - consumed };
}
