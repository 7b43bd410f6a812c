import net from 'node:net';

/** Workers started by test/helpers/system.ts add multiples of this to every listener port. */
export const WORKER_PORT_STEP = 1000;

/**
 * A free TCP port on 127.0.0.1 whose worker siblings (port + 1000, + 2000, + 3000) are free too,
 * picked below the kernel's ephemeral range (32768 and up) so that no outgoing connection of a
 * test can be given it between this check and the test's bind.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * (32_768 - 10_000 - 3 * WORKER_PORT_STEP));
    const siblings = [0, 1, 2, 3].map((i) => port + i * WORKER_PORT_STEP);
    if ((await Promise.all(siblings.map(bindable))).every(Boolean)) return port;
  }
  throw new Error('no free loopback port found in 200 attempts');
}

function bindable(port: number): Promise<boolean> {
  const srv = net.createServer();
  srv.unref();
  return listening(srv, () => srv.listen(port, '127.0.0.1')).then(
    () => new Promise<boolean>((resolve) => srv.close(() => resolve(true))),
    () => false,
  );
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port, or rejects after timeoutMs. */
export async function waitForPort(port: number, timeoutMs = 10_000, host = '127.0.0.1'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host }, () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (up) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Starts `server` on a free loopback port (or as `start` says) and resolves with the port it got. */
export async function listening(server: net.Server, start: () => void = () => server.listen(0, '127.0.0.1')): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('listening', () => resolve());
    server.once('error', reject);
    start();
  });
  const addr = server.address();
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return addr.port;
}
