/**
 * PKI fixture builder for certgate's tests: CAs, server and client
 * certificates, CRLs, all made with the `openssl` CLI.
 *
 * Only asynchronous child processes are used: a synchronous one
 * (`execFileSync`) blocks the event loop of a test process that also hosts
 * the SMTP/HTTP server under test, which then deadlocks.
 *
 * Every certificate is signed with `openssl ca` (CAs with `-selfsign`)
 * because OpenSSL 3.0 (Debian 12) has no `-not_before/-not_after` on
 * `openssl x509 -req`; `openssl ca -startdate/-enddate` gives any dates,
 * including expired and not-yet-valid ones. Each signing runs in its own
 * directory with a fresh index, so concurrent calls do not race.
 *
 * Usage:
 *   const pki = await createPki();
 *   const alice = await pki.client({ cn: 'LAST.FIRST.1234567890', issuer: 'intermediate' });
 *   const crl = await pki.crl('intermediate', [{ serial: alice.serial }]);
 *   await pki.cleanup();
 */
import { execFile } from 'node:child_process';
import { X509Certificate, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

const OID_UPN = '1.3.6.1.4.1.311.20.2.3';
/** Usable in `subjectExtra` as `/testAttr=value`. */
export const OID_TEST_ATTR = '1.3.6.1.4.1.55555.1.1';

export type KeyType = 'ec' | 'rsa';
export type CaName = 'root' | 'intermediate' | 'foreign';
export type CaRef = CaName | CaHandle;

export interface Issued {
  certPem: string;
  keyPem: string;
  certPath: string;
  keyPath: string;
  /** The certificate followed by its issuers up to, not including, the self-signed root. */
  chainPem: string;
  /** As `openssl x509 -noout -serial` prints it (uppercase hex, whole bytes). */
  serial: string;
  x509: X509Certificate;
}

export interface CaHandle extends Issued {
  name: string;
  parent: CaHandle | null;
}

export interface CaOptions {
  /** A label for files and messages. */
  name: string;
  cn?: string;
  /** Full subject in openssl `-subj` syntax; overrides `cn`. */
  subject?: string;
  /** Issuing CA; null (default) makes a self-signed root. */
  issuer?: CaRef | null;
  serial?: string;
  notBefore?: Date;
  notAfter?: Date;
  keyType?: KeyType;
  /** basicConstraints pathlen. */
  pathLen?: number;
  /** openssl syntax; default `critical,keyCertSign,cRLSign`. */
  keyUsage?: string | null;
  /** openssl syntax; default `critical,CA:TRUE` (plus pathlen). */
  basicConstraints?: string;
  /** Sign the new certificate for this one's key (a renewed or cross-certified CA). */
  reuseKeyOf?: Issued;
}

export interface ServerOptions {
  cn?: string;
  dns?: string[];
  ip?: string[];
  issuer?: CaRef;
  serial?: string;
  notBefore?: Date;
  notAfter?: Date;
  keyType?: KeyType;
  /** Authority Information Access OCSP URL. */
  ocspUrl?: string;
}

export interface ClientOptions {
  /** Subject CN (escaped for `-subj` here, so filter-injection strings are fine); null: no CN. */
  cn?: string | null;
  /** rfc822Name of subjectAltName; null: none. */
  email?: string | null;
  /** Microsoft UPN otherName of subjectAltName; null: none. */
  upn?: string | null;
  issuer?: CaRef;
  /** Hex serial, e.g. '0A1B' or '80FF...'; default random. */
  serial?: string;
  notBefore?: Date;
  notAfter?: Date;
  /** openssl syntax; default 'critical,digitalSignature'; null: no keyUsage extension. */
  keyUsage?: string | null;
  /** openssl syntax; default 'clientAuth,emailProtection'; null: no extendedKeyUsage extension. */
  extendedKeyUsage?: string | null;
  /** Raw `-subj` components appended after the CN, e.g. '/emailAddress=a@b.c' or '/UID=jdoe'. */
  subjectExtra?: string;
  /** Raw `-subj` components put before the CN; default '/C=US/O=certgate test/OU=PKI'. */
  subjectBase?: string;
  keyType?: KeyType;
  /** Authority Information Access OCSP URL (any scheme: tests put in what they need). */
  ocspUrl?: string;
}

export interface RevokedEntry {
  serial: string;
  date?: Date;
  /** openssl reason name, e.g. 'keyCompromise', 'superseded'. */
  reason?: string;
}

export interface CrlOptions {
  /** Default: one more than the previous CRL of this CA (starting at 1); null: no cRLNumber extension. */
  crlNumber?: number | null;
  thisUpdate?: Date;
  /** Default thisUpdate + 1 day; may be in the past. */
  nextUpdate?: Date;
  format?: 'der' | 'pem';
  /** Digest, default sha256. */
  md?: 'sha256' | 'sha384' | 'sha512';
  /** openssl -sigopt values, e.g. ['rsa_padding_mode:pss', 'rsa_pss_saltlen:32'] (RSA CAs). */
  sigopt?: string[];
}

export interface BigCrl {
  der: Buffer;
  derPath: string;
  count: number;
  /** Serial of entry i (0 <= i < count), as openssl prints it. */
  serialAt(i: number): string;
  /** Seconds openssl took. */
  opensslSeconds: number;
}

export interface Pki {
  dir: string;
  root: CaHandle;
  intermediate: CaHandle;
  foreign: CaHandle;
  /** Another CA, e.g. an expired intermediate. */
  ca(opts: CaOptions): Promise<CaHandle>;
  server(opts?: ServerOptions): Promise<Issued>;
  client(opts?: ClientOptions): Promise<Issued>;
  crl(ca: CaRef, revoked: RevokedEntry[], opts?: CrlOptions): Promise<Buffer>;
  /** A CRL of `count` synthetic entries signed by `ca` (default intermediate), for benchmarks. */
  bigCrl(count: number, ca?: CaRef): Promise<BigCrl>;
  cleanup(): Promise<void>;
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

async function openssl(args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await execFileAsync('openssl', args, { cwd, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string };
    throw new Error(`openssl ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`, { cause: e });
  }
}

/** Escapes a value for openssl's `-subj` syntax (`/` and `+` separate, `\` escapes). */
export function subjValue(v: string): string {
  return v.replace(/[\\/+]/g, (c) => '\\' + c);
}

/** Escapes a value for an openssl config file (`$` expands, `#` comments, quotes and `\` are special). */
function cnfValue(v: string): string {
  return v.replace(/[\\$#"']/g, (c) => '\\' + c);
}

/** GeneralizedTime as openssl's -startdate/-enddate/-crl_* take it. */
function genTime(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').replace(/\.\d+Z$/, 'Z');
}

/** UTCTime as index.txt stores it. */
function utcTime(d: Date): string {
  return genTime(d).slice(2);
}

/** Serial in openssl's form: uppercase, even length, no redundant leading zero bytes. */
function normSerial(hex: string): string {
  let h = hex.replace(/^0x/i, '').toUpperCase();
  if (!/^[0-9A-F]+$/.test(h)) throw new Error(`bad serial "${hex}"`);
  if (h.length % 2) h = '0' + h;
  while (h.length > 2 && h.startsWith('00')) h = h.slice(2);
  return h;
}

function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = 0x10 + (b[0] % 0x70); // positive, no leading zero byte
  return b.toString('hex').toUpperCase();
}

function hour(n: number): Date {
  return new Date(Date.now() + n * 3600_000);
}

/** 32-bit integer hash (lowbias32), a bijection, so distinct inputs give distinct outputs. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

function hex8(n: number): string {
  return n.toString(16).toUpperCase().padStart(8, '0');
}

/** Deterministic 8-byte serials; about half start with a byte >= 0x80 (DER adds a 00 sign byte). */
function bigSerial(i: number): string {
  let hi = mix32(2 * i + 1);
  if (hi >>> 24 === 0) hi = (hi | 0x80000000) >>> 0;
  return hex8(hi) + hex8(mix32(2 * i + 2));
}

/** The authorityInfoAccess line for an OCSP URL, or nothing. */
function aia(ocspUrl: string | undefined): string[] {
  return ocspUrl === undefined ? [] : [`authorityInfoAccess = OCSP;URI:${cnfValue(ocspUrl)}`];
}

function pemToDer(pem: string, label: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`).exec(pem);
  if (!m) throw new Error(`no ${label} in openssl output`);
  return Buffer.from(m[1].replace(/\s+/g, ''), 'base64');
}

// ---------------------------------------------------------------------------
// the builder
// ---------------------------------------------------------------------------

export async function createPki(dirOrOpts?: string | { dir?: string; keyType?: KeyType }): Promise<Pki> {
  const opts = typeof dirOrOpts === 'string' ? { dir: dirOrOpts } : (dirOrOpts ?? {});
  const defaultKeyType: KeyType = opts.keyType ?? 'ec';
  if (opts.dir) await mkdir(opts.dir, { recursive: true });
  const dir = await mkdtemp(join(opts.dir ?? tmpdir(), 'certgate-pki-'));
  let seq = 0;
  const crlNumbers = new Map<string, number>();
  const reqCnf = join(dir, 'req.cnf');
  // `testAttr` lets tests put an attribute type without a standard short name into a subject.
  await writeFile(reqCnf, `oid_section = oids\n[oids]\ntestAttr = ${OID_TEST_ATTR}\n[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n`);

  async function newKey(path: string, keyType: KeyType): Promise<string> {
    const alg = keyType === 'rsa' ? ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'] : ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'];
    await openssl(['genpkey', ...alg, '-out', path]);
    return readFile(path, 'utf8');
  }

  /** A config for one `openssl ca` run in `work`, with extension section `ext`. */
  function caConfig(work: string, ext: string[], extra: string[] = []): string {
    return [
      '[ca]',
      'default_ca = CA_default',
      '[CA_default]',
      `database = ${work}/index.txt`,
      `new_certs_dir = ${work}`,
      `serial = ${work}/serial`,
      'default_md = sha256',
      'default_days = 365',
      'policy = policy_any',
      'unique_subject = no',
      'email_in_dn = yes',
      'copy_extensions = none',
      ...extra,
      '[policy_any]',
      'countryName = optional',
      '[ext]',
      ...ext,
      '',
    ].join('\n');
  }

  function resolveCa(ref: CaRef): CaHandle {
    if (typeof ref !== 'string') return ref;
    return { root: pki.root, intermediate: pki.intermediate, foreign: pki.foreign }[ref];
  }

  /** Key, CSR and `openssl ca` signature; returns the issued certificate. */
  async function issue(p: {
    label: string;
    subject: string;
    issuer: CaHandle | null;
    serial?: string;
    notBefore?: Date;
    notAfter?: Date;
    keyType: KeyType;
    ext: string[];
    reuseKeyOf?: Issued;
  }): Promise<Issued> {
    const work = join(dir, `${String(++seq).padStart(3, '0')}-${p.label.replace(/[^A-Za-z0-9_.-]/g, '_')}`);
    await mkdir(work);
    const keyPath = join(work, 'key.pem');
    const csrPath = join(work, 'req.csr');
    const certPath = join(work, 'cert.pem');
    const cnfPath = join(work, 'ca.cnf');
    const serial = normSerial(p.serial ?? randomSerial());
    let keyPem: string;
    if (p.reuseKeyOf) {
      keyPem = p.reuseKeyOf.keyPem;
      await writeFile(keyPath, keyPem, { mode: 0o600 });
    } else {
      keyPem = await newKey(keyPath, p.keyType);
    }
    await openssl(['req', '-new', '-config', reqCnf, '-utf8', '-key', keyPath, '-subj', p.subject, '-out', csrPath]);
    await writeFile(join(work, 'index.txt'), '');
    await writeFile(join(work, 'serial'), serial + '\n');
    await writeFile(cnfPath, caConfig(work, p.ext));
    const signer = p.issuer ? ['-keyfile', p.issuer.keyPath, '-cert', p.issuer.certPath] : ['-keyfile', keyPath, '-selfsign'];
    await openssl([
      'ca', '-batch', '-notext', '-utf8', '-preserveDN', '-config', cnfPath, '-extensions', 'ext', ...signer,
      '-startdate', genTime(p.notBefore ?? hour(-1)),
      '-enddate', genTime(p.notAfter ?? hour(24 * 365)),
      '-in', csrPath, '-out', certPath,
    ]);
    const certPem = await readFile(certPath, 'utf8');
    const x509 = new X509Certificate(certPem);
    const issuerChain = p.issuer && p.issuer.parent ? p.issuer.chainPem : '';
    return { certPem, keyPem, certPath, keyPath, chainPem: certPem + issuerChain, serial, x509 };
  }

  async function ca(o: CaOptions): Promise<CaHandle> {
    const issuer = o.issuer ? resolveCa(o.issuer) : null;
    const bc = o.basicConstraints ?? `critical,CA:TRUE${o.pathLen !== undefined ? `,pathlen:${o.pathLen}` : ''}`;
    const ext = [`basicConstraints = ${bc}`, 'subjectKeyIdentifier = hash'];
    if (issuer) ext.push('authorityKeyIdentifier = keyid:always');
    const ku = o.keyUsage === undefined ? 'critical,keyCertSign,cRLSign' : o.keyUsage;
    if (ku) ext.push(`keyUsage = ${ku}`);
    const issued = await issue({
      label: o.name,
      subject: o.subject ?? `/C=US/O=certgate test/CN=${subjValue(o.cn ?? o.name)}`,
      issuer,
      serial: o.serial,
      notBefore: o.notBefore ?? hour(-24),
      notAfter: o.notAfter ?? hour(24 * 3650),
      keyType: o.keyType ?? defaultKeyType,
      ext,
      reuseKeyOf: o.reuseKeyOf,
    });
    // A root's chainPem is empty by definition (chains stop before the root).
    const handle: CaHandle = { ...issued, chainPem: issuer ? issued.chainPem : '', name: o.name, parent: issuer };
    return handle;
  }

  async function server(o: ServerOptions = {}): Promise<Issued> {
    const cn = o.cn ?? 'gateway.example.com';
    const dns = o.dns ?? ['localhost'];
    const ip = o.ip ?? ['127.0.0.1'];
    const alt = [cn, ...dns].map((d, i) => `DNS.${i + 1} = ${cnfValue(d)}`).concat(ip.map((a, i) => `IP.${i + 1} = ${cnfValue(a)}`));
    return issue({
      label: `server-${cn}`,
      subject: `/C=US/O=certgate test/CN=${subjValue(cn)}`,
      issuer: resolveCa(o.issuer ?? 'root'),
      serial: o.serial,
      notBefore: o.notBefore,
      notAfter: o.notAfter,
      keyType: o.keyType ?? defaultKeyType,
      ext: [
        'basicConstraints = critical,CA:FALSE',
        'keyUsage = critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage = serverAuth',
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid',
        ...aia(o.ocspUrl),
        'subjectAltName = @alt',
        '[alt]',
        ...alt,
      ],
    });
  }

  async function client(o: ClientOptions = {}): Promise<Issued> {
    const cn = o.cn === undefined ? 'LAST.FIRST.1234567890' : o.cn;
    const email = o.email === undefined ? 'first.last@example.mil' : o.email;
    const upn = o.upn === undefined ? '1234567890@mil' : o.upn;
    const ku = o.keyUsage === undefined ? 'critical,digitalSignature' : o.keyUsage;
    const eku = o.extendedKeyUsage === undefined ? 'clientAuth,emailProtection' : o.extendedKeyUsage;
    const ext = ['basicConstraints = CA:FALSE', 'subjectKeyIdentifier = hash', 'authorityKeyIdentifier = keyid'];
    if (ku) ext.push(`keyUsage = ${ku}`);
    if (eku) ext.push(`extendedKeyUsage = ${eku}`);
    ext.push(...aia(o.ocspUrl));
    const alt: string[] = [];
    if (email !== null) alt.push(`email.1 = ${cnfValue(email)}`);
    if (upn !== null) alt.push(`otherName.1 = ${OID_UPN};FORMAT:UTF8,UTF8:${cnfValue(upn)}`);
    if (alt.length) ext.push('subjectAltName = @alt', '[alt]', ...alt);
    const base = o.subjectBase ?? '/C=US/O=certgate test/OU=PKI';
    const subject = base + (cn === null ? '' : `/CN=${subjValue(cn)}`) + (o.subjectExtra ?? '');
    return issue({
      label: `client-${cn ?? 'nocn'}`,
      subject,
      issuer: resolveCa(o.issuer ?? 'root'),
      serial: o.serial,
      notBefore: o.notBefore,
      notAfter: o.notAfter,
      keyType: o.keyType ?? defaultKeyType,
      ext,
    });
  }

  /** `openssl ca -gencrl` over the given index lines. */
  async function gencrl(issuer: CaHandle, indexLines: string, o: { crlNumber: number | null; thisUpdate?: Date; nextUpdate?: Date; label: string; md?: string; sigopt?: string[] }): Promise<{ pem: string; seconds: number }> {
    const work = join(dir, `${String(++seq).padStart(3, '0')}-crl-${o.label}`);
    await mkdir(work);
    const cnfPath = join(work, 'ca.cnf');
    const extra: string[] = [];
    if (o.crlNumber !== null) {
      let h = o.crlNumber.toString(16).toUpperCase();
      if (h.length % 2) h = '0' + h;
      await writeFile(join(work, 'crlnumber'), h + '\n');
      extra.push(`crlnumber = ${work}/crlnumber`);
    }
    await writeFile(join(work, 'index.txt'), indexLines);
    await writeFile(join(work, 'serial'), '01\n');
    await writeFile(cnfPath, caConfig(work, ['authorityKeyIdentifier = keyid:always'], extra));
    const thisUpdate = o.thisUpdate ?? new Date();
    const nextUpdate = o.nextUpdate ?? new Date(thisUpdate.getTime() + 24 * 3600_000);
    const out = join(work, 'crl.pem');
    const t0 = performance.now();
    await openssl([
      'ca', '-gencrl', '-batch', '-config', cnfPath, '-keyfile', issuer.keyPath, '-cert', issuer.certPath,
      '-crlexts', 'ext', '-md', o.md ?? 'sha256', ...(o.sigopt ?? []).flatMap((v) => ['-sigopt', v]),
      '-crl_lastupdate', genTime(thisUpdate), '-crl_nextupdate', genTime(nextUpdate), '-out', out,
    ]);
    const seconds = (performance.now() - t0) / 1000;
    return { pem: await readFile(out, 'utf8'), seconds };
  }

  async function crl(caRef: CaRef, revoked: RevokedEntry[], o: CrlOptions = {}): Promise<Buffer> {
    const issuer = resolveCa(caRef);
    let crlNumber: number | null;
    if (o.crlNumber === null) crlNumber = null;
    else {
      crlNumber = o.crlNumber ?? (crlNumbers.get(issuer.name) ?? 0) + 1;
      crlNumbers.set(issuer.name, Math.max(crlNumber, crlNumbers.get(issuer.name) ?? 0));
    }
    const lines = revoked
      .map((r) => `R\t491231235959Z\t${utcTime(r.date ?? hour(-1))}${r.reason ? ',' + r.reason : ''}\t${normSerial(r.serial)}\tunknown\t/CN=x\n`)
      .join('');
    const { pem } = await gencrl(issuer, lines, { crlNumber, thisUpdate: o.thisUpdate, nextUpdate: o.nextUpdate, label: issuer.name, md: o.md, sigopt: o.sigopt });
    return (o.format ?? 'der') === 'pem' ? Buffer.from(pem) : pemToDer(pem, 'X509 CRL');
  }

  async function bigCrl(count: number, caRef: CaRef = 'intermediate'): Promise<BigCrl> {
    const issuer = resolveCa(caRef);
    const parts: string[] = [];
    const revokedAt = utcTime(hour(-24));
    for (let i = 0; i < count; i++) parts.push(`R\t491231235959Z\t${revokedAt}\t${bigSerial(i)}\tunknown\t/CN=x\n`);
    const { pem, seconds } = await gencrl(issuer, parts.join(''), { crlNumber: 1000, label: `big-${count}` });
    const der = pemToDer(pem, 'X509 CRL');
    const derPath = join(dir, `big-${count}.crl`);
    await writeFile(derPath, der);
    return { der, derPath, count, serialAt: bigSerial, opensslSeconds: seconds };
  }

  const pki: Pki = {
    dir,
    root: undefined as unknown as CaHandle,
    intermediate: undefined as unknown as CaHandle,
    foreign: undefined as unknown as CaHandle,
    ca,
    server,
    client,
    crl,
    bigCrl,
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
  const [root, foreign] = await Promise.all([
    ca({ name: 'root', subject: '/C=US/O=certgate test/CN=Test Root CA' }),
    ca({ name: 'foreign', subject: '/C=US/O=Elsewhere/CN=Foreign Root CA' }),
  ]);
  pki.root = root;
  pki.foreign = foreign;
  pki.intermediate = await ca({ name: 'intermediate', subject: '/C=US/O=certgate test/CN=Test Intermediate CA', issuer: root, pathLen: 0 });
  return pki;
}

