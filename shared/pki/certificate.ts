/**
 * Client-certificate handling for certgate.
 *
 * Node's `X509Certificate` (OpenSSL underneath) parses and verifies, but it
 * renders names in OpenSSL's multi-line format, strips leading zeros from
 * serials and does not expose subjectAltName otherNames (the UPN of CAC/PIV
 * cards) or the raw Name DER. So this module carries a small, strict DER
 * reader and extracts those facts from the certificate bytes itself. The same
 * reader (and the Name formatting) is used by `crl.ts`.
 *
 * Everything here fails closed: bytes we cannot parse are an error, never a
 * default value.
 */
import { X509Certificate, createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';

// ---------------------------------------------------------------------------
// DER reader
// ---------------------------------------------------------------------------

/** Thrown for anything that is not well-formed DER of the expected shape. */
export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DerError';
  }
}

/** One tag-length-value element, as offsets into the buffer it was read from. */
export interface Tlv {
  /** Identifier octet (class, constructed bit and tag number < 31). */
  tag: number;
  /** Offset of the identifier octet. */
  start: number;
  /** Offset of the first content octet. */
  contentStart: number;
  /** Offset just past the last content octet. */
  end: number;
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  SEQUENCE: 0x30,
  SET: 0x31,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
} as const;

/**
 * Reads the TLV at `pos`, which must end at or before `limit`. Only DER is
 * accepted: no indefinite lengths, no high tag numbers, lengths up to 4 bytes
 * (a 4 GB element is far beyond anything we handle).
 */
export function readTlv(buf: Uint8Array, pos: number, limit: number): Tlv {
  if (pos + 2 > limit) throw new DerError(`truncated: element header at offset ${pos} runs past the end`);
  const tag = buf[pos];
  if ((tag & 0x1f) === 0x1f) throw new DerError(`unsupported high tag number at offset ${pos}`);
  let len = buf[pos + 1];
  let contentStart = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError(`indefinite length at offset ${pos} (BER, not DER)`);
    if (n > 4) throw new DerError(`length of ${n} bytes at offset ${pos} is too large`);
    if (contentStart + n > limit) throw new DerError(`truncated: length field at offset ${pos} runs past the end`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[contentStart + i];
    contentStart += n;
  }
  const end = contentStart + len;
  if (end > limit) throw new DerError(`truncated: element at offset ${pos} needs ${len} bytes, ${limit - contentStart} remain`);
  return { tag, start: pos, contentStart, end };
}

/** Reads a TLV and insists on its tag. */
export function expectTlv(buf: Uint8Array, pos: number, limit: number, tag: number, what: string): Tlv {
  const t = readTlv(buf, pos, limit);
  if (t.tag !== tag) {
    throw new DerError(`${what}: expected tag 0x${hex2(tag)}, found 0x${hex2(t.tag)} at offset ${pos}`);
  }
  return t;
}

/** The children of a constructed element, in order. */
export function children(buf: Uint8Array, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let p = parent.contentStart; p < parent.end; ) {
    const t = readTlv(buf, p, parent.end);
    out.push(t);
    p = t.end;
  }
  return out;
}

export function contentOf(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.contentStart, t.end);
}

function hex2(n: number): string {
  return (n < 16 ? '0' : '') + n.toString(16).toUpperCase();
}

/** Dotted-decimal OID from the content of an OBJECT IDENTIFIER. */
export function decodeOid(buf: Uint8Array, t: Tlv): string {
  if (t.tag !== TAG.OID) throw new DerError(`expected OBJECT IDENTIFIER at offset ${t.start}`);
  if (t.end === t.contentStart) throw new DerError(`empty OBJECT IDENTIFIER at offset ${t.start}`);
  const arcs: string[] = [];
  let value = 0n;
  let small = 0;
  let useBig = false;
  let first = true;
  for (let i = t.contentStart; i < t.end; i++) {
    const b = buf[i];
    // Arcs of CA-issued OIDs fit in a double; UUID-style arcs need BigInt.
    if (!useBig && small > 2 ** 45) {
      useBig = true;
      value = BigInt(small);
    }
    if (useBig) value = (value << 7n) | BigInt(b & 0x7f);
    else small = small * 128 + (b & 0x7f);
    if (b & 0x80) {
      if (i === t.end - 1) throw new DerError(`truncated OBJECT IDENTIFIER at offset ${t.start}`);
      continue;
    }
    const arc = useBig ? value : BigInt(small);
    if (first) {
      const top = arc < 40n ? 0n : arc < 80n ? 1n : 2n;
      arcs.push(top.toString(), (arc - top * 40n).toString());
      first = false;
    } else {
      arcs.push(arc.toString());
    }
    small = 0;
    value = 0n;
    useBig = false;
  }
  return arcs.join('.');
}

/** Date from a UTCTime or GeneralizedTime element; RFC 5280 forms only (seconds, `Z`). */
export function decodeTime(buf: Uint8Array, t: Tlv): Date {
  const s = Buffer.from(buf.buffer, buf.byteOffset + t.contentStart, t.end - t.contentStart).toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (t.tag === TAG.UTC_TIME) {
    m = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s);
    if (!m) throw new DerError(`malformed UTCTime "${s}"`);
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (t.tag === TAG.GENERALIZED_TIME) {
    m = /^(\d\d\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(s);
    if (!m) throw new DerError(`malformed GeneralizedTime "${s}"`);
    year = Number(m[1]);
  } else {
    throw new DerError(`expected a time at offset ${t.start}, found tag 0x${hex2(t.tag)}`);
  }
  const [mo, d, h, mi, se] = [m[2], m[3], m[4], m[5], m[6]].map(Number);
  const ms = Date.UTC(year, mo - 1, d, h, mi, se);
  const date = new Date(ms);
  // Date.UTC silently rolls 31 Feb into March; a time that does not round-trip is malformed.
  if (date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d || date.getUTCHours() !== h || date.getUTCMinutes() !== mi || date.getUTCSeconds() !== se) {
    throw new DerError(`invalid date "${s}"`);
  }
  return date;
}

// ---------------------------------------------------------------------------
// Serial numbers
// ---------------------------------------------------------------------------

/**
 * The serial as `openssl x509 -noout -serial` prints it: uppercase hex of
 * whole bytes with the DER sign byte dropped. A (non-conforming) negative
 * serial prints as `-` and its magnitude, as OpenSSL does.
 */
export function serialHexFromDer(content: Uint8Array): string {
  if (content.length === 0) throw new DerError('empty INTEGER');
  if (content[0] & 0x80) {
    let v = BigInt('0x' + Buffer.from(content).toString('hex'));
    v = (1n << BigInt(content.length * 8)) - v;
    let h = v.toString(16).toUpperCase();
    if (h.length % 2) h = '0' + h;
    return '-' + h;
  }
  let i = 0;
  while (i < content.length - 1 && content[i] === 0) i++;
  return Buffer.from(content.buffer, content.byteOffset + i, content.length - i).toString('hex').toUpperCase();
}

// ---------------------------------------------------------------------------
// Names (RFC 4514)
// ---------------------------------------------------------------------------

/**
 * Short names: RFC 4514's own table first, then the names OpenSSL prints, so
 * that `{s}`/`{i}` equal `openssl x509 -nameopt RFC2253` for usual names.
 */
const SHORT_NAMES: Record<string, string> = {
  '2.5.4.3': 'CN',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.6': 'C',
  '2.5.4.9': 'STREET',
  '0.9.2342.19200300.100.1.25': 'DC',
  '0.9.2342.19200300.100.1.1': 'UID',
  '2.5.4.4': 'SN',
  '2.5.4.5': 'serialNumber',
  '2.5.4.12': 'title',
  '2.5.4.13': 'description',
  '2.5.4.15': 'businessCategory',
  '2.5.4.17': 'postalCode',
  '2.5.4.42': 'GN',
  '2.5.4.43': 'initials',
  '2.5.4.44': 'generationQualifier',
  '2.5.4.46': 'dnQualifier',
  '2.5.4.65': 'pseudonym',
  '2.5.4.97': 'organizationIdentifier',
  '1.2.840.113549.1.9.1': 'emailAddress',
};

export const OID_CN = '2.5.4.3';
export const OID_EMAIL_ADDRESS = '1.2.840.113549.1.9.1';

const utf8Fatal = new TextDecoder('utf-8', { fatal: true });

/** The text of a directory string, or null if the element is not a string type we decode. */
export function decodeDirectoryString(buf: Buffer, t: Tlv): string | null {
  const c = buf.subarray(t.contentStart, t.end);
  switch (t.tag) {
    case 0x0c: // UTF8String
      try {
        return utf8Fatal.decode(c);
      } catch {
        throw new DerError(`invalid UTF-8 in UTF8String at offset ${t.start}`);
      }
    case 0x12: // NumericString
    case 0x13: // PrintableString
    case 0x16: // IA5String
    case 0x1a: // VisibleString
    case 0x14: // TeletexString: OpenSSL treats it as Latin-1, so do we
      return c.toString('latin1');
    case 0x1e: // BMPString (UTF-16BE)
      if (c.length % 2) throw new DerError(`odd-length BMPString at offset ${t.start}`);
      return Buffer.from(c).swap16().toString('utf16le');
    case 0x1c: {
      // UniversalString (UTF-32BE)
      if (c.length % 4) throw new DerError(`bad UniversalString length at offset ${t.start}`);
      let s = '';
      for (let i = 0; i < c.length; i += 4) {
        const cp = c.readUInt32BE(i);
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw new DerError(`invalid code point in UniversalString at offset ${t.start}`);
        s += String.fromCodePoint(cp);
      }
      return s;
    }
    default:
      return null;
  }
}

/** RFC 4514 section 2.4 escaping (and control characters as \XX, as OpenSSL does). */
export function escapeRfc4514Value(v: string): string {
  let out = '';
  const chars = Array.from(v);
  for (let i = 0; i < chars.length; i++) {
    const ch = chars[i];
    const code = ch.codePointAt(0) ?? 0;
    if (',+"\\<>;'.includes(ch)) out += '\\' + ch;
    else if (i === 0 && (ch === '#' || ch === ' ')) out += '\\' + ch;
    else if (i === chars.length - 1 && ch === ' ') out += '\\ ';
    else if (code < 0x20 || code === 0x7f) out += '\\' + hex2(code);
    else out += ch;
  }
  return out;
}

interface Attribute {
  oid: string;
  /** The value element (full TLV). */
  value: Tlv;
}

/** Name ::= SEQUENCE OF RelativeDistinguishedName, in DER order (least specific first). */
function nameRdns(buf: Buffer, name: Tlv): Attribute[][] {
  if (name.tag !== TAG.SEQUENCE) throw new DerError(`Name: expected SEQUENCE at offset ${name.start}`);
  return children(buf, name).map((rdn) => {
    if (rdn.tag !== TAG.SET) throw new DerError(`RDN: expected SET at offset ${rdn.start}`);
    const atvs = children(buf, rdn).map((atv) => {
      if (atv.tag !== TAG.SEQUENCE) throw new DerError(`AttributeTypeAndValue: expected SEQUENCE at offset ${atv.start}`);
      const parts = children(buf, atv);
      if (parts.length !== 2) throw new DerError(`AttributeTypeAndValue at offset ${atv.start} has ${parts.length} parts`);
      return { oid: decodeOid(buf, parts[0]), value: parts[1] };
    });
    if (atvs.length === 0) throw new DerError(`empty RDN at offset ${rdn.start}`);
    return atvs;
  });
}

/**
 * RFC 4514 string of a DER Name: most specific RDN first, multi-valued RDNs
 * joined with `+`, unknown attribute types (and values that are not strings)
 * as `OID=#hex` of the value's DER. Like `openssl -nameopt RFC2253` (which
 * administrators use to fill directories), the members of a multi-valued RDN
 * are reversed too. Unlike it, non-ASCII characters stay UTF-8 (RFC 4514
 * allows it, and LDAP stores DNs that way) instead of becoming \XX escapes.
 */
export function formatName(buf: Buffer, name: Tlv): string {
  return nameRdns(buf, name)
    .reverse()
    .map((rdn) =>
      [...rdn]
        .reverse()
        .map(({ oid, value }) => {
          const short = SHORT_NAMES[oid];
          const text = short ? decodeDirectoryString(buf, value) : null;
          if (short && text !== null) return `${short}=${escapeRfc4514Value(text)}`;
          return `${short ?? oid}=#${buf.subarray(value.start, value.end).toString('hex').toUpperCase()}`;
        })
        .join('+'),
    )
    .join(',');
}

/**
 * A canonical form for comparing names the way X.500/OpenSSL do: string
 * values compared case-insensitively (ASCII) with whitespace trimmed and
 * collapsed, so a CA whose certificate says PrintableString still matches a
 * CRL that says UTF8String.
 */
export function canonicalName(buf: Buffer, name: Tlv): string {
  const rdns = nameRdns(buf, name).map((rdn) =>
    rdn.map(({ oid, value }) => {
      const text = decodeDirectoryString(buf, value);
      const v = text === null ? '#' + buf.subarray(value.start, value.end).toString('hex') : text.trim().replace(/\s+/g, ' ').replace(/[A-Z]/g, (c) => c.toLowerCase());
      return [oid, v];
    }),
  );
  return JSON.stringify(rdns);
}

/** Values of one attribute type, most specific first. */
function nameValues(buf: Buffer, name: Tlv, oid: string): string[] {
  const out: string[] = [];
  for (const rdn of nameRdns(buf, name).reverse()) {
    for (const atv of rdn) {
      if (atv.oid !== oid) continue;
      const text = decodeDirectoryString(buf, atv.value);
      if (text === null) throw new DerError(`attribute ${oid} is not a string`);
      out.push(text);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Certificate DER
// ---------------------------------------------------------------------------

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

/** A Name element parsed from a standalone Name DER buffer. */
export function nameTlv(nameDer: Buffer): Tlv {
  const t = expectTlv(nameDer, 0, nameDer.length, TAG.SEQUENCE, 'Name');
  if (t.end !== nameDer.length) throw new DerError('trailing data after Name');
  return t;
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
  ekuAny: '2.5.29.37.0',
} as const;

/**
 * Extensions a certificate may mark critical and still pass our validation.
 * Policy extensions are accepted without policy processing: the gateway does
 * not require any particular policy (RFC 5280's any-policy user). Name
 * constraints are *not* here: we do not enforce them, so a chain that carries
 * them critically is refused rather than half-checked.
 */
const HANDLED_CRITICAL = new Set<string>([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.issuerAltName,
  OID.subjectKeyIdentifier,
  OID.authorityKeyIdentifier,
  OID.certificatePolicies,
  OID.policyMappings,
  OID.policyConstraints,
  OID.inhibitAnyPolicy,
  OID.cRLDistributionPoints,
  OID.authorityInfoAccess,
  OID.subjectInfoAccess,
]);

/** Key usage bits as an integer: bit 0 (value 1) = digitalSignature ... bit 8 = decipherOnly. */
export const KU = { digitalSignature: 1 << 0, keyAgreement: 1 << 4, keyCertSign: 1 << 5, cRLSign: 1 << 6 } as const;

function parseKeyUsage(v: Buffer): number {
  const t = expectTlv(v, 0, v.length, TAG.BIT_STRING, 'keyUsage');
  if (t.end !== v.length || t.end - t.contentStart < 1) throw new DerError('keyUsage: malformed');
  let bits = 0;
  for (let i = t.contentStart + 1, bit = 0; i < t.end && bit < 16; i++) {
    for (let m = 0x80; m; m >>= 1, bit++) if (v[i] & m) bits |= 1 << bit;
  }
  return bits;
}

function parseBasicConstraints(v: Buffer): { ca: boolean; pathLen: number | null } {
  const t = expectTlv(v, 0, v.length, TAG.SEQUENCE, 'basicConstraints');
  if (t.end !== v.length) throw new DerError('basicConstraints: trailing data');
  let ca = false;
  let pathLen: number | null = null;
  for (const c of children(v, t)) {
    if (c.tag === TAG.BOOLEAN && c.end - c.contentStart === 1) ca = v[c.contentStart] !== 0;
    else if (c.tag === TAG.INTEGER && c.end - c.contentStart >= 1 && c.end - c.contentStart <= 4 && !(v[c.contentStart] & 0x80)) pathLen = v.readUIntBE(c.contentStart, c.end - c.contentStart);
    else throw new DerError('basicConstraints: malformed');
  }
  return { ca, pathLen };
}

function parseExtKeyUsage(v: Buffer): string[] {
  const t = expectTlv(v, 0, v.length, TAG.SEQUENCE, 'extKeyUsage');
  if (t.end !== v.length) throw new DerError('extKeyUsage: trailing data');
  return children(v, t).map((c) => decodeOid(v, c));
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
// Per-certificate facts (cached: the chain builder asks about the same
// certificates repeatedly, and X509Certificate objects are long-lived).
// ---------------------------------------------------------------------------

interface CertInfo {
  parsed: ParsedCertificate;
  fingerprint: string;
  isCa: boolean;
  pathLen: number | null;
  keyUsage: number | null;
  extKeyUsage: string[] | null;
  subjectKeyId: string | null;
  authorityKeyId: string | null;
  unhandledCritical: string[];
  selfIssued: boolean;
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
  const { ca, pathLen } = bc ? parseBasicConstraints(bc.value) : { ca: false, pathLen: null };
  const ku = ext.get(OID.keyUsage);
  const eku = ext.get(OID.extKeyUsage);
  const ski = ext.get(OID.subjectKeyIdentifier);
  const aki = ext.get(OID.authorityKeyIdentifier);
  const subjectCanon = canonicalName(parsed.der, nameTlvAt(parsed.der, parsed.subjectName));
  const issuerCanon = canonicalName(parsed.der, nameTlvAt(parsed.der, parsed.issuerName));
  const info: CertInfo = {
    parsed,
    fingerprint: createHash('sha256').update(parsed.der).digest('hex').toUpperCase(),
    isCa: ca,
    pathLen: ca ? pathLen : null,
    keyUsage: ku ? parseKeyUsage(ku.value) : null,
    extKeyUsage: eku ? parseExtKeyUsage(eku.value) : null,
    subjectKeyId: ski ? parseKeyIdentifier(ski.value) : null,
    authorityKeyId: aki ? parseAuthorityKeyId(aki.value) : null,
    unhandledCritical: [...ext].filter(([oid, e]) => e.critical && !HANDLED_CRITICAL.has(oid)).map(([oid]) => oid),
    selfIssued: subjectCanon === issuerCanon,
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
    serial: serialHexFromDer(info.parsed.serialBytes),
    subjectDn: formatName(der, subject),
    issuerDn: formatName(der, issuer),
    email: alt.email ?? nameValues(der, subject, OID_EMAIL_ADDRESS)[0] ?? null,
    upn: alt.upn,
    fingerprint: info.fingerprint,
    notBefore: info.parsed.notBefore,
    notAfter: info.parsed.notAfter,
  };
}

// ---------------------------------------------------------------------------
// PEM input
// ---------------------------------------------------------------------------

export interface PemBlock {
  label: string;
  der: Buffer;
}

/** Byte classes for PEM bodies: 1 base64 character, 2 white space, 3 `=`, 4 `:` (a header line). */
const PEM_BYTE = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') PEM_BYTE[c.charCodeAt(0)] = 1;
for (const c of ' \t\r\n') PEM_BYTE[c.charCodeAt(0)] = 2;
PEM_BYTE[0x3d] = 3;
PEM_BYTE[0x3a] = 4;

/**
 * Strict PEM reader: text outside blocks is allowed (bundles often carry
 * `subject=` lines), but every BEGIN needs its matching END and the body must
 * be clean base64 (Node's decoder would silently skip garbage). It works on
 * bytes with indexOf and a table lookup per byte rather than on strings with
 * regular expressions, because a million-entry CRL is a 37 MB PEM body.
 */
export function readPemBlocks(input: string | Uint8Array): PemBlock[] {
  const buf = typeof input === 'string' ? Buffer.from(input, 'utf8') : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const blocks: PemBlock[] = [];
  let pos = 0;
  for (;;) {
    const begin = buf.indexOf('-----BEGIN ', pos, 'latin1');
    if (begin < 0) break;
    const labelEnd = buf.indexOf('-----', begin + 11, 'latin1');
    const label = labelEnd < 0 ? '' : buf.toString('latin1', begin + 11, Math.min(labelEnd, begin + 80));
    if (!/^[A-Z0-9 ]{1,64}$/.test(label)) throw new Error('malformed PEM: bad BEGIN line');
    const bodyStart = labelEnd + 5;
    const end = buf.indexOf('-----END ', bodyStart, 'latin1');
    const nextBegin = buf.indexOf('-----BEGIN', bodyStart, 'latin1');
    if (end < 0 || (nextBegin >= 0 && nextBegin < end)) throw new Error('malformed PEM: a BEGIN line without its END line');
    const endLabelEnd = buf.indexOf('-----', end + 9, 'latin1');
    const endLabel = endLabelEnd < 0 ? '' : buf.toString('latin1', end + 9, Math.min(endLabelEnd, end + 80));
    if (endLabel !== label) throw new Error(`malformed PEM: BEGIN ${label} closed by END ${endLabel || '?'}`);
    blocks.push({ label, der: decodeBase64Strict(buf, bodyStart, end, label) });
    pos = endLabelEnd + 5;
  }
  return blocks;
}

function decodeBase64Strict(buf: Buffer, start: number, end: number, label: string): Buffer {
  let n = 0;
  let pad = 0;
  for (let i = start; i < end; i++) {
    const k = PEM_BYTE[buf[i]];
    if (k === 1 && pad === 0) n++;
    else if (k === 2) continue;
    else if (k === 3) {
      pad++;
      n++;
    } else if (k === 4) throw new Error(`PEM block ${label} has headers (encrypted or legacy format); not supported`);
    else throw new Error(`malformed PEM: block ${label} is not valid base64`);
  }
  if (n === 0 || n % 4 !== 0 || pad > 2) throw new Error(`malformed PEM: block ${label} is not valid base64`);
  return Buffer.from(buf.toString('latin1', start, end), 'base64');
}

/** All certificates of a PEM text; throws with a message fit for a 400 answer. */
export function parsePemCertificates(pem: string): X509Certificate[] {
  if (typeof pem !== 'string' || pem.trim() === '') throw new Error('no PEM certificate given (empty input)');
  const blocks = readPemBlocks(pem);
  if (blocks.length === 0) throw new Error('no PEM certificate found (expected -----BEGIN CERTIFICATE-----)');
  return blocks.map((b, i) => {
    if (b.label !== 'CERTIFICATE') throw new Error(`PEM block #${i + 1} is ${b.label}, expected CERTIFICATE`);
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(b.der);
      // OpenSSL stops at the end of the first certificate; trailing bytes mean a damaged block.
      if (!cert.raw.equals(b.der)) throw new Error('trailing data after the certificate');
      certInfo(cert); // our own parse must succeed too, or later use would fail
    } catch (e) {
      throw new Error(`PEM certificate #${i + 1} is invalid: ${(e as Error).message}`, { cause: e });
    }
    return cert;
  });
}

/** A private key from PEM; encrypted keys are refused (no passphrase handling). */
export function parsePrivateKeyPem(pem: string): KeyObject {
  if (typeof pem !== 'string' || pem.trim() === '') throw new Error('no PEM private key given (empty input)');
  const blocks = readPemBlocks(pem);
  if (blocks.length === 0) throw new Error('no PEM private key found (expected -----BEGIN PRIVATE KEY-----)');
  if (blocks.length > 1) throw new Error(`expected one PEM private key, found ${blocks.length} PEM blocks`);
  const { label } = blocks[0];
  if (label === 'ENCRYPTED PRIVATE KEY') throw new Error('encrypted private keys are not supported');
  if (!/^(|RSA |EC )PRIVATE KEY$/.test(label)) throw new Error(`PEM block is ${label}, expected PRIVATE KEY`);
  try {
    return createPrivateKey({ key: pem, format: 'pem' });
  } catch (e) {
    throw new Error(`invalid private key: ${(e as Error).message}`, { cause: e });
  }
}

/** Whether the key is the private half of the (first) certificate's public key. */
export function keyMatchesCertificate(keyPem: string, certPem: string): boolean {
  const key = parsePrivateKeyPem(keyPem);
  const [cert] = parsePemCertificates(certPem);
  const fromKey = createPublicKey(key).export({ type: 'spki', format: 'der' });
  const fromCert = cert.publicKey.export({ type: 'spki', format: 'der' });
  return fromKey.equals(fromCert);
}

// ---------------------------------------------------------------------------
// Client certificate chain validation
// ---------------------------------------------------------------------------

export type ChainFailure = 'expired' | 'not-yet-valid' | 'untrusted-issuer' | 'bad-key-usage' | 'bad-signature' | 'not-a-ca';
export type ChainResult = { ok: true; chain: X509Certificate[] } | { ok: false; reason: ChainFailure; detail: string };

/** Longest chain we build, leaf and anchor included. */
const MAX_CHAIN = 8;
/** Bound on candidate links examined, so cross-certified meshes cannot make path search explode. */
const MAX_LINKS_TRIED = 64;

type Failure = { ok: false; reason: ChainFailure; detail: string };

function fail(reason: ChainFailure, detail: string): Failure {
  return { ok: false, reason, detail };
}

function describe(cert: X509Certificate): string {
  try {
    return formatName(certInfo(cert).parsed.der, nameTlvAt(certInfo(cert).parsed.der, certInfo(cert).parsed.subjectName));
  } catch {
    return cert.subject.replace(/\n/g, ', ');
  }
}

/** Checks of a complete, signature-verified path (leaf first, anchor last). */
function checkPath(chain: X509Certificate[], now: Date): Failure | null {
  const t = now.getTime();
  for (const c of chain) {
    const { notBefore, notAfter } = certInfo(c).parsed;
    const role = c === chain[0] ? 'certificate' : 'issuer certificate';
    if (t < notBefore.getTime()) return fail('not-yet-valid', `${role} ${describe(c)} is not valid before ${notBefore.toISOString()}`);
    if (t > notAfter.getTime()) return fail('expired', `${role} ${describe(c)} expired ${notAfter.toISOString()}`);
  }
  for (let k = 1; k < chain.length; k++) {
    const info = certInfo(chain[k]);
    if (!info.isCa) return fail('not-a-ca', `issuer ${describe(chain[k])} is not a CA (no basicConstraints cA)`);
    if (info.keyUsage !== null && !(info.keyUsage & KU.keyCertSign)) return fail('not-a-ca', `issuer ${describe(chain[k])} lacks keyCertSign`);
    if (info.pathLen !== null) {
      // Intermediate CAs below this one, self-issued ones not counted (RFC 5280 6.1.4 (l)).
      let below = 0;
      for (let j = 1; j < k; j++) if (!certInfo(chain[j]).selfIssued) below++;
      if (below > info.pathLen) return fail('not-a-ca', `issuer ${describe(chain[k])} path length constraint ${info.pathLen} exceeded`);
    }
  }
  for (let k = 0; k < chain.length; k++) {
    const { unhandledCritical } = certInfo(chain[k]);
    if (unhandledCritical.length > 0) {
      const detail = `${k === 0 ? 'certificate' : 'issuer'} ${describe(chain[k])} has unsupported critical extension(s) ${unhandledCritical.join(', ')}`;
      return fail(k === 0 ? 'bad-key-usage' : 'untrusted-issuer', detail);
    }
  }
  const leaf = certInfo(chain[0]);
  if (leaf.keyUsage !== null && !(leaf.keyUsage & (KU.digitalSignature | KU.keyAgreement))) {
    return fail('bad-key-usage', 'certificate key usage allows neither digitalSignature nor keyAgreement');
  }
  if (leaf.extKeyUsage !== null && !leaf.extKeyUsage.includes(OID.ekuClientAuth) && !leaf.extKeyUsage.includes(OID.ekuAny)) {
    return fail('bad-key-usage', 'certificate extended key usage does not include clientAuth');
  }
  return null;
}

/**
 * Validates a client certificate ourselves (the TLS layer's `authorized` is
 * not consulted). The path runs from the leaf through intermediates presented
 * by the client or found in `trusted`, to any certificate of `trusted` (every
 * bundle certificate is an anchor, intermediates included). Each link is
 * checked with `checkIssued` and a signature verification; then validity
 * periods, CA-ness of issuers and the leaf's key usage. When several paths
 * exist, the first that passes wins; otherwise the most telling failure is
 * reported (a complete path's problem over a bad signature over no issuer).
 */
export function validateClientCertificate(input: { leaf: X509Certificate; presented: X509Certificate[]; trusted: X509Certificate[]; now: Date }): ChainResult {
  const { leaf, now } = input;
  let leafInfo: CertInfo;
  try {
    leafInfo = certInfo(leaf);
  } catch (e) {
    return fail('untrusted-issuer', `certificate cannot be parsed: ${(e as Error).message}`);
  }

  // Candidate pool, deduplicated by fingerprint; bundle membership makes an anchor.
  const pool = new Map<string, { cert: X509Certificate; anchor: boolean }>();
  const addAll = (certs: X509Certificate[], anchor: boolean): void => {
    for (const c of certs) {
      let fp: string;
      try {
        fp = certInfo(c).fingerprint;
      } catch {
        continue; // an unparseable extra certificate can only fail to help
      }
      const seen = pool.get(fp);
      if (seen) seen.anchor ||= anchor;
      else pool.set(fp, { cert: c, anchor });
    }
  };
  addAll(input.trusted, true);
  addAll(input.presented, false);

  let firstPathFailure: Failure | null = null;
  let signatureFailure: Failure | null = null;
  let issuerFailure: Failure | null = null;
  let linksTried = 0;

  const search = (path: X509Certificate[], fps: Set<string>): X509Certificate[] | null => {
    const cur = path[path.length - 1];
    const curInfo = certInfo(cur);
    const candidates = [...pool.values()]
      .filter(({ cert }) => !fps.has(certInfo(cert).fingerprint) && certInfo(cert).subjectCanon === curInfo.issuerCanon)
      .sort((a, b) => Number(b.anchor) - Number(a.anchor));
    for (const { cert, anchor } of candidates) {
      if (++linksTried > MAX_LINKS_TRIED) {
        issuerFailure ??= fail('untrusted-issuer', 'path search limit reached');
        return null;
      }
      const cand = certInfo(cert);
      if (curInfo.authorityKeyId !== null && cand.subjectKeyId !== null && curInfo.authorityKeyId !== cand.subjectKeyId) continue;
      // Node's direction: `child.checkIssued(issuer)` (OpenSSL's X509_check_issued(issuer, child)):
      // names, authorityKeyIdentifier fields and the issuer's keyUsage.
      if (!cur.checkIssued(cert)) {
        if (cand.keyUsage !== null && !(cand.keyUsage & KU.keyCertSign)) {
          issuerFailure ??= fail('not-a-ca', `issuer ${describe(cert)} key usage lacks keyCertSign`);
        } else {
          issuerFailure ??= fail('untrusted-issuer', `${describe(cert)} does not match the issuer of ${describe(cur)}`);
        }
        continue;
      }
      let verified: boolean;
      try {
        verified = cur.verify(cert.publicKey);
      } catch {
        verified = false;
      }
      if (!verified) {
        signatureFailure ??= fail('bad-signature', `signature of ${describe(cur)} does not verify with the key of ${describe(cert)}`);
        continue;
      }
      const next = [...path, cert];
      if (anchor) {
        const problem = checkPath(next, now);
        if (!problem) return next;
        firstPathFailure ??= problem;
        continue; // another path may still be good (e.g. a renewed intermediate)
      }
      if (next.length >= MAX_CHAIN) {
        issuerFailure ??= fail('untrusted-issuer', `no trusted issuer within ${MAX_CHAIN} certificates`);
        continue;
      }
      const found = search(next, new Set([...fps, cand.fingerprint]));
      if (found) return found;
    }
    return null;
  };

  let chain: X509Certificate[] | null;
  try {
    chain = search([leaf], new Set([leafInfo.fingerprint]));
  } catch (e) {
    return fail('untrusted-issuer', `certificate chain cannot be parsed: ${(e as Error).message}`);
  }
  if (chain) return { ok: true, chain };
  return firstPathFailure ?? signatureFailure ?? issuerFailure ?? fail('untrusted-issuer', `no trusted issuer found for ${describe(leaf)}`);
}
