// Distinguished names as RFC 4514 strings ({s}, {i} and the events) and in a canonical form for
// comparing issuers the way OpenSSL does. Node's X509Certificate prints names in OpenSSL's own
// multi-line format, which is neither RFC 4514 nor escaped, so names are read from the DER.
import { DerError, TAG, children, decodeOid, expectTlv, hex2, type Tlv } from './der.ts';

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
 * With `order` 'x500' the RDNs come in DER order instead (least specific first).
 */
export function formatName(buf: Buffer, name: Tlv, order: 'rfc4514' | 'x500' = 'rfc4514'): string {
  const rdns = nameRdns(buf, name);
  // 'x500': DER order, least specific first, as Active Directory writes `altSecurityIdentities`
  // (`X509:<I>DC=com,DC=contoso,CN=CONTOSO-CA`); each RDN itself written the same way.
  return (order === 'rfc4514' ? rdns.reverse() : rdns)
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
export function nameValues(buf: Buffer, name: Tlv, oid: string): string[] {
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

/** A Name element parsed from a standalone Name DER buffer. */
export function nameTlv(nameDer: Buffer): Tlv {
  const t = expectTlv(nameDer, 0, nameDer.length, TAG.SEQUENCE, 'Name');
  if (t.end !== nameDer.length) throw new DerError('trailing data after Name');
  return t;
}
