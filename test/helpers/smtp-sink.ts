import { SMTPServer } from 'smtp-server';
import type { SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { listening } from './ports.ts';

/**
 * A real SMTP next hop for tests: accepts everything (or answers a configured reply),
 * keeps every accepted message in memory.
 */

export interface SinkReply {
  code: number;
  message: string;
  /** Which command gets the reply; default `data` (the verdict at the end of DATA, as a next hop gives it). */
  at?: 'mail' | 'rcpt' | 'data';
}

export interface SinkMessage {
  from: string;
  to: string[];
  raw: Buffer;
  receivedAt: Date;
  /** The session was TLS (STARTTLS) when the message arrived. */
  secure: boolean;
}

export interface Sink {
  host: '127.0.0.1';
  port: number;
  messages: SinkMessage[];
  /** From now on, answer `r` instead of accepting (null: accept again). */
  setReply(r: SinkReply | null): void;
  /** Resolves once `messages.length >= count`; rejects after timeoutMs (default 10 s). */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export interface SinkOptions {
  /** PEM key and certificate: STARTTLS is offered (no implicit TLS). Without it STARTTLS is not offered. */
  tls?: { key: string; cert: string };
  /** Reply to answer from the start (same as calling setReply right away). */
  rejectWith?: SinkReply | null;
  /** Listen on this port instead of a free one. */
  port?: number;
  /** Called for every accepted message (after it is stored). */
  onMessage?: (m: SinkMessage) => void;
}

function replyError(r: SinkReply): Error & { responseCode: number } {
  const err = new Error(r.message) as Error & { responseCode: number };
  err.responseCode = r.code;
  return err;
}

export async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  let reply: SinkReply | null = opts.rejectWith ?? null;
  const messages: SinkMessage[] = [];
  const waiters = new Set<() => void>();

  const replyFor = (stage: 'mail' | 'rcpt' | 'data'): Error | null =>
    reply !== null && (reply.at ?? 'data') === stage ? replyError(reply) : null;

  const server = new SMTPServer({
    secure: false,
    ...(opts.tls ? { key: opts.tls.key, cert: opts.tls.cert } : { hideSTARTTLS: true }),
    disabledCommands: ['AUTH'],
    authOptional: true,
    logger: false,
    banner: 'certgate test sink',
    closeTimeout: 1000,
    onMailFrom(_address, _session, cb) {
      cb(replyFor('mail'));
    },
    onRcptTo(_address, _session, cb) {
      cb(replyFor('rcpt'));
    },
    onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('error', (e: Error) => cb(e));
      stream.on('end', () => {
        const err = replyFor('data');
        if (err) return cb(err);
        const mailFrom = session.envelope.mailFrom;
        const m: SinkMessage = {
          from: mailFrom ? mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks),
          receivedAt: new Date(),
          secure: session.secure,
        };
        messages.push(m);
        for (const w of [...waiters]) w();
        try {
          opts.onMessage?.(m);
        } catch {
          // a failing observer must not fail the SMTP transaction
        }
        cb(null, 'OK: queued by sink');
      });
    },
  });
  // Without an error listener a client dropping during the TLS handshake crashes the process.
  server.on('error', () => undefined);

  const port = await listening(server.server, () => server.listen(opts.port ?? 0, '127.0.0.1'));

  return {
    host: '127.0.0.1',
    port,
    messages,
    setReply(r) {
      reply = r;
    },
    waitFor(count, timeoutMs = 10_000) {
      if (messages.length >= count) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (messages.length >= count) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`sink: ${messages.length} of ${count} messages after ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(check);
      });
    },
    stop() {
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
