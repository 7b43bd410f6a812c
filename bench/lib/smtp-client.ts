// A minimal SMTP client for load generation: one session = a new TCP connection, the
// greeting, EHLO, STARTTLS (optionally with a client certificate), EHLO, optionally
// AUTH PLAIN, one message and QUIT. Every step checks the reply code; anything else
// throws with the step and the reply. Deliberately small so that the load generator
// spends its CPU on TLS, not on the client library.
import net from 'node:net';
import tls from 'node:tls';
import { proxyHeaderV2 } from '../../test/helpers/proxy-header.ts';

export interface Reply {
  code: number;
  text: string;
}

export interface SmtpSessionOptions {
  host: string;
  port: number;
  /** Client certificate and key (PEM) presented in the STARTTLS handshake. */
  cert?: string;
  key?: string;
  auth?: { user: string; pass: string };
  from: string;
  to: string;
  /** The message, CRLF line ends, no line starting with a dot. */
  message: Buffer;
  /** The whole session must finish within this many ms. */
  timeoutMs: number;
  /** Begin with a PROXY protocol v2 header naming this connection's own endpoints, as HAProxy `send-proxy-v2` does. */
  proxyHeader?: boolean;
}

/**
 * One TLS context per client identity, made once: building one costs ~1.1 ms of CPU with an
 * RSA-2048 key (OpenSSL parses and checks the key), ~0.2 ms without a certificate, which a
 * per-session `tls.connect({ cert, key })` paid on every session, on the load generator's core.
 */
const contexts = new Map<string, tls.SecureContext>();
/** Every session is measured as a full handshake; a shared context must never resume one. */
const RESUMED = 'TLS session resumed: the bench measures full handshakes';

function clientContext(cert: string | undefined, key: string | undefined): tls.SecureContext {
  const id = `${cert ?? ''}\0${key ?? ''}`;
  let context = contexts.get(id);
  if (!context) {
    context = tls.createSecureContext({ cert, key, minVersion: 'TLSv1.2' });
    contexts.set(id, context);
  }
  return context;
}

export class SmtpStepError extends Error {
  constructor(
    readonly step: string,
    readonly reply: Reply | null,
    detail?: string,
  ) {
    super(`${step}: ${reply ? `${reply.code} ${reply.text.split('\n')[0]}` : detail ?? 'failed'}`);
    this.name = 'SmtpStepError';
  }
}

/** Reads SMTP replies (multi-line aware) from whichever socket is attached. */
class ReplyReader {
  private buffer = '';
  private lines: string[] = [];
  private readonly queue: Reply[] = [];
  private waiter: { resolve: (r: Reply) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private socket: net.Socket | null = null;

  private readonly onData = (chunk: Buffer): void => {
    this.buffer += chunk.toString('latin1');
    for (let nl = this.buffer.indexOf('\n'); nl !== -1; nl = this.buffer.indexOf('\n')) {
      const line = this.buffer.slice(0, nl).replace(/\r$/, '');
      this.buffer = this.buffer.slice(nl + 1);
      const m = /^(\d{3})([ -])?(.*)$/.exec(line);
      if (!m) return this.fail(new Error(`malformed reply line ${JSON.stringify(line.slice(0, 80))}`));
      this.lines.push(m[3] ?? '');
      if (m[2] === '-') continue;
      const reply = { code: Number(m[1]), text: this.lines.join('\n') };
      this.lines = [];
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve(reply);
      } else {
        this.queue.push(reply);
      }
    }
  };

  private readonly onError = (err: Error): void => this.fail(err);
  private readonly onClose = (): void => this.fail(new Error('connection closed'));

  attach(socket: net.Socket): void {
    this.socket = socket;
    socket.on('data', this.onData);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  detach(): void {
    const s = this.socket;
    if (!s) return;
    s.removeListener('data', this.onData);
    s.removeListener('error', this.onError);
    s.removeListener('close', this.onClose);
    this.socket = null;
  }

  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.reject(err);
    }
  }

  read(): Promise<Reply> {
    const next = this.queue.shift();
    if (next) return Promise.resolve(next);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => (this.waiter = { resolve, reject }));
  }
}

/** Runs one complete session; resolves after the 221 to QUIT. */
export async function smtpSession(o: SmtpSessionOptions): Promise<void> {
  const reader = new ReplyReader();
  let socket: net.Socket = net.connect({ host: o.host, port: o.port });
  socket.setNoDelay(true);
  if (o.proxyHeader) {
    const s = socket;
    s.once('connect', () => s.write(proxyHeaderV2({ address: s.localAddress ?? '', port: s.localPort ?? 0 }, { address: s.remoteAddress ?? '', port: s.remotePort ?? 0 })));
  }
  // A socket error before the reader is attached would be unhandled.
  socket.on('error', () => undefined);
  reader.attach(socket);
  const timer = setTimeout(() => {
    reader.fail(new Error(`session timed out after ${o.timeoutMs} ms`));
    socket.destroy();
  }, o.timeoutMs);

  const expect = async (step: string, code: number): Promise<Reply> => {
    let r: Reply;
    try {
      r = await reader.read();
    } catch (err) {
      throw new SmtpStepError(step, null, (err as Error).message);
    }
    if (r.code !== code) throw new SmtpStepError(step, r);
    return r;
  };
  const command = (line: string, step: string, code: number): Promise<Reply> => {
    socket.write(line + '\r\n');
    return expect(step, code);
  };

  try {
    await expect('greeting', 220);
    await command('EHLO client.bench.example', 'EHLO', 250);
    await command('STARTTLS', 'STARTTLS', 220);
    reader.detach();
    const plain = socket;
    socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const t = tls.connect({
        socket: plain,
        secureContext: clientContext(o.cert, o.key),
        // The bench measures the server side; the client trusts it without a check.
        rejectUnauthorized: false,
      });
      t.once('secureConnect', () => {
        t.removeListener('error', reject);
        if (t.isSessionReused()) reject(new Error(RESUMED));
        else resolve(t);
      });
      t.once('error', reject);
    }).catch((err: Error) => {
      throw new SmtpStepError('TLS handshake', null, err.message);
    });
    socket.on('error', () => undefined);
    reader.attach(socket);
    await command('EHLO client.bench.example', 'EHLO after STARTTLS', 250);
    if (o.auth) {
      const token = Buffer.from(`\0${o.auth.user}\0${o.auth.pass}`).toString('base64');
      await command(`AUTH PLAIN ${token}`, 'AUTH', 235);
    }
    await command(`MAIL FROM:<${o.from}>`, 'MAIL', 250);
    await command(`RCPT TO:<${o.to}>`, 'RCPT', 250);
    await command('DATA', 'DATA', 354);
    socket.write(o.message);
    await command('.', 'end of DATA', 250);
    await command('QUIT', 'QUIT', 221);
  } finally {
    clearTimeout(timer);
    reader.detach();
    socket.on('error', () => undefined);
    socket.destroy();
  }
}

export interface TlsSessionOptions {
  host: string;
  port: number;
  cert?: string;
  key?: string;
  timeoutMs: number;
}

/**
 * One implicit-TLS handshake with a client certificate against a server that ends the
 * socket right after its own handshake: resolves when the server closed the connection
 * (so the server has verified the client's certificate and Finished).
 */
export function tlsHandshakeSession(o: TlsSessionOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let secured = false;
    let settled = false;
    const done = (err: Error | null): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve();
    };
    const socket = tls.connect({ host: o.host, port: o.port, secureContext: clientContext(o.cert, o.key), rejectUnauthorized: false });
    const timer = setTimeout(() => done(new Error(`handshake session timed out after ${o.timeoutMs} ms`)), o.timeoutMs);
    socket.once('secureConnect', () => {
      if (socket.isSessionReused()) return done(new Error(RESUMED));
      secured = true;
    });
    socket.on('data', () => undefined);
    socket.once('end', () => done(secured ? null : new Error('server ended the connection before the handshake completed')));
    socket.once('close', () => done(secured ? null : new Error('connection closed before the handshake completed')));
    socket.once('error', (err) => done(new Error(`TLS: ${err.message}`)));
  });
}
