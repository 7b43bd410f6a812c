// A small, strict DER reader: TLVs, OIDs, times and INTEGER serials. Node's X509Certificate
// gives no access to the parts of certificates and CRLs certgate needs (the raw Name DER for
// RFC 4514 strings, CRL entries, key identifiers), and the ASN.1 libraries measured were 10-200x
// slower on a million-entry CRL (bench/crl-parse.ts). Fails closed: bytes that are not
// well-formed DER of the expected shape throw DerError, never yield a default.

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

export function hex2(n: number): string {
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
