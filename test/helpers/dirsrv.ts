/**
 * A throwaway 389 Directory Server for integration tests (the steps of
 * /work/shared/directories/RECIPES.md §2).
 *
 * `dscreate` only knows instances under /etc/dirsrv and starts them with
 * systemctl, but honours `$PREFIX`: a private temp directory is made a virtual
 * prefix whose defaults.inf points everywhere into it, systemd off, and the
 * listeners bound to 127.0.0.1 from the very first start. The instance gets a
 * server certificate of our own CA (`caPem`) under the nickname `Server-Cert`,
 * upgrade hashing off (stored password fixtures must not drift) and an
 * unbuffered access log (so tests can read the filters the server got), and
 * the MemberOf plugin on (so group membership can be queried as `memberOf`).
 *
 * ns-slapd is started by us in the foreground (`-d 0`), its pid recorded and
 * stopped with SIGTERM (it takes a few seconds to exit). Ports are free ports
 * of the moment, so several runs never collide.
 */
import type { ChildProcess } from 'node:child_process';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports.ts';
import { missingProgram, once, startDaemon, stopChild } from './processes.ts';
import { run } from './run.ts';
import { makeServerCertificate } from './server-cert.ts';

const INSTANCE = 'cgtest';
const SUFFIX = 'dc=example,dc=com';
const ROOT_DN = 'cn=Directory Manager';
const ROOT_PASSWORD = 'DM-Passw0rd!';

export interface Dirsrv {
  dir: string;
  baseDn: string;
  rootDn: string;
  rootPassword: string;
  port: number;
  tlsPort: number;
  ldapUrl: string;
  ldapsUrl: string;
  /** The CA of the server certificate (subjectAltName 127.0.0.1, localhost). */
  caPem: string;
  /** The instance's config directory (dse.ldif, NSS db). */
  configDir: string;
  /** ldapmodify as Directory Manager over ldap:// (`changetype` records; Directory Manager may add pre-hashed passwords). */
  modify(ldif: string): Promise<void>;
  /** A value of `scheme` as the server stores it (`pwdhash -s SCHEME`). */
  pwdhash(scheme: string, password: string): Promise<string>;
  /** The access log so far (every operation with its exact filter). */
  accessLog(): Promise<string>;
  stop(): Promise<void>;
}

export async function startDirsrv(): Promise<Dirsrv> {
  await assertInstalled();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'certgate-dirsrv-'));
  // ns-slapd runs as dirsrv: it must be able to pass through the (0700) temp directory.
  await chmod(dir, 0o711);
  const ds = path.join(dir, 'ds');
  const configDir = path.join(ds, 'etc', 'dirsrv', `slapd-${INSTANCE}`);
  let child: ChildProcess | null = null;
  const stop = async (): Promise<void> => {
    if (child) await stopChild(child, 15_000);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const pki = path.join(dir, 'pki');
    await mkdir(pki);
    const [port, tlsPort] = [await freePort(), await freePort()];
    const [cert] = await Promise.all([makeServerCertificate(pki, 'certgate test 389-ds CA'), create(ds, port, tlsPort)]);
    await installCertificate(ds, configDir, cert);
    const ns = startDaemon('ns-slapd', '/usr/sbin/ns-slapd', ['-D', configDir, '-i', path.join(ds, 'run', 'dirsrv', `slapd-${INSTANCE}.pid`), '-d', '0']);
    child = ns.child;
    await Promise.race([Promise.all([waitForPort(port, 60_000), waitForPort(tlsPort, 60_000)]), ns.failed]).catch((err: Error) => {
      throw new Error(`389-ds cannot start: ${err.message}: ${ns.output().trim().slice(-2000)}`);
    });
    const ldapUrl = `ldap://127.0.0.1:${port}`;
    const modify: Dirsrv['modify'] = async (ldif) => {
      await run('ldapmodify', ['-x', '-H', ldapUrl, '-D', ROOT_DN, '-w', ROOT_PASSWORD], { input: ldif.trim() + '\n', timeoutMs: 30_000 });
    };
    await modify(
      [
        'dn: cn=config',
        'changetype: modify',
        'replace: nsslapd-enable-upgrade-hash',
        'nsslapd-enable-upgrade-hash: off',
        '-',
        'replace: nsslapd-accesslog-logbuffering',
        'nsslapd-accesslog-logbuffering: off',
      ].join('\n'),
    );
    return {
      dir, baseDn: SUFFIX, rootDn: ROOT_DN, rootPassword: ROOT_PASSWORD, port, tlsPort, ldapUrl,
      ldapsUrl: `ldaps://127.0.0.1:${tlsPort}`, caPem: cert.caPem, configDir,
      modify,
      pwdhash: async (scheme, password) => (await run('/usr/bin/pwdhash', ['-D', configDir, '-s', scheme, password])).trim(),
      accessLog: () => readFile(path.join(ds, 'var', 'log', 'dirsrv', `slapd-${INSTANCE}`, 'access'), 'utf8').catch(() => ''),
      stop: once(stop),
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function assertInstalled(): Promise<void> {
  const missing = await missingProgram(['/usr/sbin/dscreate', '/usr/sbin/ns-slapd', '/usr/bin/pwdhash', '/usr/bin/certutil', '/usr/bin/pk12util', '/usr/bin/ldapmodify']);
  if (missing) throw new Error(`389-ds cannot start: ${missing} not found (scripts/ensure-deps.sh --test installs 389-ds-base, libnss3-tools, ldap-utils)`);
  if (process.getuid?.() !== 0) throw new Error('389-ds cannot start: dscreate and ns-slapd (which switches to the dirsrv user) need root');
}

/** The virtual prefix, the .inf file and dscreate (RECIPES.md §2, "Instance wholly under a private directory"). */
async function create(ds: string, port: number, tlsPort: number): Promise<void> {
  // The parents must exist beforehand and belong to dirsrv, or ns-slapd cannot open its log directory.
  for (const d of ['share', 'etc/dirsrv', 'etc/default', 'etc/tmpfiles.d', 'run/dirsrv', 'run/lock/dirsrv', 'tmp', 'lib/dirsrv', 'var/log/dirsrv', 'var/lib/dirsrv']) {
    await mkdir(path.join(ds, d), { recursive: true });
  }
  await cp('/usr/share/dirsrv', path.join(ds, 'share', 'dirsrv'), { recursive: true });
  await cp('/etc/dirsrv/schema', path.join(ds, 'etc', 'dirsrv', 'schema'), { recursive: true });
  await cp('/etc/dirsrv/config', path.join(ds, 'etc', 'dirsrv', 'config'), { recursive: true });
  const defaults = path.join(ds, 'share', 'dirsrv', 'inf', 'defaults.inf');
  const lines = (await readFile(defaults, 'utf8')).split('\n').map((line) => {
    if (/^with_systemd = 1/.test(line)) return 'with_systemd = 0';
    if (/^inst_dir = /.test(line)) return `inst_dir = ${ds}/lib/dirsrv/slapd-{instance_name}`;
    return line
      .replace(/= \/etc/, `= ${ds}/etc`)
      .replace(/= \/var/, `= ${ds}/var`)
      .replace(/= \/run/, `= ${ds}/run`)
      .replace(/= \/dev\/shm/, `= ${ds}/var/lib/dirsrv`)
      .replace(/^data_dir = \/usr\/share/, `data_dir = ${ds}/share`)
      .replace(/^system_schema_dir = \/usr\/share/, `system_schema_dir = ${ds}/share`)
      .replace(/^tmp_dir = \/tmp/, `tmp_dir = ${ds}/tmp`);
  });
  await writeFile(defaults, lines.join('\n'));
  // Loopback only, from the very first start (dscreate has no option for the address).
  const template = path.join(ds, 'share', 'dirsrv', 'data', 'template-dse.ldif');
  const dse = await readFile(template, 'utf8');
  const memberOf = /(dn: cn=MemberOf Plugin,cn=plugins,cn=config\n(?:.+\n)*?)nsslapd-pluginenabled: off/i;
  if (!/^nsslapd-port: %ds_port%$/m.test(dse) || !memberOf.test(dse)) {
    throw new Error(`389-ds cannot start: ${template} is not the template this helper knows (no "nsslapd-port: %ds_port%" line or no MemberOf Plugin entry)`);
  }
  await writeFile(
    template,
    dse
      .replace(/^nsslapd-port: %ds_port%$/m, 'nsslapd-port: %ds_port%\nnsslapd-listenhost: 127.0.0.1\nnsslapd-securelistenhost: 127.0.0.1')
      // memberOf on groupOfNames members: group-membership queries as AD's `memberOf` (a plugin restart otherwise).
      .replace(memberOf, '$1nsslapd-pluginenabled: on'),
  );
  const inf = path.join(ds, 'inst.inf');
  await writeFile(inf, [
    '[general]', 'config_version = 2', 'full_machine_name = localhost', 'strict_host_checking = False', 'selinux = False',
    'systemd = False', 'start = False',
    '[slapd]', `instance_name = ${INSTANCE}`, `port = ${port}`, `secure_port = ${tlsPort}`, `root_dn = ${ROOT_DN}`,
    `root_password = ${ROOT_PASSWORD}`, 'self_sign_cert = True', 'user = dirsrv', 'group = dirsrv',
    '[backend-userroot]', `suffix = ${SUFFIX}`, 'create_suffix_entry = True', 'sample_entries = no', '',
  ].join('\n'));
  await run('chown', ['-R', 'dirsrv:dirsrv', ds]);
  await run('/usr/sbin/dscreate', ['-v', 'from-file', inf], { env: { PREFIX: ds }, timeoutMs: 180_000 }).catch((err: Error) => {
    throw new Error(`389-ds cannot start: ${err.message}`, { cause: err });
  });
}

/** Replaces dscreate's self-signed `Server-Cert` by ours under the same nickname, so the TLS setup stays valid. */
async function installCertificate(ds: string, configDir: string, cert: { certFile: string; keyFile: string; caFile: string }): Promise<void> {
  const p12 = path.join(ds, 'tmp', 's.p12');
  const pin = path.join(configDir, 'pwdfile.txt');
  await run('openssl', ['pkcs12', '-export', '-in', cert.certFile, '-inkey', cert.keyFile, '-name', 'Server-Cert', '-out', p12, '-passout', 'pass:p12pass']);
  await run('certutil', ['-F', '-d', `sql:${configDir}`, '-n', 'Server-Cert', '-f', pin]);
  await run('pk12util', ['-d', `sql:${configDir}`, '-i', p12, '-W', 'p12pass', '-k', pin]);
  await run('certutil', ['-A', '-d', `sql:${configDir}`, '-n', 'Test CA', '-t', 'CT,,', '-a', '-i', cert.caFile, '-f', pin]);
  await rm(p12, { force: true });
  await run('chown', ['-R', 'dirsrv:dirsrv', configDir]);
}
