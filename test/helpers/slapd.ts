/**
 * A throwaway OpenLDAP slapd for integration tests.
 *
 * Everything lives in a temp directory (config, mdb database, pid file) and
 * the server listens on a free loopback port. Only asynchronous child
 * processes are used: tests host servers in the same process, and a
 * synchronous child process would block their event loop.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from 'ldapts';
import { freePort } from './ports.ts';
import { missingProgram, once, startDaemon, stopChild } from './processes.ts';
import { run } from './run.ts';
import { makeServerCertificate, type ServerCertificate } from './server-cert.ts';

const FIXTURES = fileURLToPath(new URL('../fixtures', import.meta.url));
/** The smart-card schema certgate's queries use, as shipped for real directories. */
const CAC_SCHEMA = fileURLToPath(new URL('../../deploy/ldap/cac.schema', import.meta.url));
const SLAPD = '/usr/sbin/slapd';
const SLAPADD = '/usr/sbin/slapadd';
const SCHEMA_DIR = '/etc/ldap/schema';

export interface Slapd {
  /** `ldap://127.0.0.1:PORT` */
  url: string;
  port: number;
  baseDn: string;
  rootDn: string;
  rootPassword: string;
  /** Temp directory holding config, database and pid file (removed by stop()). */
  dir: string;
  /** With `tls: true`: `ldaps://127.0.0.1:TLSPORT` and the CA that signed the server certificate. */
  ldapsUrl?: string;
  caPem?: string;
  add(ldif: string): Promise<void>;
  modify(ldif: string): Promise<void>;
  stop(): Promise<void>;
}

export interface StartSlapdOptions {
  /** Extra LDIF loaded with slapadd before the server starts (after base.ldif). */
  ldif?: string;
  /**
   * Also listen on ldaps:// and allow StartTLS, with a server certificate for
   * 127.0.0.1 signed by a fresh CA (returned as `caPem`). Needs openssl.
   */
  tls?: boolean;
  /** Listen on this loopback port (the demo's documented one) instead of a free one; no retry. */
  port?: number;
  /** The rootdn's password (default admin-secret). */
  rootPassword?: string;
}

const BASE_DN = 'dc=example,dc=com';
const ROOT_DN = 'cn=admin,dc=example,dc=com';
const DEFAULT_ROOT_PASSWORD = 'admin-secret';

export async function startSlapd(opts: StartSlapdOptions = {}): Promise<Slapd> {
  await assertInstalled();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-slapd-'));
  try {
    const tls = opts.tls ? await makeServerCertificate(dir) : null;
    // The port is found by binding port 0 and releasing it; another process
    // could grab it in between, so a failed start is retried on a new port.
    let lastError: unknown;
    const rootPassword = opts.rootPassword ?? DEFAULT_ROOT_PASSWORD;
    for (let attempt = 0; attempt < (opts.port ? 1 : 3); attempt++) {
      const port = opts.port ?? (await freePort());
      const tlsPort = tls ? await freePort() : null;
      const dataDir = path.join(dir, `data-${attempt}`);
      await mkdir(dataDir);
      const conf = path.join(dir, 'slapd.conf');
      await writeFile(conf, slapdConf(dir, dataDir, tls, rootPassword));
      await slapadd(dir, conf, opts.ldif ?? '');
      const urls = [`ldap://127.0.0.1:${port}/`, ...(tlsPort ? [`ldaps://127.0.0.1:${tlsPort}/`] : [])];
      try {
        const child = await launch(conf, urls, `ldap://127.0.0.1:${port}`);
        return makeHandle(dir, port, child, tlsPort, tls?.caPem, rootPassword);
      } catch (err) {
        lastError = err;
      }
    }
    throw lastError instanceof Error ? lastError : new Error(String(lastError));
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

async function assertInstalled(): Promise<void> {
  const missing = await missingProgram([SLAPD, SLAPADD, '/usr/bin/ldapadd', '/usr/bin/ldapmodify']);
  if (missing) throw new Error(`${missing} not found: install the Debian packages slapd and ldap-utils (apt-get install -y slapd ldap-utils)`);
}

function slapdConf(dir: string, dataDir: string, tls: ServerCertificate | null, rootPassword: string): string {
  const schemas = ['core', 'cosine', 'inetorgperson', 'nis'].map((s) => `include ${SCHEMA_DIR}/${s}.schema`);
  return [
    ...schemas,
    `include ${CAC_SCHEMA}`,
    `pidfile ${path.join(dir, 'slapd.pid')}`,
    `argsfile ${path.join(dir, 'slapd.args')}`,
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    // {SSHA256}/{SSHA512} userPassword values for simple binds.
    'moduleload pw-sha2',
    ...(tls
      ? [`TLSCACertificateFile ${tls.caFile}`, `TLSCertificateFile ${tls.certFile}`, `TLSCertificateKeyFile ${tls.keyFile}`]
      : []),
    'database mdb',
    'maxsize 67108864',
    `suffix "${BASE_DN}"`,
    `rootdn "${ROOT_DN}"`,
    `rootpw ${rootPassword}`,
    `directory ${dataDir}`,
    // Equality indexes on what the queries of the tests, the demo and bench/smtp search by, as
    // any directory in service has them: unindexed, every search reads every entry (bench/smtp's
    // certificate query cost slapd ~0.2 ms per search at 72 entries and 1.4 ms at 2,000; indexed,
    // 0.14 and 0.17 ms).
    'index objectClass eq',
    'index uid,mail,cn,caccn,cacserial eq',
    // Users may bind (and change their own password); nobody but the rootdn
    // (which bypasses ACLs) reads userPassword; anonymous may search the rest.
    'access to attrs=userPassword',
    '  by self write',
    '  by anonymous auth',
    '  by * none',
    'access to *',
    '  by * read',
    '',
  ].join('\n');
}

async function slapadd(dir: string, conf: string, extraLdif: string): Promise<void> {
  const base = await readFile(path.join(FIXTURES, 'base.ldif'), 'utf8');
  const file = path.join(dir, 'initial.ldif');
  await writeFile(file, `${base.trimEnd()}\n\n${extraLdif.trim()}\n`);
  await run(SLAPADD, ['-q', '-f', conf, '-l', file], { timeoutMs: 30_000 });
}

/** Starts slapd in the foreground (`-d 0`: no fork, no debug output) and waits until it answers. */
async function launch(conf: string, urls: string[], url: string): Promise<ChildProcess> {
  const slapd = startDaemon('slapd', SLAPD, ['-d', '0', '-h', urls.join(' '), '-f', conf], { keep: 4000 });
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const ended = slapd.ended();
    if (ended) throw new Error(`slapd ${ended} during start: ${slapd.output().trim() || 'no output'}`);
    if (await answers(url)) return slapd.child;
    await new Promise((r) => setTimeout(r, 25));
  }
  slapd.child.kill('SIGKILL');
  throw new Error(`slapd did not answer on ${url} within 10 s: ${slapd.output().trim()}`);
}

async function answers(url: string): Promise<boolean> {
  const client = new Client({ url, timeout: 1000, connectTimeout: 1000 });
  try {
    await client.search(BASE_DN, { scope: 'base', attributes: ['1.1'] });
    return true;
  } catch {
    return false;
  } finally {
    await client.unbind().catch(() => undefined);
  }
}

function makeHandle(dir: string, port: number, child: ChildProcess, tlsPort: number | null, caPem: string | undefined, rootPassword: string): Slapd {
  const url = `ldap://127.0.0.1:${port}`;
  let ldifSeq = 0;
  const ldapTool = async (tool: 'ldapadd' | 'ldapmodify', ldif: string): Promise<void> => {
    const file = path.join(dir, `change-${++ldifSeq}.ldif`);
    await writeFile(file, ldif.trim() + '\n');
    await run(`/usr/bin/${tool}`, ['-x', '-H', url, '-D', ROOT_DN, '-w', rootPassword, '-f', file], { timeoutMs: 30_000 });
  };
  return {
    url,
    port,
    baseDn: BASE_DN,
    rootDn: ROOT_DN,
    rootPassword,
    dir,
    ...(tlsPort ? { ldapsUrl: `ldaps://127.0.0.1:${tlsPort}`, caPem } : {}),
    add: (ldif) => ldapTool('ldapadd', ldif),
    modify: (ldif) => ldapTool('ldapmodify', ldif),
    // slapd -d does not fork: the child is the server.
    stop: once(async () => {
      await stopChild(child, 5000);
      await rm(dir, { recursive: true, force: true });
    }),
  };
}
