// Reads the PROXY protocol header (worker/smtp/proxy-protocol.ts) off an accepted socket, for
// a listener behind a TCP load balancer (SPEC §2.5 `proxyProtocol`).
//
// What it promises:
// - Only the header is taken: the bytes after it (a TLS ClientHello, SMTP commands) are put
//   back on the socket (`unshift`) for whatever reads next; a TLSSocket wrapping the socket
//   reads them too (Node 20.20, tested).
// - Bounded: it settles within `timeoutMs` of being called, and holds at most the header's
//   bytes (the parser refuses more before it asks for them).
// - Nothing is written to the peer: whatever goes wrong, the caller closes the socket without
//   a greeting.
import type net from 'node:net';
import { ProxyHeaderReader, type ProxyHeader } from './proxy-protocol.ts';

export type ProxyFailure = 'invalid' | 'timeout' | 'closed';

export class ProxyHeaderError extends Error {
  constructor(readonly failure: ProxyFailure, message: string, readonly bytesReceived: number) {
    super(message);
  }
}

export function readProxyHeader(socket: net.Socket, timeoutMs: number): Promise<ProxyHeader> {
  return new Promise((resolve, reject) => {
    const reader = new ProxyHeaderReader();
    let received = 0;
    let settled = false;
    const finish = (err: ProxyHeaderError | null, header?: ProxyHeader) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.removeListener('readable', onReadable);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onClose);
      socket.removeListener('error', onError);
      if (err) reject(err);
      else resolve(header!);
    };
    const onReadable = () => {
      let chunk: Buffer | null;
      while (!settled && (chunk = socket.read() as Buffer | null) !== null) {
        received += chunk.length;
        const result = reader.push(chunk);
        if (result.state === 'invalid') return finish(new ProxyHeaderError('invalid', result.reason, received));
        if (result.state === 'header') {
          if (result.rest.length > 0) socket.unshift(result.rest);
          return finish(null, result.header);
        }
      }
    };
    const closed = (how: string) => () => finish(new ProxyHeaderError('closed', `the connection ${how} after ${received} bytes, before a complete PROXY header`, received));
    const onEnd = closed('ended');
    const onClose = closed('closed');
    const onError = (err: Error) => finish(new ProxyHeaderError('closed', `socket error after ${received} bytes, before a complete PROXY header: ${err.message}`, received));
    const timer = setTimeout(() => finish(new ProxyHeaderError('timeout', `no complete PROXY header within ${timeoutMs} ms (${received} bytes received)`, received)), timeoutMs);
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('close', onClose);
    socket.on('error', onError);
  });
}
