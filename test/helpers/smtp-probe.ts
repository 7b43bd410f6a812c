// A probe too small to need a real client: the first line an SMTP server sends on a new
// TCP connection (whether it greets or refuses at connect), for tests that poll it.
import net from 'node:net';
import type { ServerReply } from './smtp-clients.ts';

/**
 * The first reply line a server sends on a new TCP connection (its greeting, or a refusal
 * at connect), then QUIT; null when the connection is refused or closed without a line.
 */
export async function greeting(port: number, timeoutMs = 10_000, host = '127.0.0.1'): Promise<ServerReply | null> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    let buffer = '';
    const done = (r: ServerReply | null): void => {
      clearTimeout(timer);
      socket.removeAllListeners('data');
      if (r) socket.end('QUIT\r\n');
      else socket.destroy();
      socket.on('error', () => undefined);
      resolve(r);
    };
    const timer = setTimeout(() => done(null), timeoutMs);
    socket.on('data', (d: Buffer) => {
      buffer += d.toString('latin1');
      const end = buffer.indexOf('\r\n');
      if (end >= 0) done({ code: Number(buffer.slice(0, 3)), text: buffer.slice(4, end) });
    });
    socket.on('error', () => done(null));
    socket.on('close', () => done(null));
  });
}
