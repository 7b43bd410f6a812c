// Closing a TCP (or TLS) connection without losing what was written last.
//
// `socket.destroy()` with bytes the peer sent still unread makes the kernel answer with a
// reset, and a reset can throw away data the peer has received but not yet read: a client
// that pipelined commands may never see the 421 that explains why it was cut off. So the
// close is: write the last words, half-close (FIN after them), read and drop whatever still
// arrives, and destroy only once the peer has closed its side or a short grace has passed.

/** How long a half-closed connection waits for the peer's FIN before it is destroyed. */
export const HALF_CLOSE_GRACE_MS = 2_000;

/** The part of net.Socket / tls.TLSSocket a graceful close needs. */
export interface ClosableSocket {
  readonly destroyed: boolean;
  readonly writable: boolean;
  write(data: string): boolean;
  end(): void;
  resume(): unknown;
  destroy(): void;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end' | 'close', listener: () => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
}

/** Writes `last` (if any), half-closes, drains the peer briefly, then destroys the socket. */
export function closeGracefully(socket: ClosableSocket, last?: string, graceMs = HALF_CLOSE_GRACE_MS): void {
  if (socket.destroyed) return;
  socket.on('error', () => undefined); // a peer that resets now cannot be helped; it must not crash us
  if (socket.writable) {
    if (last !== undefined) socket.write(last);
    socket.end();
  }
  socket.on('data', () => undefined);
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), graceMs);
  timer.unref();
  socket.on('end', () => {
    clearTimeout(timer);
    socket.destroy();
  });
  socket.on('close', () => clearTimeout(timer));
}
