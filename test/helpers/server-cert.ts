/**
 * A throwaway CA and a TLS server certificate for 127.0.0.1 / localhost, for the
 * directories the tests start (slapd, Samba AD, 389-ds), so that clients can
 * verify `ldaps://127.0.0.1` against the CA (`caPem`).
 *
 * EC P-256: fast to generate, and accepted by OpenSSL (slapd), GnuTLS (Samba) and NSS (389-ds).
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './run.ts';

export interface ServerCertificate {
  certFile: string;
  keyFile: string;
  caFile: string;
  caPem: string;
}

export async function makeServerCertificate(dir: string, caName = 'certgate test LDAP CA'): Promise<ServerCertificate> {
  const f = (name: string): string => path.join(dir, name);
  const ecKey = (out: string): Promise<string> => run('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', out]);
  await ecKey(f('ca.key'));
  await run('openssl', ['req', '-x509', '-new', '-key', f('ca.key'), '-subj', `/CN=${caName}`, '-days', '2', '-out', f('ca.pem')]);
  await ecKey(f('server.key'));
  await run('openssl', ['req', '-new', '-key', f('server.key'), '-subj', '/CN=127.0.0.1', '-out', f('server.csr')]);
  await writeFile(f('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  await run('openssl', [
    'x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-days', '2', '-extfile', f('server.ext'), '-out', f('server.pem'),
  ]);
  return { certFile: f('server.pem'), keyFile: f('server.key'), caFile: f('ca.pem'), caPem: await readFile(f('ca.pem'), 'utf8') };
}
