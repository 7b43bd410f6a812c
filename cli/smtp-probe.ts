// A minimal SMTP client for `certgate doctor`: connects as a mail client would (plain then
// STARTTLS, or implicit TLS), reads the greeting and the EHLO keywords, records the TLS
// certificate chain the server presented and whether it verifies, then QUITs. It sends no
// mail and no credentials; with a client certificate it shows what the server answers to it.
// Never throws: every step's failure is reported in `error`, with the steps done before it.
import net from 'node:net';
import tls from 'node:tls';
import { X509Certificate } from 'node:crypto';

export interface Reply {
  code: number;
  lines: string[];
}

export interface TlsFacts {
  protocol: string | null;
  /** Leaf first, as presented by the server. */
  chain: X509Certificate[];
  /** The chain verifies against `ca` (or this machine's CA store). */
  authorized: boolean;
  /** OpenSSL's code when it does not (UNABLE_TO_VERIFY_LEAF_SIGNATURE, CERT_HAS_EXPIRED, ...). */
  authorizationError: string | null;
  /** The leaf does not name `servername` (null when it does, or none was given). */
  hostnameError: string | null;
}

export interface ProbeResult {
  greeting: Reply | null;
  /** EHLO keywords before TLS (or the only EHLO with implicit TLS), upper case. */
  ehlo: string[];
  starttls: Reply | null;
  tls: TlsFacts | null;
  /** EHLO keywords after STARTTLS. */
  ehloAfterTls: string[];
  /** The first reply after TLS when it is not a 250 to EHLO (a refused session answers 554). */
  refusal: Reply | null;
  error: string | null;
}

export interface ProbeOptions {
  host: string;
  port: number;
  implicitTls: boolean;
  /** Host name the certificate must name. */
  servername?: string;
  /** Trust anchors (PEM); default this machine's store. */
  ca?: string;
  /** Present a client certificate (PEM) and key. */
  cert?: string;
  key?: string;
  /** Do not start TLS even when offered. */
  plainOnly?: boolean;
  timeoutMs: number;
}

const HELO_NAME = 'certgate-doctor.invalid';

export async function probeSmtp(o: ProbeOptions): Promise<ProbeResult> {
  const r: ProbeResult = { greeting: null, ehlo: [], starttls: null, tls: null, ehloAfterTls: [], refusal: null, error: null };
  let conn: Conversation | null = null;
  try {
    if (o.implicitTls) {
      const socket = await tlsConnect(o, null);
      r.tls = tlsFacts(socket, o);
      conn = new Conversation(socket, o.timeoutMs);
    } else {
      conn = new Conversation(await tcpConnect(o), o.timeoutMs);
    }
    r.greeting = await conn.reply();
    if (r.greeting.code !== 220) return r;
    const ehlo = await conn.command(`EHLO ${HELO_NAME}`);
    if (ehlo.code !== 250) {
      if (o.implicitTls) r.refusal = ehlo;
      return r;
    }
    r.ehlo = keywords(ehlo);
    if (o.implicitTls || o.plainOnly || !r.ehlo.includes('STARTTLS')) return r;
    r.starttls = await conn.command('STARTTLS');
    if (r.starttls.code !== 220) return r;
    const secure = await tlsConnect(o, conn.detach());
    r.tls = tlsFacts(secure, o);
    conn = new Conversation(secure, o.timeoutMs);
    const again = await conn.command(`EHLO ${HELO_NAME}`);
    if (again.code === 250) r.ehloAfterTls = keywords(again);
    else r.refusal = again;
    return r;
  } catch (err) {
    r.error = (err as Error).message;
    return r;
  } finally {
    await conn?.quit();
  }
}

function keywords(reply: Reply): string[] {
  return reply.lines.slice(1).map((l) => l.trim().toUpperCase());
}

function tcpConnect(o: ProbeOptions): Promise<net.Socket> {
  return established(net.connect({ host: o.host, port: o.port }), 'connect', o.timeoutMs, {
    timeout: `no TCP connection to ${o.host}:${o.port} within ${o.timeoutMs} ms`,
    error: (err) => `cannot connect to ${o.host}:${o.port}: ${err.code ?? err.message}`,
  });
}

function tlsConnect(o: ProbeOptions, socket: net.Socket | null): Promise<tls.TLSSocket> {
  const s = tls.connect({
    ...(socket ? { socket } : { host: o.host, port: o.port }),
    servername: o.servername && net.isIP(o.servername) === 0 ? o.servername : undefined,
    ca: o.ca,
    cert: o.cert,
    key: o.key,
    // Verified below, in words; the probe goes on to see what else is wrong.
    rejectUnauthorized: false,
  });
  return established(s, 'secureConnect', o.timeoutMs, {
    timeout: `TLS handshake with ${o.host}:${o.port} did not finish within ${o.timeoutMs} ms`,
    error: (err) => `TLS handshake with ${o.host}:${o.port} failed: ${err.code ?? ''} ${err.message}`.replace(/\s+/g, ' '),
  });
}

/** `socket` once it emits `ready`; else an error in these words, after timeoutMs (the socket destroyed) or on its error. */
function established<S extends net.Socket>(
  socket: S,
  ready: 'connect' | 'secureConnect',
  timeoutMs: number,
  words: { timeout: string; error: (err: NodeJS.ErrnoException) => string },
): Promise<S> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(words.timeout));
    }, timeoutMs);
    socket.once(ready, () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(words.error(err)));
    });
  });
}

function tlsFacts(s: tls.TLSSocket, o: ProbeOptions): TlsFacts {
  const chain: X509Certificate[] = [];
  let c: tls.DetailedPeerCertificate | undefined = s.getPeerCertificate(true);
  const seen = new Set<string>();
  while (c && c.raw && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    chain.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
  }
  const peer = s.getPeerCertificate();
  const identity = o.servername && peer.raw ? tls.checkServerIdentity(o.servername, peer) : undefined;
  return {
    protocol: s.getProtocol(),
    chain,
    authorized: s.authorized,
    authorizationError: s.authorizationError ? String(s.authorizationError) : null,
    hostnameError: identity ? identity.message : null,
  };
}

/** Line-based reading of SMTP replies on one socket. */
class Conversation {
  private buffer = '';
  private waiting: ((line: string | Error) => void) | null = null;
  private closed: Error | null = null;
  private readonly onData = (chunk: Buffer) => {
    this.buffer += chunk.toString('latin1');
    this.wake();
  };
  private readonly onEnd = () => {
    this.closed = new Error('the server closed the connection');
    this.wake();
  };

  constructor(
    private readonly socket: net.Socket,
    private readonly timeoutMs: number,
  ) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', (err) => {
      this.closed = err;
      this.wake();
    });
  }

  private wake(): void {
    const w = this.waiting;
    if (!w) return;
    const nl = this.buffer.indexOf('\n');
    if (nl >= 0) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      this.waiting = null;
      w(line);
    } else if (this.closed) {
      this.waiting = null;
      w(this.closed);
    }
  }

  private line(): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = null;
        reject(new Error(`no answer within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting = (l) => {
        clearTimeout(timer);
        if (l instanceof Error) reject(l);
        else resolve(l);
      };
      this.wake();
    });
  }

  async reply(): Promise<Reply> {
    const lines: string[] = [];
    for (;;) {
      const l = await this.line();
      const m = /^(\d{3})([ -])(.*)$/.exec(l);
      if (!m) throw new Error(`not an SMTP reply: ${JSON.stringify(l.slice(0, 100))}`);
      lines.push(m[3] as string);
      if (m[2] === ' ') return { code: Number(m[1]), lines };
      if (lines.length > 100) throw new Error('an SMTP reply of more than 100 lines');
    }
  }

  async command(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.reply();
  }

  /** The socket, for STARTTLS (nothing may be buffered: RFC 3207 §5). */
  detach(): net.Socket {
    this.socket.removeListener('data', this.onData);
    this.socket.removeListener('end', this.onEnd);
    this.socket.removeListener('close', this.onEnd);
    return this.socket;
  }

  async quit(): Promise<void> {
    if (this.socket.destroyed) return;
    if (!this.closed) {
      this.socket.write('QUIT\r\n');
      await Promise.race([this.reply().catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
    }
    this.socket.destroy();
  }
}
