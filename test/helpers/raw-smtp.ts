// A bare SMTP connection for what no real client does on purpose: hold connections open,
// dribble one byte at a time, pipeline a flood of bad commands, stop halfway through a TLS
// handshake. It records every reply and how the connection ended (a FIN the server sent,
// or a reset that could have destroyed unread replies).
import net from 'node:net';
import tls from 'node:tls';

export interface RawReply { code: number; text: string }

export interface RawConnection {
  socket: net.Socket | tls.TLSSocket;
  /** Complete replies in order (multi-line replies joined with \n). */
  replies: RawReply[];
  /** Every byte received, as text. */
  received(): string;
  write(data: string | Buffer): void;
  /** Resolves once `n` replies have arrived (or rejects at the deadline, or when the connection ends before). */
  waitForReplies(n: number, timeoutMs?: number): Promise<RawReply[]>;
  /** Resolves when the connection is closed: `end` if the server sent a FIN, `error` with its code (ECONNRESET: a reset). */
  closed: Promise<{ end: boolean; error: string | null; at: number }>;
  /** Upgrades to TLS on the same socket (after a 220 to STARTTLS); replies go on being recorded. */
  startTls(options?: tls.ConnectionOptions): Promise<RawConnection>;
  destroy(): void;
}

export interface RawOptions {
  port: number;
  /** A loopback source address (127.0.0.x), so that per-client limits see distinct clients. */
  localAddress?: string;
  /** Implicit TLS from the first byte. */
  tls?: tls.ConnectionOptions;
}

function track(socket: net.Socket | tls.TLSSocket, previous?: { buffer: string; replies: RawReply[] }): RawConnection {
  const replies: RawReply[] = previous?.replies ?? [];
  let buffer = '';
  let all = previous?.buffer ?? '';
  let lines: string[] = [];
  let ended = false;
  const waiters = new Set<() => void>();
  const wake = () => { for (const w of waiters) w(); };
  socket.on('data', (chunk: Buffer) => {
    const s = chunk.toString('latin1');
    all += s;
    buffer += s;
    let i: number;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, i).replace(/\r$/, '');
      buffer = buffer.slice(i + 1);
      const m = /^(\d{3})([ -])(.*)$/.exec(line);
      if (!m) { lines = []; replies.push({ code: 0, text: line }); continue; }
      lines.push(m[3] ?? '');
      if (m[2] === ' ') {
        replies.push({ code: Number(m[1]), text: lines.join('\n') });
        lines = [];
      }
    }
    wake();
  });
  const closed = new Promise<{ end: boolean; error: string | null; at: number }>((resolve) => {
    let gotEnd = false;
    let error: string | null = null;
    socket.on('end', () => { gotEnd = true; });
    socket.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message; });
    socket.on('close', () => { ended = true; wake(); resolve({ end: gotEnd, error, at: Date.now() }); });
  });
  const conn: RawConnection = {
    socket,
    replies,
    received: () => all,
    write: (data) => { if (!socket.destroyed && socket.writable) socket.write(data); },
    async waitForReplies(n, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (replies.length < n) {
        if (ended) throw new Error(`connection closed after ${replies.length} of ${n} replies: ${JSON.stringify(replies)}`);
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`${replies.length} of ${n} replies after ${timeoutMs} ms: ${JSON.stringify(replies)}`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, Math.min(left, 200));
          function done() { clearTimeout(t); waiters.delete(done); resolve(); }
          waiters.add(done);
        });
      }
      return replies;
    },
    closed,
    startTls(options = {}) {
      return new Promise((resolve, reject) => {
        socket.removeAllListeners('data');
        const secure = tls.connect({ socket, rejectUnauthorized: false, ...options }, () => resolve(track(secure, { buffer: all, replies })));
        secure.once('error', reject);
      });
    },
    destroy: () => socket.destroy(),
  };
  return conn;
}

/** Opens a connection (plain, or implicit TLS) and resolves once it is established. */
export function openRaw(o: RawOptions): Promise<RawConnection> {
  return new Promise((resolve, reject) => {
    const base = { host: '127.0.0.1', port: o.port, localAddress: o.localAddress };
    const socket = o.tls
      ? tls.connect({ ...base, rejectUnauthorized: false, ...o.tls }, () => resolve(conn))
      : net.connect(base, () => resolve(conn));
    const conn = track(socket);
    socket.once('error', reject);
  });
}
