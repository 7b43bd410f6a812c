// The parts of an X.509 certificate that Node's X509Certificate does not give as values: the
// raw names, key identifiers, the UPN otherName and the first rfc822Name of subjectAltName
// (Node 20's `subjectAltName` string shows both, `othername:UPN:jdoe@mil, email:...`, but
// quotes values holding a comma or quote with JSON escapes, so reading them back would need a
// parser of that format; the DER gives the same answer directly), and the facts that query
// tokens and events use. Chains are verified by OpenSSL in the TLS handshake
// (shared/pki/verify.ts maps its verdict), not here.
import { X509Certificate, createHash } from 'node:crypto';
import { DerError, TAG, children, decodeOid, decodeTime, expectTlv, hex2, readTlv, type Tlv } from './der.ts';
import { OID_CN, OID_EMAIL_ADDRESS, canonicalName, decodeDirectoryString, formatName, nameValues } from './names.ts';

export interface Extension {
  critical: boolean;
  /** Content of extnValue (the DER of the extension itself). */
  value: Buffer;
}

export interface ParsedCertificate {
  der: Buffer;
  /** Content octets of the serial INTEGER. */
  serialBytes: Buffer;
  issuerName: Buffer;
  subjectName: Buffer;
  notBefore: Date;
  notAfter: Date;
  extensions: Map<string, Extension>;
}

/** Extensions ::= SEQUENCE OF Extension (shared by certificates and CRLs). */
export function parseExtensions(buf: Buffer, seq: Tlv): Map<string, Extension> {
  if (seq.tag !== TAG.SEQUENCE) throw new DerError(`Extensions: expected SEQUENCE at offset ${seq.start}`);
  const out = new Map<string, Extension>();
  for (const ext of children(buf, seq)) {
    if (ext.tag !== TAG.SEQUENCE) throw new DerError(`Extension: expected SEQUENCE at offset ${ext.start}`);
    const parts = children(buf, ext);
    if (parts.length < 2 || parts.length > 3) throw new DerError(`Extension at offset ${ext.start} has ${parts.length} parts`);
    const oid = decodeOid(buf, parts[0]);
    let critical = false;
    if (parts.length === 3) {
      if (parts[1].tag !== TAG.BOOLEAN || parts[1].end - parts[1].contentStart !== 1) throw new DerError(`Extension ${oid}: bad critical flag`);
      critical = buf[parts[1].contentStart] !== 0;
    }
    const value = parts[parts.length - 1];
    if (value.tag !== TAG.OCTET_STRING) throw new DerError(`Extension ${oid}: extnValue is not an OCTET STRING`);
    // RFC 5280 4.2: a certificate must not include more than one instance of an extension.
    if (out.has(oid)) throw new DerError(`duplicate extension ${oid}`);
    out.set(oid, { critical, value: buf.subarray(value.contentStart, value.end) });
  }
  return out;
}

/** The parts of a certificate Node does not expose (or exposes lossily). */
export function parseCertificateDer(der: Buffer): ParsedCertificate {
  const cert = expectTlv(der, 0, der.length, TAG.SEQUENCE, 'Certificate');
  if (cert.end !== der.length) throw new DerError('trailing data after certificate');
  const [tbs] = children(der, cert);
  if (!tbs || tbs.tag !== TAG.SEQUENCE) throw new DerError('Certificate: missing TBSCertificate');
  const f = children(der, tbs);
  let i = 0;
  if (f[i]?.tag === 0xa0) i++; // [0] EXPLICIT version
  const serial = f[i++];
  const _sigAlg = f[i++];
  const issuer = f[i++];
  const validity = f[i++];
  const subject = f[i++];
  const _spki = f[i++];
  if (!serial || serial.tag !== TAG.INTEGER) throw new DerError('TBSCertificate: missing serial number');
  if (!issuer || !subject || !validity || validity.tag !== TAG.SEQUENCE) throw new DerError('TBSCertificate: truncated');
  const times = children(der, validity);
  if (times.length !== 2) throw new DerError('Validity must hold two times');
  let extensions = new Map<string, Extension>();
  for (; i < f.length; i++) {
    if (f[i].tag === 0xa3) {
      const inner = readTlv(der, f[i].contentStart, f[i].end);
      if (inner.end !== f[i].end) throw new DerError('trailing data in [3] extensions');
      extensions = parseExtensions(der, inner);
    } else if (f[i].tag !== 0x81 && f[i].tag !== 0x82 && f[i].tag !== 0xa1 && f[i].tag !== 0xa2) {
      throw new DerError(`TBSCertificate: unexpected element tag 0x${hex2(f[i].tag)}`);
    }
  }
  const serialBytes = der.subarray(serial.contentStart, serial.end);
  if (serialBytes.length === 0) throw new DerError('empty serial number');
  return {
    der,
    serialBytes,
    issuerName: der.subarray(issuer.start, issuer.end),
    subjectName: der.subarray(subject.start, subject.end),
    notBefore: decodeTime(der, times[0]),
    notAfter: decodeTime(der, times[1]),
    extensions,
  };
}

// Extension OIDs we read or knowingly accept.
export const OID = {
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  issuerAltName: '2.5.29.18',
  basicConstraints: '2.5.29.19',
  cRLNumber: '2.5.29.20',
  reasonCode: '2.5.29.21',
  invalidityDate: '2.5.29.24',
  deltaCRLIndicator: '2.5.29.27',
  issuingDistributionPoint: '2.5.29.28',
  certificateIssuer: '2.5.29.29',
  nameConstraints: '2.5.29.30',
  cRLDistributionPoints: '2.5.29.31',
  certificatePolicies: '2.5.29.32',
  policyMappings: '2.5.29.33',
  authorityKeyIdentifier: '2.5.29.35',
  policyConstraints: '2.5.29.36',
  extKeyUsage: '2.5.29.37',
  freshestCRL: '2.5.29.46',
  inhibitAnyPolicy: '2.5.29.54',
  authorityInfoAccess: '1.3.6.1.5.5.7.1.1',
  subjectInfoAccess: '1.3.6.1.5.5.7.1.11',
  upn: '1.3.6.1.4.1.311.20.2.3',
  ekuClientAuth: '1.3.6.1.5.5.7.3.2',
  ekuOcspSigning: '1.3.6.1.5.5.7.3.9',
  ekuAny: '2.5.29.37.0',
} as const;

/** Key usage bits as an integer: bit 0 (value 1) = digitalSignature ... bit 8 = decipherOnly. */
export const KU = { cRLSign: 1 << 6 } as const;

function parseKeyUsage(v: Buffer): number {
  const t = expectTlv(v, 0, v.length, TAG.BIT_STRING, 'keyUsage');
  if (t.end !== v.length || t.end - t.contentStart < 1) throw new DerError('keyUsage: malformed');
  let bits = 0;
  for (let i = t.contentStart + 1, bit = 0; i < t.end && bit < 16; i++) {
    for (let m = 0x80; m; m >>= 1, bit++) if (v[i] & m) bits |= 1 << bit;
  }
  return bits;
}

/** The cA flag of basicConstraints (the path length is OpenSSL's to enforce, in the handshake). */
function parseBasicConstraintsCa(v: Buffer): boolean {
  const t = expectTlv(v, 0, v.length, TAG.SEQUENCE, 'basicConstraints');
  if (t.end !== v.length) throw new DerError('basicConstraints: trailing data');
  let ca = false;
  for (const c of children(v, t)) {
    if (c.tag === TAG.BOOLEAN && c.end - c.contentStart === 1) ca = v[c.contentStart] !== 0;
    else if (c.tag !== TAG.INTEGER) throw new DerError('basicConstraints: malformed');
  }
  return ca;
}

function parseKeyIdentifier(v: Buffer): string {
  const t = expectTlv(v, 0, v.length, TAG.OCTET_STRING, 'subjectKeyIdentifier');
  if (t.end !== v.length) throw new DerError('subjectKeyIdentifier: trailing data');
  return v.subarray(t.contentStart, t.end).toString('hex').toUpperCase();
}

/** keyIdentifier ([0]) of an AuthorityKeyIdentifier extension value, or null if absent. */
export function parseAuthorityKeyId(v: Buffer): string | null {
  const t = expectTlv(v, 0, v.length, TAG.SEQUENCE, 'authorityKeyIdentifier');
  if (t.end !== v.length) throw new DerError('authorityKeyIdentifier: trailing data');
  for (const c of children(v, t)) {
    if (c.tag === 0x80) return v.subarray(c.contentStart, c.end).toString('hex').toUpperCase();
  }
  return null;
}

/** First rfc822Name and first UPN otherName of a GeneralNames value. */
function parseSubjectAltName(v: Buffer): { email: string | null; upn: string | null } {
  const t = expectTlv(v, 0, v.length, TAG.SEQUENCE, 'subjectAltName');
  if (t.end !== v.length) throw new DerError('subjectAltName: trailing data');
  let email: string | null = null;
  let upn: string | null = null;
  for (const gn of children(v, t)) {
    if (gn.tag === 0x81 && email === null) {
      // rfc822Name [1] IMPLICIT IA5String: ASCII only (internationalised
      // mailboxes use the SmtpUTF8Mailbox otherName instead).
      const c = v.subarray(gn.contentStart, gn.end);
      if (c.some((b) => b > 0x7f)) throw new DerError('subjectAltName: non-ASCII rfc822Name');
      email = c.toString('latin1');
    } else if (gn.tag === 0xa0 && upn === null) {
      // otherName [0] IMPLICIT SEQUENCE { type-id OID, value [0] EXPLICIT ANY }
      const parts = children(v, gn);
      if (parts.length !== 2 || parts[1].tag !== 0xa0) throw new DerError('subjectAltName: malformed otherName');
      if (decodeOid(v, parts[0]) !== OID.upn) continue;
      const inner = readTlv(v, parts[1].contentStart, parts[1].end);
      if (inner.tag !== TAG.UTF8_STRING || inner.end !== parts[1].end) throw new DerError('subjectAltName: UPN is not a UTF8String');
      upn = decodeDirectoryString(v, inner);
    }
  }
  return { email, upn };
}

// ---------------------------------------------------------------------------
// Per-certificate facts (cached per object: CRL checks and signer searches ask about the same
// long-lived X509Certificate objects repeatedly).
// ---------------------------------------------------------------------------

interface CertInfo {
  parsed: ParsedCertificate;
  fingerprint: string;
  isCa: boolean;
  keyUsage: number | null;
  subjectKeyId: string | null;
  authorityKeyId: string | null;
  subjectCanon: string;
  issuerCanon: string;
}

const infoCache = new WeakMap<X509Certificate, CertInfo>();

export function certInfo(cert: X509Certificate): CertInfo {
  const cached = infoCache.get(cert);
  if (cached) return cached;
  const parsed = parseCertificateDer(cert.raw);
  const ext = parsed.extensions;
  const bc = ext.get(OID.basicConstraints);
  const ca = bc ? parseBasicConstraintsCa(bc.value) : false;
  const ku = ext.get(OID.keyUsage);
  const ski = ext.get(OID.subjectKeyIdentifier);
  const aki = ext.get(OID.authorityKeyIdentifier);
  const subjectCanon = canonicalName(parsed.der, nameTlvAt(parsed.der, parsed.subjectName));
  const issuerCanon = canonicalName(parsed.der, nameTlvAt(parsed.der, parsed.issuerName));
  const info: CertInfo = {
    parsed,
    fingerprint: createHash('sha256').update(parsed.der).digest('hex').toUpperCase(),
    isCa: ca,
    keyUsage: ku ? parseKeyUsage(ku.value) : null,
    subjectKeyId: ski ? parseKeyIdentifier(ski.value) : null,
    authorityKeyId: aki ? parseAuthorityKeyId(aki.value) : null,
    subjectCanon,
    issuerCanon,
  };
  infoCache.set(cert, info);
  return info;
}

/** The Tlv of a Name that is a subarray of `der`. */
function nameTlvAt(der: Buffer, name: Buffer): Tlv {
  return readTlv(der, name.byteOffset - der.byteOffset, der.length);
}

// ---------------------------------------------------------------------------
// Public API: the facts of a certificate
// ---------------------------------------------------------------------------

export interface CertificateFacts {
  der: Buffer;
  subjectCn: string | null;
  serial: string;
  subjectDn: string;
  issuerDn: string;
  /** The issuer's RDNs in reverse (X.500, DER) order, as AD's altSecurityIdentities `X509:<I>` writes them. */
  issuerDnReversed: string;
  /** subjectKeyIdentifier, uppercase hex; null without the extension. */
  subjectKeyId: string | null;
  email: string | null;
  upn: string | null;
  fingerprint: string;
  notBefore: Date;
  notAfter: Date;
}

function toX509(cert: X509Certificate | Buffer): X509Certificate {
  if (cert instanceof X509Certificate) return cert;
  try {
    return new X509Certificate(cert);
  } catch (e) {
    throw new Error(`not a certificate: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The facts the query tokens and the event log need. The subject CN and
 * emailAddress are the most specific ones when a name carries several.
 * Throws when the certificate's names or subjectAltName cannot be decoded.
 */
export function certificateFacts(cert: X509Certificate | Buffer): CertificateFacts {
  const x = toX509(cert);
  const info = certInfo(x);
  const { der } = info.parsed;
  const subject = nameTlvAt(der, info.parsed.subjectName);
  const issuer = nameTlvAt(der, info.parsed.issuerName);
  const san = info.parsed.extensions.get(OID.subjectAltName);
  const alt = san ? parseSubjectAltName(san.value) : { email: null, upn: null };
  return {
    der,
    subjectCn: nameValues(der, subject, OID_CN)[0] ?? null,
    serial: x.serialNumber,
    subjectDn: formatName(der, subject),
    issuerDn: formatName(der, issuer),
    issuerDnReversed: formatName(der, issuer, 'x500'),
    subjectKeyId: info.subjectKeyId,
    email: alt.email ?? nameValues(der, subject, OID_EMAIL_ADDRESS)[0] ?? null,
    upn: alt.upn,
    fingerprint: info.fingerprint,
    notBefore: info.parsed.notBefore,
    notAfter: info.parsed.notAfter,
  };
}
