/**
 * The relay leg of certgate: a small streaming SMTP client that hands one message to the
 * configured next hop (SPEC §2.5 `nextHop`, §3 rule 8).
 *
 * certgate is queueless: the client is answered only after the next hop gave its verdict, so
 * this client reports the next hop's own reply for every stage instead of a generic error,
 * never throws, and streams the message (no buffering of the whole body).
 *
 * Decisions:
 * - TLS `required`: STARTTLS must be offered and succeed; the certificate is verified against
 *   `caPem` (or the system store when null) and the host name.
 * - TLS `opportunistic`: STARTTLS is used when offered. With `caPem` the certificate is verified
 *   exactly as for `required` (an administrator who gave a CA expects it to be enforced); without
 *   it any certificate is accepted (RFC 7435 opportunistic security: protection against passive
 *   eavesdropping only). A STARTTLS refused with 4xx/5xx continues in plain text; a failed
 *   handshake is not retried in plain text (451, the client retries later).
 * - SMTPUTF8: the parameter is sent when the client used it and the next hop offers it. When the
 *   next hop lacks it and an envelope address is non-ASCII the message cannot be delivered
 *   (RFC 6531 §3.2): `550 5.6.7` before MAIL. With ASCII-only addresses the message is relayed
 *   without the parameter (its headers may carry UTF-8; we cannot inspect a streamed body).
 * - 8BITMIME: `BODY=8BITMIME` only when offered; otherwise the body is sent unchanged (no
 *   down-conversion of a streamed body).
 * - A next hop `421` (closing) is passed back as `451` with the next hop's text, so that the
 *   client does not read it as certgate closing its own session.
 * - The final reply after the dot waits `finalReplyTimeoutMs` (default 10 min, RFC 5321
 *   §4.5.3.2.6): timing out there while the next hop may still accept would risk duplicates.
 * - Connection reuse (with a LinkCache, worker/relay/pool.ts): a pooled connection starts each
 *   message with RSET (pipelined with MAIL and RCPT when offered). It is retried once on a fresh
 *   connection only when it broke before any byte of the message was written (closed, timed out,
 *   421, RSET refused): the next hop cannot have accepted the message then. A failure after the
 *   354 is the client's answer, never a retry. The outboundSmtpTls check runs on every new
 *   connection's chain and again on the kept chain at every reuse (revocation can change while a
 *   connection is pooled). A connection is kept only after a transaction that ended in a known
 *   state (accepted, or refused with 4xx/5xx other than 421) with nothing left unread.
 */
import net from 'node:net';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { finished } from 'node:stream';
import { parsePemCertificates } from '../../shared/pki/pem.ts';
import { verifiedChain } from '../../shared/pki/verify.ts';
import { boundedMemo } from '../../shared/util/bounded-memo.ts';

export interface NextHopTarget {
  host: string;
  port: number;
  tls: 'none' | 'opportunistic' | 'required';
  caPem: string | null;
  heloName: string;
  /** Per step (greeting, each command reply, a stalled write); default 30000. Connect: min(this, 10000). */
  timeoutMs?: number;
  /** Wait for the reply to the final dot; default 600000 (RFC 5321 §4.5.3.2.6). */
  finalReplyTimeoutMs?: number;
  /** Called with the server certificate chain after the TLS handshake (leaf first); returns null to go on or a reason to abort (e.g. 'revoked'). */
  checkServerCertificate?: (chain: X509Certificate[]) => Promise<string | null>;
}

/** text: the full reply text after the code (multi-line joined with '\n', enhanced code kept as the server sent it). */
export interface SmtpReply {
  code: number;
  text: string;
}

export interface RelayEnvelope {
  from: string;
  to: string[];
  smtpUtf8: boolean;
  body8bit: boolean;
  size?: number;
}

export type RelayStage = 'connect' | 'tls' | 'ehlo' | 'mail' | 'rcpt' | 'data' | 'message';

export type RelayResult =
  | { accepted: true; reply: SmtpReply }
  | { accepted: false; reply: SmtpReply; stage: RelayStage };

/** The next hop cannot be used (unreachable, timeout, TLS, protocol error): always `451 4.4.1 <reason>`. */
export class NextHopUnavailable extends Error {
  readonly reply: SmtpReply;
  constructor(reason: string) {
    super(reason);
    this.name = 'NextHopUnavailable';
    this.reply = { code: 451, text: `4.4.1 ${reason}` };
  }
}

/** The next hop answered 4xx/5xx: that reply goes back to the client. */
class NextHopRejected extends Error {
  constructor(
    readonly reply: SmtpReply,
    readonly stage: RelayStage,
    /** The next hop said 421: it closes this connection (the reply is already rewritten to 451). */
    readonly closing = false,
  ) {
    super(`${reply.code} ${reply.text}`);
    this.name = 'NextHopRejected';
  }
}

const DEFAULT_STEP_MS = 30_000;
const MAX_CONNECT_MS = 10_000;
const DEFAULT_FINAL_REPLY_MS = 600_000;
const QUIT_MS = 5_000;
/** RFC 5321 allows 512; be lenient but bounded. */
const MAX_LINE_BYTES = 4096;
const MAX_REPLY_LINES = 100;
/** Pipelined MAIL + RCPTs can queue many replies; anything beyond this is a misbehaving peer. */
const MAX_QUEUED_REPLIES = 2048;

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;

// ---------------------------------------------------------------------------------------------
// Reply parsing

/** Incremental, strict parser of SMTP replies (RFC 5321 §4.2). Throws on malformed input. */
export class ReplyParser {
  private pending: Buffer = Buffer.alloc(0);
  private current: { code: number; lines: string[] } | null = null;

  /** Non-zero while a reply (a line, or the rest of a multi-line reply) is incomplete. */
  get buffered(): number {
    return this.pending.length + (this.current ? 1 : 0);
  }

  feed(chunk: Buffer): SmtpReply[] {
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const replies: SmtpReply[] = [];
    let start = 0;
    for (let nl = data.indexOf(LF, start); nl !== -1; nl = data.indexOf(LF, start)) {
      const end = nl > start && data[nl - 1] === CR ? nl - 1 : nl;
      if (end - start > MAX_LINE_BYTES) throw new Error(`reply line longer than ${MAX_LINE_BYTES} bytes`);
      const reply = this.line(data.toString('utf8', start, end));
      if (reply) replies.push(reply);
      start = nl + 1;
    }
    if (data.length - start > MAX_LINE_BYTES) throw new Error(`reply line longer than ${MAX_LINE_BYTES} bytes`);
    // Copy: a subarray would pin the whole (possibly large) chunk in memory.
    this.pending = Buffer.from(data.subarray(start));
    return replies;
  }

  private line(line: string): SmtpReply | null {
    const m = /^([2-5][0-9][0-9])(?:([ -])(.*))?$/s.exec(line);
    if (!m) throw new Error(`malformed reply line ${JSON.stringify(line.slice(0, 80))}`);
    const code = Number(m[1]);
    const text = m[3] ?? '';
    if (this.current && this.current.code !== code) {
      throw new Error(`reply code changed from ${this.current.code} to ${code} within a multi-line reply`);
    }
    const current = this.current ?? { code, lines: [] };
    current.lines.push(text);
    if (current.lines.length > MAX_REPLY_LINES) throw new Error(`reply longer than ${MAX_REPLY_LINES} lines`);
    if (m[2] === '-') {
      this.current = current;
      return null;
    }
    this.current = null;
    return { code, text: current.lines.join('\n') };
  }
}

// ---------------------------------------------------------------------------------------------
// Dot-stuffing

const INSERT_CR = Buffer.from('\r');
const INSERT_LF = Buffer.from('\n');
const INSERT_LF_DOT = Buffer.from('\n.');
const INSERT_DOT = Buffer.from('.');

/**
 * Turns message bytes into DATA bytes, chunk by chunk: a dot at the start of a line is doubled,
 * bare LF and bare CR become CRLF (a lone CR must not reach a next hop that might read "\r.\r"
 * as the end of data: SMTP smuggling). State carries over chunk boundaries.
 */
export class DotStuffer {
  /** The start of the message counts as the start of a line. */
  private last = LF;

  push(chunk: Buffer): Buffer {
    const parts: Buffer[] = [];
    let from = 0;
    let prev = this.last;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      const insert = insertBefore(prev, b);
      if (insert) {
        parts.push(chunk.subarray(from, i), insert);
        from = i;
      }
      prev = b;
    }
    if (chunk.length) this.last = prev;
    if (!parts.length) return chunk;
    parts.push(chunk.subarray(from));
    return Buffer.concat(parts);
  }

  /** The end-of-data marker, completing the last line when the message did not end with CRLF. */
  end(): Buffer {
    if (this.last === LF) return Buffer.from('.\r\n');
    if (this.last === CR) return Buffer.from('\n.\r\n');
    return Buffer.from('\r\n.\r\n');
  }
}

function insertBefore(prev: number, b: number): Buffer | null {
  if (prev === CR && b !== LF) return b === DOT ? INSERT_LF_DOT : INSERT_LF;
  if (b === LF && prev !== CR) return INSERT_CR;
  if (b === DOT && prev === LF) return INSERT_DOT;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Connection

function describeError(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code;
  return code && !err.message.includes(code) ? `${code} ${err.message}` : err.message;
}

/**
 * One socket to the next hop (plain, then possibly TLS) with a queue of parsed replies.
 * The first failure (socket error, close, timeout, protocol error) is kept, destroys the
 * socket and is what every later wait throws, so no error event is ever unhandled.
 */
class Connection {
  private socket: net.Socket;
  private readonly parser = new ReplyParser();
  private readonly replies: SmtpReply[] = [];
  private waiter: (() => void) | null = null;
  private failure: NextHopUnavailable | null = null;
  private signalFailure: (f: NextHopUnavailable) => void = () => undefined;
  /** Resolves with the failure when the connection fails; lets a streaming writer react. */
  readonly failed: Promise<NextHopUnavailable>;
  /** Prefix of the reason given for a socket error, by phase. */
  private context: string;

  private constructor(socket: net.Socket, context: string) {
    this.failed = new Promise((resolve) => (this.signalFailure = resolve));
    this.socket = socket;
    this.context = context;
    this.listen(socket);
  }

  static async open(host: string, port: number, timeoutMs: number): Promise<Connection> {
    const conn = new Connection(net.connect({ host, port }), `cannot connect to ${host}:${port}`);
    let connected = false;
    conn.socket.once('connect', () => (connected = true));
    while (!connected && !conn.failure) {
      await conn.park(timeoutMs, `timed out connecting to ${host}:${port} after ${timeoutMs} ms`, 'connect');
    }
    if (conn.failure) throw conn.failure;
    conn.socket.setNoDelay(true);
    conn.context = 'connection to next hop failed';
    return conn;
  }

  private readonly onData = (chunk: Buffer): void => {
    try {
      this.replies.push(...this.parser.feed(chunk));
    } catch (err) {
      this.fail(`protocol error: ${(err as Error).message}`);
      return;
    }
    if (this.replies.length > MAX_QUEUED_REPLIES) this.fail('protocol error: too many unsolicited replies');
    else if (this.replies.length) this.wake();
  };

  private readonly onError = (err: Error): void => this.fail(`${this.context}: ${describeError(err)}`);
  private readonly onClose = (): void => this.fail('connection closed by next hop');

  private listen(socket: net.Socket): void {
    socket.on('data', this.onData);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  get isFailed(): boolean {
    return this.failure !== null;
  }

  /** Alive, and nothing unread: no reply (a 421 before closing) arrived since the last command. */
  get clean(): boolean {
    return this.failure === null && this.replies.length === 0 && this.parser.buffered === 0;
  }

  fail(reason: string): void {
    if (this.failure) return;
    this.failure = new NextHopUnavailable(reason);
    this.socket.destroy();
    this.signalFailure(this.failure);
    this.wake();
  }

  destroy(): void {
    this.fail('closed');
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Waits for wake() (a reply, a failure) or `event` on the socket; a timeout fails the connection. */
  private park(ms: number, timeoutReason: string, event?: string): Promise<void> {
    return new Promise((resolve) => {
      const socket = this.socket;
      const done = (): void => {
        clearTimeout(timer);
        if (event) socket.removeListener(event, done);
        if (this.waiter === done) this.waiter = null;
        resolve();
      };
      const timer = setTimeout(() => {
        this.fail(timeoutReason);
        done();
      }, ms);
      if (event) socket.once(event, done);
      this.waiter = done;
    });
  }

  async read(timeoutMs: number, what: string): Promise<SmtpReply> {
    for (;;) {
      const reply = this.replies.shift();
      if (reply) return reply;
      if (this.failure) throw this.failure;
      await this.park(timeoutMs, `no reply to ${what} from next hop within ${timeoutMs} ms`);
    }
  }

  /** Returns false when the socket buffer is full (wait for drained()). */
  write(data: string | Buffer): boolean {
    if (this.failure) return true;
    return this.socket.write(data);
  }

  /** Writes `parts` as one (writev): one system call, one TLS record where they fit. */
  writeAll(parts: Buffer[]): boolean {
    if (this.failure) return true;
    this.socket.cork();
    let ok = true;
    for (const p of parts) ok = this.socket.write(p);
    this.socket.uncork();
    return ok;
  }

  async command(line: string, timeoutMs: number): Promise<SmtpReply> {
    this.write(`${line}\r\n`);
    return this.read(timeoutMs, line.split(' ', 1)[0]!);
  }

  /** Resolves once the socket buffer drained; a next hop that stops reading for timeoutMs fails. */
  async drained(timeoutMs: number): Promise<void> {
    while (this.socket.writableNeedDrain && !this.failure) {
      await this.park(timeoutMs, `next hop stopped reading the message for ${timeoutMs} ms`, 'drain');
    }
    if (this.failure) throw this.failure;
  }

  /**
   * Upgrades the socket after a 220 to STARTTLS; returns the TLS socket once the handshake is done.
   * `options` is called here, so that a bad TLS setting (a caPem OpenSSL refuses) fails this connection.
   */
  async startTls(options: () => tls.ConnectionOptions, timeoutMs: number): Promise<tls.TLSSocket> {
    // Anything the server sent after its 220 was sent in plain text and must not be read as
    // if it came over TLS (STARTTLS command injection, CVE-2011-0411 and kin).
    if (this.replies.length || this.parser.buffered) {
      this.fail('protocol error: next hop sent data after its STARTTLS reply');
      throw this.failure;
    }
    const plain = this.socket;
    plain.removeListener('data', this.onData);
    let secure: tls.TLSSocket;
    try {
      secure = tls.connect({ ...options(), socket: plain });
    } catch (err) {
      // e.g. an unusable TLS option: the plain session must not simply go on
      this.fail(`TLS setup failed: ${(err as Error).message}`);
      throw this.failure;
    }
    this.context = 'TLS handshake with next hop failed';
    this.listen(secure);
    this.socket = secure;
    let ready = false;
    secure.once('secureConnect', () => (ready = true));
    while (!ready && !this.failure) {
      await this.park(timeoutMs, `TLS handshake with next hop timed out after ${timeoutMs} ms`, 'secureConnect');
    }
    if (this.failure) throw this.failure;
    this.context = 'connection to next hop failed';
    return secure;
  }

  /** QUIT politely, then close; never throws (runs after the verdict is known). */
  async quit(): Promise<void> {
    if (this.failure) return;
    try {
      this.write('QUIT\r\n');
      await this.read(QUIT_MS, 'QUIT');
    } catch {
      // The verdict is already known; a next hop that does not answer QUIT changes nothing.
    } finally {
      this.destroy();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The client's message stream

interface MessageState {
  settled: boolean;
  error: Error | null;
  /** Resolves when the stream ended, errored or closed early. */
  done: Promise<void>;
}

/** Watches the message from the start so that an early 'error' is recorded, never unhandled. */
function watchMessage(message: NodeJS.ReadableStream): MessageState {
  const state: MessageState = { settled: false, error: null, done: Promise.resolve() };
  state.done = new Promise((resolve) => {
    finished(message, (err) => {
      state.settled = true;
      state.error = err ?? null;
      resolve();
    });
  });
  return state;
}

function messageFailure(err: Error): NextHopUnavailable {
  return new NextHopUnavailable(`message from the client was not received in full: ${describeError(err)}`);
}

/**
 * Streams the message through the stuffer to the next hop, pausing the client's stream while
 * the socket buffer is full. Resolves at the end of the message with what it still holds;
 * rejects when either side fails.
 *
 * The latest chunk (and the header prefix before it) is held until the next chunk or the end
 * arrives, so that a small message goes out as one write with its end marker: one system call
 * instead of three. The next hop lags by at most one chunk of the client's transfer.
 */
function pumpMessage(conn: Connection, stuffer: DotStuffer, message: NodeJS.ReadableStream, state: MessageState, stepMs: number, prefix: Buffer): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let waitingDrain = false;
    /** Not yet written: the prefix until the first chunk is written, then the latest chunk. */
    let held: Buffer[] = [prefix];
    let holdsChunk = false;
    const finish = (err?: Error): void => {
      if (settled) return;
      settled = true;
      message.removeListener('data', onData);
      if (err) reject(err);
      else resolve(held);
    };
    const onData = (chunk: Buffer | string): void => {
      const out = stuffer.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      if (!holdsChunk) {
        held.push(out);
        holdsChunk = true;
        return;
      }
      const ready = held;
      held = [out];
      if (conn.writeAll(ready) || waitingDrain) return;
      waitingDrain = true;
      message.pause();
      conn.drained(stepMs).then(() => {
        waitingDrain = false;
        if (!settled) message.resume();
      }, finish);
    };
    message.on('data', onData);
    void state.done.then(() => finish(state.error ? messageFailure(state.error) : undefined));
    void conn.failed.then(finish);
    message.resume();
  });
}

// ---------------------------------------------------------------------------------------------
// The relay session

interface Capabilities {
  startTls: boolean;
  smtpUtf8: boolean;
  eightBitMime: boolean;
  pipelining: boolean;
  /** Advertised SIZE limit; 0 = advertised without a limit; null = not advertised. */
  size: number | null;
}

const NO_CAPABILITIES: Capabilities = { startTls: false, smtpUtf8: false, eightBitMime: false, pipelining: false, size: null };

function parseCapabilities(ehlo: SmtpReply): Capabilities {
  const caps: Capabilities = { ...NO_CAPABILITIES };
  for (const line of ehlo.text.split('\n').slice(1)) {
    const [keyword = '', param] = line.trim().split(/\s+/);
    switch (keyword.toUpperCase()) {
      case 'STARTTLS': caps.startTls = true; break;
      case 'SMTPUTF8': caps.smtpUtf8 = true; break;
      case '8BITMIME': caps.eightBitMime = true; break;
      case 'PIPELINING': caps.pipelining = true; break;
      case 'SIZE': caps.size = param && /^\d+$/.test(param) ? Number(param) : 0; break;
    }
  }
  return caps;
}

const isPositive = (code: number): boolean => code >= 200 && code < 300;
const firstLine = (text: string): string => text.split('\n', 1)[0]!;

/** Throws unless `ok(reply.code)`: 4xx/5xx go back to the client as sent, anything else is a protocol error. */
function expectReply(reply: SmtpReply, ok: (code: number) => boolean, stage: RelayStage, what: string): void {
  if (ok(reply.code)) return;
  // 421 means the next hop closes; the client must not read it as certgate closing.
  if (reply.code === 421) throw new NextHopRejected({ code: 451, text: reply.text }, stage, true);
  if (reply.code >= 400) throw new NextHopRejected(reply, stage);
  throw new NextHopUnavailable(`unexpected reply to ${what} from next hop: ${reply.code} ${firstLine(reply.text)}`);
}

const UNSAFE_IN_COMMAND = /[\r\n\0]/;
/** Any UTF-16 unit above ASCII (surrogates included). */
const NON_ASCII = /[\u0080-\uffff]/;

/** Checks that need no connection: a bad envelope must not reach the next hop at all. */
function preflight(target: NextHopTarget, envelope: RelayEnvelope): NextHopRejected | null {
  if (!target.heloName || /[\s\0]/.test(target.heloName)) return new NextHopRejected({ code: 451, text: '4.3.5 invalid HELO name configured for the next hop' }, 'connect');
  if (UNSAFE_IN_COMMAND.test(envelope.from)) return new NextHopRejected({ code: 553, text: '5.1.7 invalid sender address' }, 'mail');
  if (envelope.to.length === 0) return new NextHopRejected({ code: 554, text: '5.5.1 no valid recipients' }, 'rcpt');
  if (envelope.to.some((r) => UNSAFE_IN_COMMAND.test(r))) return new NextHopRejected({ code: 553, text: '5.1.3 invalid recipient address' }, 'rcpt');
  return null;
}

/**
 * An open connection to a next hop after greeting, EHLO and (when used) STARTTLS: what a mail
 * transaction needs, and what a pool keeps between messages.
 */
export class Link {
  /** Mail transactions begun on this connection. */
  transactions = 0;
  readonly openedAt = Date.now();

  constructor(
    readonly conn: Connection,
    readonly caps: Capabilities,
    /** The next hop's certificate chain (leaf first) when the connection is TLS; checked again at every reuse. */
    readonly chain: X509Certificate[] | null,
  ) {}

  /** Alive and between transactions with nothing unread. */
  get reusable(): boolean {
    return this.conn.clean;
  }

  /** QUIT politely, then close; never throws. */
  quit(): void {
    void this.conn.quit();
  }
}

/**
 * Keeps links between messages (worker/relay/pool.ts). `take` gives a link only to a target with
 * the same key (same host, port, TLS mode, CA and HELO name); `give` keeps or closes it.
 */
export interface LinkCache {
  take(key: string): Link | null;
  give(key: string, link: Link): void;
}

/** What makes two targets share connections: everything that shaped the connection's setup. */
export function linkKey(t: NextHopTarget): string {
  return `${t.tls} ${t.host} ${t.port} ${t.heloName}\n${t.caPem ?? ''}`;
}

interface Outcome {
  result: RelayResult;
  /** The pooled connection broke before the next hop could have accepted this message: try a fresh one. */
  retry: boolean;
  /** The connection is set up and its transaction ended in a known state: it may carry another message. */
  keep: boolean;
}

/**
 * One attempt at relaying one message over one connection: a fresh one (connect, greeting,
 * EHLO, TLS) or a pooled one (RSET first). Afterwards the connection goes back to the cache
 * when the transaction ended in a known state, else it is closed.
 */
class Attempt {
  private stage: RelayStage = 'connect';
  private link: Link | null;
  /** Between the 354 and the final dot: closing now must not look like an end of data. */
  private inData = false;
  /** The first byte of the message was written: from here on the next hop may take it, never retry. */
  private messageStarted = false;
  /** The pooled connection answered RSET with anything but 250: its state is unknown. */
  private staleReset = false;
  /** Set up (greeting, EHLO, TLS done): a failure before this leaves a connection no one may reuse. */
  private ready: boolean;
  private readonly stepMs: number;

  constructor(
    private readonly target: NextHopTarget,
    private readonly envelope: RelayEnvelope,
    private readonly pooled: Link | null,
  ) {
    this.link = pooled;
    this.ready = pooled !== null;
    this.stepMs = target.timeoutMs ?? DEFAULT_STEP_MS;
  }

  async run(prefix: Buffer, message: NodeJS.ReadableStream, state: MessageState): Promise<Outcome> {
    let lastError: unknown = null;
    let result: RelayResult;
    try {
      result = await this.transaction(prefix, message, state);
    } catch (err) {
      lastError = err;
      result = this.failureResult(err);
    }
    const link = this.link;
    const broken = link !== null && (link.conn.isFailed || this.staleReset || (lastError instanceof NextHopRejected && lastError.closing));
    /** The next hop's own answer to this message: passed back, never retried. */
    const verdict = lastError instanceof NextHopRejected && !lastError.closing;
    // Only failures before any byte of the message was written: the next hop cannot have taken it.
    const retry = this.pooled !== null && !this.messageStarted && broken && !verdict;
    const known = result.accepted || verdict;
    return { result, retry, keep: this.ready && known && !this.inData && !broken };
  }

  private async transaction(prefix: Buffer, message: NodeJS.ReadableStream, state: MessageState): Promise<RelayResult> {
    const link = this.link ?? (this.link = await this.open());
    this.ready = true;
    link.transactions++;
    this.stage = 'mail';
    // The client's transfer already failed: do not start a DATA that could only be aborted.
    const clientFailed = (): boolean => state.settled && state.error !== null;
    const withData = link.caps.pipelining && this.envelope.to.length === 1 && !clientFailed();
    const pipelinedData = await this.sendEnvelope(link, this.pooled !== null, withData);
    this.stage = 'data';
    if (!pipelinedData && clientFailed()) throw messageFailure(state.error!);
    const dataReply = pipelinedData ?? (await link.conn.command('DATA', this.stepMs));
    if (dataReply.code === 354 && clientFailed()) {
      // Inside the transfer now: only dropping the connection keeps the next hop from taking
      // a message (and it must not look like a broken pooled connection worth a retry).
      this.messageStarted = true;
      link.conn.destroy();
      throw messageFailure(state.error!);
    }
    expectReply(dataReply, (c) => c === 354, 'data', 'DATA');
    this.stage = 'message';
    await this.transmit(link.conn, prefix, message, state);
    const final = await link.conn.read(this.target.finalReplyTimeoutMs ?? DEFAULT_FINAL_REPLY_MS, 'end of DATA');
    expectReply(final, isPositive, 'message', 'end of DATA');
    return { accepted: true, reply: final };
  }

  /** Connect, greeting, EHLO and, unless `tls: none`, STARTTLS with the certificate checks. */
  private async open(): Promise<Link> {
    const { host, port } = this.target;
    const conn = await Connection.open(host, port, Math.min(this.stepMs, MAX_CONNECT_MS));
    // Kept before the first await that can throw, so that close() also ends a failed setup.
    this.link = new Link(conn, NO_CAPABILITIES, null);
    expectReply(await conn.read(this.stepMs, 'greeting'), isPositive, 'connect', 'greeting');
    const caps = await this.hello(conn);
    if (this.target.tls === 'none') return new Link(conn, caps, null);
    return this.secure(conn, caps);
  }

  /** EHLO, falling back to HELO (no extensions) when EHLO is refused with 5xx. */
  private async hello(conn: Connection): Promise<Capabilities> {
    this.stage = 'ehlo';
    const ehlo = await conn.command(`EHLO ${this.target.heloName}`, this.stepMs);
    if (isPositive(ehlo.code)) return parseCapabilities(ehlo);
    if (ehlo.code < 500) expectReply(ehlo, isPositive, 'ehlo', 'EHLO');
    expectReply(await conn.command(`HELO ${this.target.heloName}`, this.stepMs), isPositive, 'ehlo', 'HELO');
    return { ...NO_CAPABILITIES };
  }

  private async secure(conn: Connection, caps: Capabilities): Promise<Link> {
    const required = this.target.tls === 'required';
    this.stage = 'tls';
    if (!caps.startTls) {
      if (required) throw new NextHopUnavailable('next hop does not offer STARTTLS');
      return new Link(conn, caps, null);
    }
    const reply = await conn.command('STARTTLS', this.stepMs);
    if (reply.code !== 220) {
      if (required) throw new NextHopUnavailable(`next hop refused STARTTLS: ${reply.code} ${firstLine(reply.text)}`);
      return new Link(conn, caps, null);
    }
    const socket = await conn.startTls(() => this.tlsOptions(), this.stepMs);
    const chain = peerChain(socket, this.target.caPem);
    await checkCertificate(this.target, chain);
    // RFC 3207 §4.2: everything learnt before TLS is discarded.
    return new Link(conn, await this.hello(conn), chain);
  }

  private tlsOptions(): tls.ConnectionOptions {
    const { host, caPem } = this.target;
    const verify = this.target.tls === 'required' || caPem !== null;
    return {
      // SNI must be a host name, never an IP address.
      servername: net.isIP(host) ? undefined : host,
      secureContext: clientContextOf(caPem ?? ''),
      rejectUnauthorized: verify,
      checkServerIdentity: verify ? (_name, cert) => tls.checkServerIdentity(host, cert) : () => undefined,
    };
  }

  private mailParams(caps: Capabilities): string {
    const { smtpUtf8, body8bit, size } = this.envelope;
    const params: string[] = [];
    if (size !== undefined && caps.size !== null) params.push(`SIZE=${size}`);
    if (body8bit && caps.eightBitMime) params.push('BODY=8BITMIME');
    if (smtpUtf8 && caps.smtpUtf8) params.push('SMTPUTF8');
    return params.length ? ` ${params.join(' ')}` : '';
  }

  /** Refusals the next hop would give anyway, decided from its EHLO before sending anything. */
  private checkAgainst(caps: Capabilities): void {
    const { from, to, size } = this.envelope;
    if (!caps.smtpUtf8 && [from, ...to].some((a) => NON_ASCII.test(a))) {
      throw new NextHopRejected({ code: 550, text: '5.6.7 next hop does not support SMTPUTF8, non-ASCII address cannot be relayed' }, 'mail');
    }
    if (size !== undefined && caps.size && size > caps.size) {
      throw new NextHopRejected({ code: 552, text: `5.3.4 message size exceeds the next hop limit of ${caps.size} bytes` }, 'mail');
    }
  }

  /**
   * [RSET on a pooled connection,] MAIL and every RCPT, pipelined when offered; any refusal aborts
   * the whole message. After a refusal the replies still due are read, so the connection stays
   * reusable (a failure while reading them only means it is not kept).
   *
   * With `withData` DATA joins the pipelined group (RFC 2920) and its reply is returned. Only for
   * one recipient: refused, it leaves no valid recipient and the next hop refuses the DATA too;
   * with several, a 354 after a partial refusal could only be undone by dropping the connection.
   */
  private async sendEnvelope(link: Link, reset: boolean, withData: boolean): Promise<SmtpReply | null> {
    const { conn, caps } = link;
    this.checkAgainst(caps);
    const lines = [`MAIL FROM:<${this.envelope.from}>${this.mailParams(caps)}`, ...this.envelope.to.map((r) => `RCPT TO:<${r}>`)];
    if (reset) lines.unshift('RSET');
    if (withData) lines.push('DATA');
    if (caps.pipelining) conn.write(lines.map((l) => `${l}\r\n`).join(''));
    const judged = withData ? lines.length - 1 : lines.length;
    for (let i = 0; i < judged; i++) {
      const line = lines[i]!;
      const reply = caps.pipelining ? await conn.read(this.stepMs, verb(line)) : await conn.command(line, this.stepMs);
      try {
        this.judgeEnvelopeReply(reply, reset ? i - 1 : i);
      } catch (err) {
        if (caps.pipelining) await drainReplies(conn, lines.length - i - 1);
        throw err;
      }
    }
    return withData ? conn.read(this.stepMs, 'DATA') : null;
  }

  /** `index`: -1 for RSET, 0 for MAIL, then the RCPTs. */
  private judgeEnvelopeReply(reply: SmtpReply, index: number): void {
    if (index === -1) {
      if (isPositive(reply.code)) return;
      this.staleReset = true;
      throw new NextHopUnavailable(`next hop refused RSET on a reused connection: ${reply.code} ${firstLine(reply.text)}`);
    }
    if (index > 0) this.stage = 'rcpt';
    expectReply(reply, isPositive, index === 0 ? 'mail' : 'rcpt', index === 0 ? 'MAIL' : 'RCPT');
  }

  private async transmit(conn: Connection, prefix: Buffer, message: NodeJS.ReadableStream, state: MessageState): Promise<void> {
    this.inData = true;
    this.messageStarted = true;
    const stuffer = new DotStuffer();
    const rest = await pumpMessage(conn, stuffer, message, state, this.stepMs, stuffer.push(prefix));
    conn.writeAll([...rest, stuffer.end()]);
    this.inData = false;
  }

  private failureResult(err: unknown): RelayResult {
    if (err instanceof NextHopRejected) return { accepted: false, reply: err.reply, stage: err.stage };
    if (err instanceof NextHopUnavailable) return { accepted: false, reply: err.reply, stage: this.stage };
    return { accepted: false, reply: new NextHopUnavailable(`internal error: ${String(err)}`).reply, stage: this.stage };
  }

  /** Gives the connection back when `keep`; mid-DATA only a dropped connection keeps the next hop from taking a partial message. */
  finish(keep: boolean, cache: LinkCache | undefined, key: string): void {
    const link = this.link;
    if (!link) return;
    if (keep && cache) cache.give(key, link);
    else if (this.inData) link.conn.destroy();
    else link.quit();
  }
}

const verb = (line: string): string => line.split(/[ :]/, 1)[0]!;

/**
 * Reads `count` pipelined replies after a refusal; never throws (a failed connection is simply
 * not kept). A 354 among them (a next hop that took DATA anyway) leaves the connection inside a
 * mail transfer: it is dropped, so that nothing, not even a QUIT, is read as message text.
 */
async function drainReplies(conn: Connection, count: number): Promise<void> {
  try {
    for (let i = 0; i < count && !conn.isFailed; i++) {
      if ((await conn.read(QUIT_MS, 'pipelined command')).code === 354) conn.destroy();
    }
  } catch {
    // The refusal is the answer; the connection is closed instead of kept.
  }
}

/** The outboundSmtpTls check (revocation) of the next hop's chain: on a new connection and at every reuse. */
async function checkCertificate(target: NextHopTarget, chain: X509Certificate[]): Promise<void> {
  const check = target.checkServerCertificate;
  if (!check) return;
  let reason: string | null;
  try {
    reason = await check(chain);
  } catch (err) {
    reason = `check failed: ${(err as Error).message}`;
  }
  if (reason !== null) throw new NextHopUnavailable(`next hop certificate ${reason}`);
}

/**
 * The TLS context of a STARTTLS to a next hop, by its caPem ('' for the system's roots): made
 * once, not for every new connection (0.3-0.8 ms of CPU each, measured on Node 20).
 */
const clientContextOf = boundedMemo(64, (caPem: string): tls.SecureContext => tls.createSecureContext(caPem === '' ? {} : { ca: caPem }));

/** Trust anchors of a next hop by its caPem, '' for the system store (parsed once). */
const anchorsOf = boundedMemo(64, (caPem: string): X509Certificate[] =>
  caPem ? parsePemCertificates(caPem) : tls.rootCertificates.map((pem) => new X509Certificate(pem)));

/** The next hop's chain, leaf first, up to its anchor (for the outboundSmtpTls revocation check). */
function peerChain(socket: tls.TLSSocket, caPem: string | null): X509Certificate[] {
  const leaf = socket.getPeerX509Certificate();
  return leaf ? verifiedChain(leaf, anchorsOf(caPem ?? '')) : [];
}

/** A pooled link that may carry this message: alive, and its certificate still passes the check. */
async function takeLink(cache: LinkCache, key: string, target: NextHopTarget): Promise<Link | null> {
  const link = cache.take(key);
  if (!link?.chain) return link;
  try {
    await checkCertificate(target, link.chain);
    return link;
  } catch {
    // e.g. the certificate was revoked since the connection was made: a fresh connection
    // runs the check again and gives the client the reason.
    link.quit();
    return null;
  }
}

/**
 * Relays one message to the next hop. Never throws: every failure is a RelayResult with the
 * next hop's 4xx/5xx or `451 4.4.1 <reason>`. Resolves only after `message` has been read to
 * its end (or failed), so the caller can answer the client right away.
 *
 * With a `cache`, a pooled connection is used first (RSET, then the transaction). When it turns
 * out broken (closed, timed out, 421, RSET refused) before the first byte of the message was
 * written, the message is tried once more on a fresh connection: the next hop cannot have
 * accepted it yet, so nothing is delivered twice. Once the message is under way, a failure is
 * the client's answer (451), never a retry.
 */
export async function relayMessage(
  target: NextHopTarget,
  envelope: RelayEnvelope,
  prefix: Buffer,
  message: NodeJS.ReadableStream,
  cache?: LinkCache,
): Promise<RelayResult> {
  const state = watchMessage(message);
  const result = await relay(target, envelope, prefix, message, state, cache);
  // Whatever happened, read the client's message to its end: it waits for our reply only
  // after its own DATA transfer completed. Without 'data' listeners, resume() discards.
  message.resume();
  await state.done;
  return result;
}

async function relay(
  target: NextHopTarget,
  envelope: RelayEnvelope,
  prefix: Buffer,
  message: NodeJS.ReadableStream,
  state: MessageState,
  cache: LinkCache | undefined,
): Promise<RelayResult> {
  const early = preflight(target, envelope);
  if (early) return { accepted: false, reply: early.reply, stage: early.stage };
  const key = cache ? linkKey(target) : '';
  const pooled = cache ? await takeLink(cache, key, target) : null;
  if (pooled) {
    const attempt = new Attempt(target, envelope, pooled);
    const outcome = await attempt.run(prefix, message, state);
    attempt.finish(outcome.keep, cache, key);
    if (!outcome.retry) return outcome.result;
  }
  const attempt = new Attempt(target, envelope, null);
  const outcome = await attempt.run(prefix, message, state);
  attempt.finish(outcome.keep, cache, key);
  return outcome.result;
}
