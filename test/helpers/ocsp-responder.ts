/**
 * A real OCSP responder for tests: `openssl ocsp -index ... -port ... -rsigner
 * ... -rkey ... -CA ...` (nobody here wrote it), reachable on 127.0.0.1.
 *
 * OpenSSL 3.0's responder binds every interface and has no address option,
 * so it runs in its own network namespace (`unshare --net`, loopback only,
 * unreachable from outside). A relay joins the two worlds: the test process
 * listens on 127.0.0.1 and forwards each connection over a Unix socket (a
 * file, visible from both namespaces) to a small relay inside the namespace,
 * which connects to openssl there.
 *
 * openssl's responder spins at 100 % CPU after a connection that sends
 * nothing, so the outer relay opens the path to it only once a client has
 * sent its first bytes, and nothing here ever probes its port: readiness is
 * its own "waiting for OCSP client connections" line.
 *
 * Also here, for faults no real responder makes on purpose: a responder that
 * accepts and never answers, and one that answers HTTP 200 with garbage.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Issued } from './pki.ts';
import { listening } from './ports.ts';

export interface IndexEntry {
  /** Hex serial as `Issued.serial` has it. */
  serial: string;
  /** Default: valid. */
  revoked?: { at?: Date; reason?: string };
}

export interface ResponderOptions {
  /** The CA whose certificates it answers for (`-CA`). */
  ca: Pick<Issued, 'certPath'>;
  /** The signing certificate and key (`-rsigner`, `-rkey`); default the CA itself (then ca needs keyPath). */
  signer?: Pick<Issued, 'certPath' | 'keyPath'>;
  entries: IndexEntry[];
  /** `-nmin`: nextUpdate this many minutes after thisUpdate; null: no nextUpdate. Default 60. */
  nextUpdateMinutes?: number | null;
  /** `-resp_key_id`: ResponderID by key hash instead of by name. */
  byKey?: boolean;
  /** `-resp_no_certs`: the signer certificate is not included. */
  noCerts?: boolean;
  /** `-rother`: more certificates (a PEM file) to include, e.g. the responder's own CA. */
  otherCertsPath?: string;
}

export interface OcspResponder {
  url: string;
  /** HTTP requests that reached the responder so far. */
  requests(): number;
  /** Rewrites index.txt and restarts openssl (it re-reads a changed index only after the next request). */
  setEntries(entries: IndexEntry[]): Promise<void>;
  /** Stops openssl (the relay stays: connections are then refused). */
  down(): Promise<void>;
  /** Starts openssl again after down(). */
  up(): Promise<void>;
  stop(): Promise<void>;
}

/** Port openssl listens on inside its namespace (alone there, so any port is free). */
const INNER_PORT = 2560;
const START_TIMEOUT_MS = 15_000;

/** The relay inside the namespace: Unix socket -> 127.0.0.1:port there, opened once the client has spoken. */
const INNER_RELAY = `
const net = require('node:net');
const [sock, port] = process.argv.slice(1);
net.createServer((client) => {
  client.once('data', (first) => {
    const up = net.connect(Number(port), '127.0.0.1', () => { up.write(first); client.pipe(up); up.pipe(client); });
    up.on('error', () => client.destroy());
    client.on('error', () => up.destroy());
    client.on('close', () => up.end());
  });
  client.on('error', () => {});
}).listen(sock);
process.on('SIGTERM', () => process.exit(0));
`;

function utcTime(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z').slice(2);
}

function indexText(entries: IndexEntry[]): string {
  return entries
    .map((e) => {
      const revoked = e.revoked ? `${utcTime(e.revoked.at ?? new Date(Date.now() - 3600_000))}${e.revoked.reason ? `,${e.revoked.reason}` : ''}` : '';
      return `${e.revoked ? 'R' : 'V'}\t491231235959Z\t${revoked}\t${e.serial}\tunknown\t/CN=x\n`;
    })
    .join('');
}

async function until(probe: () => Promise<boolean>, what: string, child?: ChildProcess, output?: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await probe())) {
    if (child && child.exitCode !== null) throw new Error(`${what}: process exited with ${child.exitCode}: ${output?.() ?? ''}`);
    if (Date.now() > deadline) throw new Error(`${what}: not ready after ${START_TIMEOUT_MS} ms ${output?.() ?? ''}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function stopChild(child: ChildProcess | null): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

export async function startOcspResponder(o: ResponderOptions): Promise<OcspResponder> {
  const dir = await mkdtemp(join(tmpdir(), 'certgate-ocsp-'));
  const sock = join(dir, 'relay.sock');
  const index = join(dir, 'index.txt');
  await writeFile(index, indexText(o.entries));
  // Every entry has the subject /CN=x: openssl's index refuses duplicates unless told otherwise.
  await writeFile(`${index}.attr`, 'unique_subject = no\n');
  const signer = o.signer ?? (o.ca as Pick<Issued, 'certPath' | 'keyPath'>);

  // The namespace, held by the inner relay (unshare and sh exec into it: its pid is the namespace's).
  const ns = spawn('unshare', ['--net', '--', 'sh', '-c', 'ip link set lo up && exec "$0" -e "$1" "$2" "$3"', process.execPath, INNER_RELAY, sock, String(INNER_PORT)], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let nsErr = '';
  ns.stderr?.on('data', (b: Buffer) => (nsErr += b.toString()));
  const failed = new Promise<never>((_, reject) => ns.once('error', (e) => reject(new Error(`cannot run unshare: ${e.message}`))));
  failed.catch(() => undefined);
  await Promise.race([until(() => access(sock).then(() => true, () => false), 'OCSP relay namespace', ns, () => nsErr), failed]);

  let openssl: ChildProcess | null = null;
  let requests = 0;
  const up = async (): Promise<void> => {
    const args = ['ocsp', '-index', index, '-port', String(INNER_PORT), '-rsigner', signer.certPath, '-rkey', signer.keyPath, '-CA', o.ca.certPath, '-ignore_err'];
    const minutes = o.nextUpdateMinutes === undefined ? 60 : o.nextUpdateMinutes;
    if (minutes !== null) args.push('-nmin', String(minutes));
    if (o.byKey) args.push('-resp_key_id');
    if (o.noCerts) args.push('-resp_no_certs');
    if (o.otherCertsPath) args.push('-rother', o.otherCertsPath);
    const child = spawn('nsenter', [`--net=/proc/${ns.pid}/ns/net`, '--', 'openssl', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
    openssl = child;
    await until(async () => out.includes('waiting for OCSP client connections'), 'openssl ocsp', child, () => out);
  };
  try {
    await up();
  } catch (e) {
    await stopChild(openssl);
    await stopChild(ns);
    await rm(dir, { recursive: true, force: true });
    throw e;
  }

  const sockets = new Set<net.Socket>();
  const relay = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => undefined);
    client.once('data', (first) => {
      if (first.subarray(0, 5).toString() === 'POST ') requests++;
      client.on('data', (more: Buffer) => {
        if (more.subarray(0, 5).toString() === 'POST ') requests++;
      });
      const inner = net.connect(sock, () => {
        inner.write(first);
        client.pipe(inner);
        inner.pipe(client);
      });
      sockets.add(inner);
      inner.on('close', () => {
        sockets.delete(inner);
        client.destroy();
      });
      inner.on('error', () => client.destroy());
      client.on('close', () => inner.end());
    });
  });
  const port = await listening(relay);

  return {
    url: `http://127.0.0.1:${port}/`,
    requests: () => requests,
    async setEntries(entries) {
      await writeFile(index, indexText(entries));
      await stopChild(openssl);
      await up();
    },
    down: () => stopChild(openssl),
    up,
    async stop() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
      await stopChild(openssl);
      await stopChild(ns);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface FaultyResponder {
  url: string;
  requests(): number;
  stop(): Promise<void>;
}

/**
 * A responder that misbehaves: `hang` reads the request and never answers,
 * `garbage` answers 200 with bytes that are no OCSP response, `huge` sends an
 * endless body, `status` answers HTTP 500, `replay` answers every request
 * with `body` (a response captured earlier, as a replaying attacker would).
 */
export async function startFaultyResponder(kind: 'hang' | 'garbage' | 'huge' | 'status' | 'replay', body?: Buffer): Promise<FaultyResponder> {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    req.resume();
    req.on('end', () => {
      if (kind === 'garbage') res.writeHead(200, { 'content-type': 'application/ocsp-response' }).end(Buffer.from('30820a0b0c0d0e0f this is not DER'));
      else if (kind === 'status') res.writeHead(500).end('internal error');
      else if (kind === 'replay') res.writeHead(200, { 'content-type': 'application/ocsp-response' }).end(body);
      else if (kind === 'huge') {
        res.writeHead(200, { 'content-type': 'application/ocsp-response' });
        const chunk = Buffer.alloc(16 * 1024, 0x30);
        const pump = (): void => {
          while (!res.destroyed && res.write(chunk));
          if (!res.destroyed) res.once('drain', pump);
        };
        pump();
      }
      // hang: never answer
    });
  });
  const port = await listening(server);
  return {
    url: `http://127.0.0.1:${port}/`,
    requests: () => requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
