// A CRL distribution point for tests: an HTTP server on a free loopback port whose files
// (and their status, and a delay) tests set at will, counting the requests per path.
import http from 'node:http';
import type { MinimalLogger } from '../../shared/util/logger.ts';
import { listening } from './ports.ts';

export interface ServedFile {
  body: Buffer;
  status?: number;
  /** Delay before the answer, in ms. */
  delayMs?: number;
}

export interface CrlServer {
  url(path: string): string;
  serve(path: string, body: Buffer, opts?: Omit<ServedFile, 'body'>): void;
  /** Requests for the path so far. */
  hits(path: string): number;
  close(): Promise<void>;
}

export async function startCrlServer(): Promise<CrlServer> {
  const files = new Map<string, ServedFile>();
  const hits = new Map<string, number>();
  const server = http.createServer((req, res) => {
    const path = req.url ?? '/';
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const file = files.get(path);
    const answer = (): void => {
      if (res.destroyed) return;
      if (!file) {
        res.writeHead(404).end('not found');
        return;
      }
      res.writeHead(file.status ?? 200, { 'content-type': 'application/pkix-crl', 'content-length': file.body.length }).end(file.body);
    };
    if (file?.delayMs) setTimeout(answer, file.delayMs);
    else answer();
  });
  const port = await listening(server);
  return {
    url: (path) => `http://127.0.0.1:${port}${path}`,
    serve: (path, body, opts = {}) => files.set(path, { body, ...opts }),
    hits: (path) => hits.get(path) ?? 0,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A logger for the CRL components under test: silent unless CRL_TEST_LOG is set. */
export function testLogger(): MinimalLogger {
  const log = (level: string) => (obj: object, msg?: string) => {
    if (process.env.CRL_TEST_LOG) process.stderr.write(`[${level}] ${msg ?? ''} ${JSON.stringify(obj)}\n`);
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}
