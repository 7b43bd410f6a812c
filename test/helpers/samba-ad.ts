/**
 * A throwaway Samba Active Directory domain controller for integration tests
 * (the steps of /work/shared/directories/RECIPES.md §1).
 *
 * Everything lives in a private temp directory: `samba-tool domain provision
 * --targetdir`, smb.conf edited to run the LDAP server only, on 127.0.0.1 only,
 * with a TLS certificate of our own CA (`caPem`), pid and socket directories
 * inside the temp directory.
 *
 * Samba hard-wires its LDAP ports (389, 636, 3268, 3269), so only one DC can
 * run on a machine: the DC runs while this process holds
 * `flock /tmp/certgate-samba.lock`, the ports are checked free before the
 * start, and a start that fails throws with the reason (never a silent skip).
 *
 * Processes: samba runs in the foreground (`-i -M single`: one process, the pid
 * recorded) with a pipe as stdin, so that it also stops when this process dies
 * (samba -i ends on EOF on stdin). The lock is held by a `flock` process whose
 * stdin is a pipe too. stop() ends both by pid and removes the directory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'ldapts';
import { run } from './run.ts';
import { makeServerCertificate } from './server-cert.ts';
import { missingProgram, once, recordPid, startDaemon, stopChild, type Daemon } from './processes.ts';

export const SAMBA_LOCK = '/tmp/certgate-samba.lock';
/** The ports Samba's LDAP server always binds (smb.conf cannot move them). */
export const SAMBA_PORTS = { ldap: 389, ldaps: 636, gc: 3268, gcTls: 3269 } as const;

const REALM = 'SAMDOM.EXAMPLE.COM';
const DNS_DOMAIN = 'samdom.example.com';
const BASE_DN = 'DC=samdom,DC=example,DC=com';
const ADMIN_PASSWORD = 'Adm1n-Pass!x';

export interface SambaAd {
  dir: string;
  realm: string;
  /** `samdom.example.com`: the UPN suffix. */
  dnsDomain: string;
  /** `SAMDOM`: the down-level domain name. */
  netbiosDomain: string;
  baseDn: string;
  adminUpn: string;
  adminPassword: string;
  /** The CA of the DC's TLS certificate (subjectAltName 127.0.0.1, localhost). */
  caPem: string;
  ldapUrl: string;
  ldapsUrl: string;
  gcUrl: string;
  gcTlsUrl: string;
  /** `samba-tool ARGS -s smb.conf` (works while the DC runs, straight on sam.ldb). */
  tool(...args: string[]): Promise<string>;
  /** ldapmodify over ldaps:// as Administrator (for attributes samba-tool does not set). */
  modify(ldif: string): Promise<void>;
  /** The DC's recent output. */
  output(): string;
  stop(): Promise<void>;
}

export interface SambaOptions {
  /** `ldap server require strong auth` (AD's default, yes): simple binds only over TLS. */
  strongAuth?: boolean;
  /** Runs before the DC starts, e.g. `samba-tool user create` calls. */
  setup?: (tool: SambaAd['tool']) => Promise<void>;
  /** How long to wait for another run's DC to release the lock (default 5 min). */
  lockWaitMs?: number;
}

export async function startSambaAd(opts: SambaOptions = {}): Promise<SambaAd> {
  await assertInstalled();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-samba-'));
  const sd = path.join(dir, 'samba');
  const conf = path.join(sd, 'etc', 'smb.conf');
  const tool: SambaAd['tool'] = (...args) => run('samba-tool', [...args, '-s', conf], { timeoutMs: 60_000 });
  let lock: ChildProcess | null = null;
  let samba: Daemon | null = null;
  const stop = async (): Promise<void> => {
    if (samba) await stopChild(samba.child, 10_000);
    if (lock) await stopChild(lock, 5_000);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const pki = path.join(dir, 'pki');
    await mkdir(pki);
    const [cert] = await Promise.all([makeServerCertificate(pki, 'certgate test AD CA'), provision(sd)]);
    await mkdir(path.join(sd, 'tls'));
    await mkdir(path.join(sd, 'run'));
    const keyFile = path.join(sd, 'tls', 'key.pem');
    await copyFile(cert.keyFile, keyFile);
    await chmod(keyFile, 0o600); // samba refuses a key other users could read
    await writeFile(conf, editSmbConf(await readFile(conf, 'utf8'), {
      'server services': 'ldap',
      'ldap server require strong auth': opts.strongAuth === false ? 'no' : 'yes',
      'tls enabled': 'yes',
      'tls keyfile': keyFile,
      'tls certfile': cert.certFile,
      'tls cafile': cert.caFile,
      'log file': path.join(sd, 'log.%m'),
      'log level': '1',
      'pid directory': path.join(sd, 'run'),
      'ncalrpc dir': path.join(sd, 'run', 'ncalrpc'),
      'winbindd socket directory': path.join(sd, 'run', 'winbindd'),
      'ntp signd socket directory': path.join(sd, 'run', 'ntp_signd'),
    }));
    await opts.setup?.(tool);

    lock = await acquireLock(opts.lockWaitMs ?? 300_000);
    await assertPortsFree();
    samba = startDaemon('samba', 'samba', ['-i', '-M', 'single', '-s', conf, '--debug-stdout'], { stdin: 'pipe' });
    await waitForLdap(samba, cert.caPem);
    const handle: SambaAd = {
      dir, realm: REALM, dnsDomain: DNS_DOMAIN, netbiosDomain: 'SAMDOM', baseDn: BASE_DN,
      adminUpn: `Administrator@${DNS_DOMAIN}`, adminPassword: ADMIN_PASSWORD, caPem: cert.caPem,
      ldapUrl: `ldap://127.0.0.1:${SAMBA_PORTS.ldap}`, ldapsUrl: `ldaps://127.0.0.1:${SAMBA_PORTS.ldaps}`,
      gcUrl: `ldap://127.0.0.1:${SAMBA_PORTS.gc}`, gcTlsUrl: `ldaps://127.0.0.1:${SAMBA_PORTS.gcTls}`,
      tool,
      modify: async (ldif) => {
        await run('ldapmodify', ['-H', handle.ldapsUrl, '-x', '-D', handle.adminUpn, '-w', ADMIN_PASSWORD], {
          input: ldif.trim() + '\n', env: { LDAPTLS_CACERT: cert.caFile }, timeoutMs: 30_000,
        });
      },
      output: samba.output,
      stop: once(stop),
    };
    return handle;
  } catch (err) {
    await stop();
    throw err;
  }
}

async function assertInstalled(): Promise<void> {
  const missing = await missingProgram(['/usr/sbin/samba', '/usr/bin/samba-tool', '/usr/bin/flock', '/usr/bin/ldapmodify', '/usr/bin/openssl']);
  if (missing) throw new Error(`Samba AD cannot start: ${missing} not found (scripts/ensure-deps.sh --test installs samba, samba-ad-dc, ldap-utils)`);
  if (process.getuid?.() !== 0) throw new Error('Samba AD cannot start: it binds ports 389/636/3268/3269, which needs root');
}

async function provision(sd: string): Promise<void> {
  await run('samba-tool', [
    'domain', 'provision', '--use-rfc2307', `--realm=${REALM}`, '--domain=SAMDOM', '--server-role=dc',
    '--dns-backend=NONE', '--host-name=dc1', '--host-ip=127.0.0.1', `--adminpass=${ADMIN_PASSWORD}`, `--targetdir=${sd}`,
    '--option=interfaces = 127.0.0.1', '--option=bind interfaces only = yes',
  ], { timeoutMs: 120_000 });
}

/** Sets `[global]` keys of smb.conf, removing any line already there for the same key. */
function editSmbConf(text: string, settings: Record<string, string>): string {
  const keys = new Set(Object.keys(settings).map((k) => k.toLowerCase()));
  const lines = text.split('\n').filter((line) => {
    const m = /^\s*([^=[]+?)\s*=/.exec(line);
    return !(m && keys.has((m[1] ?? '').toLowerCase()));
  });
  const at = lines.findIndex((l) => l.trim() === '[global]');
  if (at < 0) throw new Error('smb.conf written by samba-tool has no [global] section');
  lines.splice(at + 1, 0, ...Object.entries(settings).map(([k, v]) => `\t${k} = ${v}`));
  return lines.join('\n');
}

/**
 * Holds SAMBA_LOCK in a `flock` process (`-o`: its command does not inherit the lock) until
 * stopChild() ends it, or this process dies and its stdin closes.
 */
async function acquireLock(waitMs: number): Promise<ChildProcess> {
  const holder = spawn('flock', ['-o', '-w', String(Math.ceil(waitMs / 1000)), SAMBA_LOCK, '-c', 'echo locked; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  recordPid('samba-lock', holder.pid);
  let err = '';
  holder.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    holder.stdout?.on('data', (b: Buffer) => {
      seen += b.toString();
      if (seen.includes('locked')) resolve();
    });
    holder.once('exit', (code) => {
      reject(new Error(
        `Samba AD cannot start: ${SAMBA_LOCK} still held after ${Math.round(waitMs / 1000)} s by another test run's DC (flock exit ${code}${err ? `: ${err.trim()}` : ''})`,
      ));
    });
    holder.once('error', (e) => reject(new Error(`Samba AD cannot start: flock: ${e.message}`)));
  });
  return holder;
}

async function assertPortsFree(): Promise<void> {
  for (const port of Object.values(SAMBA_PORTS)) {
    const problem = await new Promise<string | null>((resolve) => {
      const srv = net.createServer();
      srv.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(null)));
    });
    if (problem) {
      throw new Error(`Samba AD cannot start: 127.0.0.1:${port} is not free (${problem}); another LDAP server or a DC left over from an earlier run holds it`);
    }
  }
}

/** Waits until both LDAP ports answer a rootDSE search (Samba opens 389 and 636 a moment apart). */
async function waitForLdap(samba: Daemon, caPem: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (const url of [`ldaps://127.0.0.1:${SAMBA_PORTS.ldaps}`, `ldap://127.0.0.1:${SAMBA_PORTS.ldap}`]) {
    for (;;) {
      const ended = samba.ended();
      if (ended) throw new Error(`Samba AD cannot start: samba ${ended} during start: ${samba.output().trim().slice(-2000)}`);
      if (await answers(url, caPem)) break;
      if (Date.now() > deadline) throw new Error(`Samba AD did not answer on ${url} within 60 s: ${samba.output().trim().slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function answers(url: string, caPem: string): Promise<boolean> {
  const client = new Client({ url, timeout: 2000, connectTimeout: 2000, ...(url.startsWith('ldaps:') ? { tlsOptions: { ca: caPem } } : {}) });
  try {
    await client.search('', { scope: 'base', attributes: ['defaultNamingContext'] });
    return true;
  } catch {
    return false;
  } finally {
    await client.unbind().catch(() => undefined);
  }
}
