/**
 * Certificate revocation lists, sized for the DoD's million-entry CRLs.
 *
 * Why not a library: node-forge has no CRL API and its generic ASN.1 parser
 * needs ~3 s and ~1 GB for a 27 MB CRL; @peculiar/x509 and pkijs are far
 * slower (FIELD-NOTES). A plain DER walk over the Buffer takes a fraction of
 * that, and the revoked serials go into one flat open-addressing hash table
 * (a few typed arrays, no per-entry objects) that a worker thread can hand
 * back to the main thread without copying.
 *
 * Fail closed: anything unexpected in the CRL is an error, and so is anything
 * that would make the CRL say less than it seems to (delta CRLs, partitioned
 * CRLs, unknown critical extensions).
 */
import { X509Certificate, constants, createHash, verify as cryptoVerify, type KeyObject, type VerifyKeyObjectInput } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { DerError, TAG, type Tlv, children, decodeOid, decodeTime, expectTlv, readTlv } from '../der.ts';
import { KU, OID, certInfo, parseAuthorityKeyId, parseExtensions } from '../certificate.ts';
import { canonicalName, formatName, nameTlv } from '../names.ts';
import { readPemBlocks } from '../pem.ts';

export type CrlFileType = 'asn1' | 'pem';

export interface ParsedCrl {
  /** RFC 4514 issuer name. */
  issuerDn: string;
  /** DER of the issuer Name (full TLV). */
  issuerNameDer: Buffer;
  /** keyIdentifier of the authorityKeyIdentifier extension, uppercase hex; null if absent. */
  authorityKeyId: string | null;
  thisUpdate: Date;
  nextUpdate: Date | null;
  crlNumber: bigint | null;
  revokedCount: number;
  revoked: RevokedSerials;
  /** The signed bytes (TBSCertList, full TLV). */
  tbs: Buffer;
  signatureAlgorithmOid: string;
  /** DER of the signature AlgorithmIdentifier parameters (RSASSA-PSS needs them); null if absent. */
  signatureAlgorithmParams: Buffer | null;
  /** Signature value (BIT STRING content without the unused-bits octet). */
  signature: Buffer;
  /** SHA-256 of the file as given (PEM or DER), lowercase hex. */
  sha256: string;
  /** Size of the file as given. */
  bytes: number;
}

// ---------------------------------------------------------------------------
// Revoked serials
// ---------------------------------------------------------------------------

export interface RevokedSerialsTransfer {
  count: number;
  keys: ArrayBuffer;
  table: ArrayBuffer;
}

/** Scratch space for lookups (serials are at most 20 octets by RFC 5280; we allow more). */
let scratch = new Uint8Array(72);

function hexNibble(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 65 && c <= 70) return c - 55;
  if (c >= 97 && c <= 102) return c - 87;
  return -1;
}

/** FNV-1a over key bytes, finished with a murmur-style mix so the low bits are usable as a table index (int32). */
function hashBytes(buf: Uint8Array, from: number, to: number): number {
  let h = 0x811c9dc5;
  for (let i = from; i < to; i++) h = Math.imul(h ^ buf[i], 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  // int32, not `>>> 0`: values above 2^31 are not small integers for V8, and
  // boxing them made lookups several times slower.
  return h | 0;
}

/**
 * Writes the lookup key of a serial string into `scratch` and returns its
 * range packed as `to * 2 + from` (from is 0 or 1; no array per call). The key
 * is the minimal two's-complement DER INTEGER content, so `0A1B`, `A1B`,
 * `000A1B` and `0a1b` are the same serial, and `80FF` is stored with its 00
 * sign byte as in the CRL. A leading `-` (OpenSSL's notation for a
 * non-conforming negative serial) is honoured.
 */
function serialKey(serialHex: string): number {
  if (typeof serialHex !== 'string' || serialHex.length === 0) throw new TypeError('serial must be a non-empty hex string');
  const s = serialHex;
  const len = s.length;
  if (s.charCodeAt(0) === 45) return negativeSerialKey(s);
  let start = 0;
  while (start < len - 1 && s.charCodeAt(start) === 48) start++;
  const digits = len - start;
  const need = ((digits + 1) >> 1) + 1;
  if (need > scratch.length) scratch = new Uint8Array(need * 2);
  let o = 1; // scratch[0] is kept for a sign byte
  if (digits & 1) {
    const v = hexNibble(s.charCodeAt(start++));
    if (v < 0) throw new TypeError(`not a hex serial: "${serialHex}"`);
    scratch[o++] = v;
  }
  for (; start < len; start += 2) {
    const hi = hexNibble(s.charCodeAt(start));
    const lo = hexNibble(s.charCodeAt(start + 1));
    if (hi < 0 || lo < 0) throw new TypeError(`not a hex serial: "${serialHex}"`);
    scratch[o++] = (hi << 4) | lo;
  }
  if (scratch[1] & 0x80) {
    scratch[0] = 0;
    return o * 2;
  }
  return o * 2 + 1;
}

function negativeSerialKey(s: string): number {
  if (!/^-[0-9A-Fa-f]+$/.test(s)) throw new TypeError(`not a hex serial: "${s}"`);
  const mag = BigInt('0x' + s.slice(1));
  if (mag === 0n) return serialKey('00');
  // Smallest byte count whose two's complement range holds -mag.
  let n = 1;
  while (mag > 1n << BigInt(8 * n - 1)) n++;
  const v = (1n << BigInt(8 * n)) - mag;
  const hex = v.toString(16).padStart(2 * n, '0');
  if (n > scratch.length) scratch = new Uint8Array(n * 2);
  for (let i = 0; i < n; i++) scratch[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return n * 2;
}

/**
 * Set of revoked serial numbers, as two typed arrays and no per-entry objects:
 *
 * - `keys`: every entry's canonical serial bytes, each preceded by its length
 *   (one octet: RFC 5280 serials have at most 20);
 * - `table`: an open-addressing hash table (linear probing, load <= 0.5) of
 *   slot pairs [32-bit hash, offset of the entry in `keys` + 1].
 *
 * Keeping the full hash in the slot means a lookup touches `keys` only for a
 * probable hit, so a miss costs about one cache miss and a hit two; a sorted
 * array with binary search costs ~20 dependent cache misses at 1M entries.
 * Built in one pass without sorting. 1M 8-byte serials: ~10 MB + 16 MB.
 */
export class RevokedSerials {
  readonly count: number;
  private readonly keys: Uint8Array;
  private readonly table: Int32Array;
  private readonly mask: number;

  private constructor(count: number, keys: Uint8Array, table: Int32Array) {
    this.count = count;
    this.keys = keys;
    this.table = table;
    this.mask = table.length / 2 - 1;
  }

  /** Builds the set from key ranges [starts[i], ends[i]) of `src` (already canonical). */
  static fromRanges(src: Uint8Array, starts: Uint32Array, ends: Uint32Array, count: number): RevokedSerials {
    let total = 0;
    for (let i = 0; i < count; i++) {
      const len = ends[i] - starts[i];
      if (len < 1 || len > 255) throw new DerError(`revoked entry ${i + 1}: serial of ${len} octets`);
      total += len + 1;
    }
    const keys = new Uint8Array(total);
    let slots = 16;
    while (slots < count * 2) slots *= 2;
    const table = new Int32Array(slots * 2);
    const mask = slots - 1;
    let o = 0;
    for (let i = 0; i < count; i++) {
      const a = starts[i];
      const e = ends[i];
      const at = o;
      keys[o++] = e - a;
      for (let j = a; j < e; j++) keys[o++] = src[j];
      const h = hashBytes(keys, at + 1, o);
      let slot = h & mask;
      while (table[2 * slot + 1] !== 0) slot = (slot + 1) & mask;
      table[2 * slot] = h;
      table[2 * slot + 1] = at + 1;
    }
    return new RevokedSerials(count, keys, table);
  }

  /** From serial strings (tests, small lists). */
  static fromSerials(serials: string[]): RevokedSerials {
    const parts: Buffer[] = [];
    const starts = new Uint32Array(serials.length);
    const ends = new Uint32Array(serials.length);
    let o = 0;
    serials.forEach((s, i) => {
      const packed = serialKey(s);
      const a = packed & 1;
      const b = packed >> 1;
      parts.push(Buffer.from(scratch.subarray(a, b)));
      starts[i] = o;
      o += b - a;
      ends[i] = o;
    });
    return RevokedSerials.fromRanges(Buffer.concat(parts), starts, ends, serials.length);
  }

  /**
   * Whether the serial (hex as `openssl x509 -serial` or Node's
   * `serialNumber` prints it; case, odd length and a leading 00 do not
   * matter) is in the set. Throws TypeError for a string that is not hex,
   * because answering "not revoked" to garbage would fail open.
   */
  has(serialHex: string): boolean {
    const packed = serialKey(serialHex);
    return this.lookup(scratch, packed & 1, packed >> 1);
  }

  /** Same with the DER INTEGER content octets of the serial (canonicalised here). */
  hasBytes(serial: Uint8Array): boolean {
    let from = 0;
    const to = serial.length;
    if (to === 0) throw new TypeError('empty serial');
    while (to - from > 1 && ((serial[from] === 0 && !(serial[from + 1] & 0x80)) || (serial[from] === 0xff && serial[from + 1] & 0x80))) from++;
    return this.lookup(serial, from, to);
  }

  private lookup(buf: Uint8Array, from: number, to: number): boolean {
    const len = to - from;
    const { keys, table, mask } = this;
    const h = hashBytes(buf, from, to);
    let slot = h & mask;
    for (;;) {
      const at = table[2 * slot + 1];
      if (at === 0) return false;
      if (table[2 * slot] === h && keys[at - 1] === len) {
        let k = 0;
        while (k < len && keys[at + k] === buf[from + k]) k++;
        if (k === len) return true;
      }
      slot = (slot + 1) & mask;
    }
  }

  /** Memory held, in bytes. */
  get byteLength(): number {
    return this.keys.byteLength + this.table.byteLength;
  }

  /**
   * For `postMessage(data, transferList)`: the ArrayBuffers move to the other
   * thread without a copy, which leaves this instance unusable.
   */
  toTransfer(): { data: RevokedSerialsTransfer; transferList: ArrayBuffer[] } {
    const data = { count: this.count, keys: this.keys.buffer as ArrayBuffer, table: this.table.buffer as ArrayBuffer };
    return { data, transferList: [data.keys, data.table] };
  }

  static fromTransfer(t: RevokedSerialsTransfer): RevokedSerials {
    const keys = new Uint8Array(t.keys);
    const table = new Int32Array(t.table);
    const slots = table.length / 2;
    // A damaged transfer must not turn into silent misses.
    if (!Number.isInteger(t.count) || t.count < 0 || slots < 16 || (slots & (slots - 1)) !== 0 || slots < t.count * 2 || keys.length < t.count * 2) {
      throw new Error('invalid RevokedSerials transfer');
    }
    return new RevokedSerials(t.count, keys, table);
  }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

class CrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CrlError';
  }
}

function notACrl(detail: string): CrlError {
  return new CrlError(`not a CRL: ${detail}`);
}

/** CRL extensions we understand; any other critical one makes the CRL unusable (RFC 5280 5.2). */
const KNOWN_CRL_EXTENSIONS = new Set<string>([
  OID.authorityKeyIdentifier,
  OID.cRLNumber,
  OID.issuingDistributionPoint,
  OID.issuerAltName,
  OID.authorityInfoAccess,
  OID.freshestCRL,
]);

/** Entry extensions that may be critical without changing what "revoked" means for us. */
const KNOWN_ENTRY_EXTENSIONS = new Set<string>([OID.reasonCode, OID.invalidityDate, '2.5.29.23' /* holdInstructionCode */]);

function parseCrlNumber(v: Buffer): bigint {
  const t = expectTlv(v, 0, v.length, TAG.INTEGER, 'cRLNumber');
  if (t.end !== v.length || t.end === t.contentStart || v[t.contentStart] & 0x80) throw notACrl('malformed cRLNumber');
  if (t.end - t.contentStart > 20) throw notACrl('cRLNumber longer than 20 octets');
  return BigInt('0x' + v.subarray(t.contentStart, t.end).toString('hex'));
}

/**
 * issuingDistributionPoint: a CRL scoped to CA certificates, to some reasons
 * or to attribute certificates, or an indirect CRL, does not say whether an
 * end-entity certificate of this issuer is revoked. Refuse those rather than
 * treat them as complete.
 */
function checkIssuingDistributionPoint(v: Buffer): void {
  const t = expectTlv(v, 0, v.length, TAG.SEQUENCE, 'issuingDistributionPoint');
  if (t.end !== v.length) throw notACrl('malformed issuingDistributionPoint');
  for (const c of children(v, t)) {
    const isTrue = c.end - c.contentStart === 1 && v[c.contentStart] !== 0;
    if (c.tag === 0x82 && isTrue) throw notACrl('CRL covers CA certificates only (onlyContainsCACerts)');
    if (c.tag === 0x83) throw notACrl('partitioned CRL (onlySomeReasons) is not supported');
    if (c.tag === 0x84 && isTrue) throw notACrl('indirect CRL is not supported');
    if (c.tag === 0x85 && isTrue) throw notACrl('CRL covers attribute certificates only');
  }
}

/** Reads the DER of a PEM or DER file, with errors that point at a wrong fileType. */
function crlDer(data: Buffer, fileType: CrlFileType): Buffer {
  if (!Buffer.isBuffer(data)) throw new TypeError('CRL data must be a Buffer');
  if (data.length === 0) throw notACrl('empty file');
  const head = data.subarray(0, Math.min(data.length, 64)).toString('latin1').trimStart();
  if (fileType === 'asn1') {
    if (head.startsWith('-----BEGIN')) throw notACrl('the file is PEM, but the source says asn1 (DER)');
    return data;
  }
  if (fileType !== 'pem') throw new TypeError(`unknown CRL file type ${String(fileType)}`);
  let blocks;
  try {
    blocks = readPemBlocks(data);
  } catch (e) {
    throw notACrl((e as Error).message);
  }
  const crls = blocks.filter((b) => b.label === 'X509 CRL');
  if (crls.length === 0) {
    if (data[0] === 0x30) throw notACrl('the file looks like DER, but the source says pem');
    throw notACrl(blocks.length ? `PEM holds ${blocks.map((b) => b.label).join(', ')}, no X509 CRL` : 'no -----BEGIN X509 CRL----- block');
  }
  if (crls.length > 1) throw notACrl(`PEM holds ${crls.length} CRLs, expected one`);
  return crls[0].der;
}

/**
 * Parses a CRL file. Throws `not a CRL: ...` or `truncated CRL: ...` with the
 * reason. The revoked serials are indexed in the same pass.
 */
export function parseCrl(data: Buffer, fileType: CrlFileType): ParsedCrl {
  const der = crlDer(data, fileType);
  let parsed: Omit<ParsedCrl, 'sha256' | 'bytes'>;
  try {
    parsed = parseCrlDer(der);
  } catch (e) {
    if (e instanceof CrlError) throw e;
    const msg = (e as Error).message;
    if (msg.startsWith('truncated')) throw new CrlError(`truncated CRL: ${msg.replace(/^truncated:\s*/, '')}`);
    throw notACrl(msg);
  }
  return { ...parsed, sha256: createHash('sha256').update(data).digest('hex'), bytes: data.length };
}

function parseCrlDer(der: Buffer): Omit<ParsedCrl, 'sha256' | 'bytes'> {
  if (der[0] !== TAG.SEQUENCE) throw notACrl('does not start with a DER SEQUENCE');
  const outer = readTlv(der, 0, der.length);
  if (outer.end !== der.length) throw notACrl(`${der.length - outer.end} bytes of trailing data`);
  const tbs = expectTlv(der, outer.contentStart, outer.end, TAG.SEQUENCE, 'TBSCertList');
  const sigAlg = expectTlv(der, tbs.end, outer.end, TAG.SEQUENCE, 'signatureAlgorithm');
  const sigVal = expectTlv(der, sigAlg.end, outer.end, TAG.BIT_STRING, 'signatureValue');
  if (sigVal.end !== outer.end) throw notACrl('unexpected data after the signature');

  // TBSCertList
  let p = tbs.contentStart;
  let t = readTlv(der, p, tbs.end);
  if (t.tag === 0xa0) throw notACrl('this is a certificate (it has an [0] version field), not a CRL');
  if (t.tag === TAG.INTEGER) {
    if (t.end - t.contentStart !== 1 || der[t.contentStart] !== 1) throw notACrl('unsupported version (only v1 and v2 CRLs exist)');
    p = t.end;
    t = readTlv(der, p, tbs.end);
  }
  const innerAlg = t;
  if (innerAlg.tag !== TAG.SEQUENCE) throw notACrl('missing signature AlgorithmIdentifier in TBSCertList');
  if (!der.subarray(innerAlg.start, innerAlg.end).equals(der.subarray(sigAlg.start, sigAlg.end))) {
    throw notACrl('signature algorithm inside and outside the signed part differ');
  }
  const issuer = expectTlv(der, innerAlg.end, tbs.end, TAG.SEQUENCE, 'issuer');
  const thisUpdateT = readTlv(der, issuer.end, tbs.end);
  const thisUpdate = decodeTime(der, thisUpdateT);
  p = thisUpdateT.end;
  let nextUpdate: Date | null = null;
  let revokedSeq: Tlv | null = null;
  let extsWrapper: Tlv | null = null;
  if (p < tbs.end) {
    t = readTlv(der, p, tbs.end);
    if (t.tag === TAG.UTC_TIME || t.tag === TAG.GENERALIZED_TIME) {
      nextUpdate = decodeTime(der, t);
      p = t.end;
    }
  }
  if (p < tbs.end) {
    t = readTlv(der, p, tbs.end);
    if (t.tag === TAG.SEQUENCE) {
      revokedSeq = t;
      p = t.end;
    }
  }
  if (p < tbs.end) {
    t = readTlv(der, p, tbs.end);
    if (t.tag !== 0xa0) throw notACrl(`unexpected element (tag 0x${t.tag.toString(16)}) in TBSCertList`);
    extsWrapper = t;
    p = t.end;
  }
  if (p !== tbs.end) throw notACrl('unexpected data at the end of TBSCertList');

  // Extensions
  let authorityKeyId: string | null = null;
  let crlNumber: bigint | null = null;
  if (extsWrapper) {
    const seq = readTlv(der, extsWrapper.contentStart, extsWrapper.end);
    if (seq.end !== extsWrapper.end) throw notACrl('malformed crlExtensions');
    const exts = parseExtensions(der, seq);
    if (exts.has(OID.deltaCRLIndicator)) throw notACrl('delta CRLs are not supported (deltaCRLIndicator present)');
    for (const [oid, e] of exts) {
      if (e.critical && !KNOWN_CRL_EXTENSIONS.has(oid)) throw notACrl(`unsupported critical extension ${oid}`);
    }
    const aki = exts.get(OID.authorityKeyIdentifier);
    if (aki) authorityKeyId = parseAuthorityKeyId(aki.value);
    const num = exts.get(OID.cRLNumber);
    if (num) crlNumber = parseCrlNumber(num.value);
    const idp = exts.get(OID.issuingDistributionPoint);
    if (idp) checkIssuingDistributionPoint(idp.value);
  }

  // Signature
  const sigOidT = readTlv(der, sigAlg.contentStart, sigAlg.end);
  const signatureAlgorithmOid = decodeOid(der, sigOidT);
  const signatureAlgorithmParams = sigOidT.end < sigAlg.end ? der.subarray(sigOidT.end, sigAlg.end) : null;
  if (sigVal.end - sigVal.contentStart < 2 || der[sigVal.contentStart] !== 0) throw notACrl('malformed signature BIT STRING');

  // An empty revokedCertificates SEQUENCE is not DER (RFC 5280 says omit it), but it is
  // unambiguous, OpenSSL reads it, and refusing it would only keep an older CRL in force.
  const revoked = revokedSeq ? indexRevoked(der, revokedSeq.contentStart, revokedSeq.end) : RevokedSerials.fromSerials([]);

  return {
    issuerDn: formatName(der, issuer),
    issuerNameDer: der.subarray(issuer.start, issuer.end),
    authorityKeyId,
    thisUpdate,
    nextUpdate,
    crlNumber,
    revokedCount: revoked.count,
    revoked,
    tbs: der.subarray(tbs.start, tbs.end),
    signatureAlgorithmOid,
    signatureAlgorithmParams,
    signature: der.subarray(sigVal.contentStart + 1, sigVal.end),
  };
}

/** DER length at `p` (after the tag); returns [length, contentStart]. Inlined-style for the hot loop. */
function lengthAt(d: Uint8Array, p: number, limit: number): number {
  if (p >= limit) throw new DerError('truncated: revoked entry header runs past the end');
  const b = d[p];
  if (b < 0x80) return b;
  const n = b & 0x7f;
  if (n === 0 || n > 4) throw new DerError(`bad length at offset ${p - 1}`);
  if (p + n >= limit) throw new DerError('truncated: revoked entry length runs past the end');
  let len = 0;
  for (let i = 1; i <= n; i++) len = len * 256 + d[p + i];
  return len;
}

function lengthSize(d: Uint8Array, p: number): number {
  const b = d[p];
  return b < 0x80 ? 1 : 1 + (b & 0x7f);
}

/**
 * The hot loop: one pass over `revokedCertificates`, recording where each
 * serial's canonical bytes are. No objects per entry. Each entry is
 * SEQUENCE { INTEGER serial, Time revocationDate, Extensions OPTIONAL }.
 */
function indexRevoked(d: Buffer, start: number, end: number): RevokedSerials {
  // The smallest entry is 20 bytes (30 12 | 02 01 xx | 17 0D 13 bytes), which bounds the count.
  const max = Math.floor((end - start) / 20) + 1;
  const starts = new Uint32Array(max);
  const ends = new Uint32Array(max);
  let n = 0;
  let p = start;
  while (p < end) {
    if (d[p] !== 0x30) throw new DerError(`revoked entry ${n + 1}: expected SEQUENCE at offset ${p}`);
    const eLen = lengthAt(d, p + 1, end);
    const eStart = p + 1 + lengthSize(d, p + 1);
    const eEnd = eStart + eLen;
    if (eEnd > end) throw new DerError(`truncated: revoked entry ${n + 1} at offset ${p} runs past the end`);
    // serial
    let q = eStart;
    if (q + 2 > eEnd || d[q] !== 0x02) throw new DerError(`revoked entry ${n + 1}: expected serial INTEGER at offset ${q}`);
    const sLen = lengthAt(d, q + 1, eEnd);
    let s = q + 1 + lengthSize(d, q + 1);
    const sEnd = s + sLen;
    if (sLen === 0 || sEnd > eEnd) throw new DerError(`revoked entry ${n + 1}: bad serial length`);
    // Canonical form: drop redundant sign-extension bytes (DER forbids them, some CAs emit them).
    while (sEnd - s > 1 && ((d[s] === 0 && !(d[s + 1] & 0x80)) || (d[s] === 0xff && d[s + 1] & 0x80))) s++;
    // revocationDate
    q = sEnd;
    if (q + 2 > eEnd || (d[q] !== 0x17 && d[q] !== 0x18)) throw new DerError(`revoked entry ${n + 1}: expected revocation date at offset ${q}`);
    const tLen = d[q + 1];
    if ((d[q] === 0x17 && tLen !== 13) || (d[q] === 0x18 && tLen !== 15)) throw new DerError(`revoked entry ${n + 1}: malformed revocation date`);
    q += 2 + tLen;
    if (q < eEnd) {
      checkEntryExtensions(d, q, eEnd, n + 1);
    } else if (q > eEnd) {
      throw new DerError(`revoked entry ${n + 1}: revocation date runs past the entry`);
    }
    starts[n] = s;
    ends[n] = sEnd;
    n++;
    p = eEnd;
  }
  return RevokedSerials.fromRanges(d, starts, ends, n);
}

/** Entry extensions: only a critical one we do not know matters (certificateIssuer means an indirect CRL). */
function checkEntryExtensions(d: Buffer, p: number, end: number, entry: number): void {
  const seq = readTlv(d, p, end);
  if (seq.tag !== TAG.SEQUENCE || seq.end !== end) throw new DerError(`revoked entry ${entry}: malformed crlEntryExtensions`);
  for (let x = seq.contentStart; x < seq.end; ) {
    const ext = readTlv(d, x, seq.end);
    if (ext.tag !== TAG.SEQUENCE) throw new DerError(`revoked entry ${entry}: malformed extension`);
    const oidT = readTlv(d, ext.contentStart, ext.end);
    if (oidT.tag !== TAG.OID) throw new DerError(`revoked entry ${entry}: malformed extension`);
    const next = readTlv(d, oidT.end, ext.end);
    const critical = next.tag === TAG.BOOLEAN && next.end - next.contentStart === 1 && d[next.contentStart] !== 0;
    if (critical) {
      const oid = decodeOid(d, oidT);
      if (oid === OID.certificateIssuer) throw new CrlError('not a CRL: indirect CRL entries (certificateIssuer) are not supported');
      if (!KNOWN_ENTRY_EXTENSIONS.has(oid)) throw new CrlError(`not a CRL: revoked entry ${entry} has unsupported critical extension ${oid}`);
    }
    x = ext.end;
  }
}

// ---------------------------------------------------------------------------
// Signature
// ---------------------------------------------------------------------------

type SigScheme = { hash: string | null; key: 'rsa' | 'ec' | 'ed25519' | 'ed448'; pss?: { saltLength: number } };

const HASH_OIDS: Record<string, string> = {
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

const SIG_ALGS: Record<string, SigScheme> = {
  '1.2.840.113549.1.1.11': { hash: 'sha256', key: 'rsa' },
  '1.2.840.113549.1.1.12': { hash: 'sha384', key: 'rsa' },
  '1.2.840.113549.1.1.13': { hash: 'sha512', key: 'rsa' },
  '1.2.840.10045.4.3.2': { hash: 'sha256', key: 'ec' },
  '1.2.840.10045.4.3.3': { hash: 'sha384', key: 'ec' },
  '1.2.840.10045.4.3.4': { hash: 'sha512', key: 'ec' },
  '1.3.101.112': { hash: null, key: 'ed25519' },
  '1.3.101.113': { hash: null, key: 'ed448' },
};

const OID_RSASSA_PSS = '1.2.840.113549.1.1.10';
const OID_MGF1 = '1.2.840.113549.1.1.8';

/** RSASSA-PSS-params with the hash given explicitly and MGF1 over the same hash (what Node can verify). */
function pssScheme(params: Buffer | null): SigScheme {
  if (!params) throw new Error('RSASSA-PSS without parameters (SHA-1 defaults) is not supported');
  const seq = expectTlv(params, 0, params.length, TAG.SEQUENCE, 'RSASSA-PSS-params');
  let hash: string | null = null;
  let mgfHash: string | null = null;
  let saltLength = 20;
  const algOid = (buf: Buffer, wrapper: Tlv): { oid: string; params: Tlv | null } => {
    const alg = readTlv(buf, wrapper.contentStart, wrapper.end);
    const oidT = readTlv(buf, alg.contentStart, alg.end);
    const rest = oidT.end < alg.end ? readTlv(buf, oidT.end, alg.end) : null;
    return { oid: decodeOid(buf, oidT), params: rest };
  };
  for (const c of children(params, seq)) {
    if (c.tag === 0xa0) hash = HASH_OIDS[algOid(params, c).oid] ?? null;
    else if (c.tag === 0xa1) {
      const m = algOid(params, c);
      if (m.oid !== OID_MGF1 || !m.params || m.params.tag !== TAG.SEQUENCE) throw new Error('unsupported PSS mask generation');
      mgfHash = HASH_OIDS[decodeOid(params, readTlv(params, m.params.contentStart, m.params.end))] ?? null;
    } else if (c.tag === 0xa2) {
      const i = readTlv(params, c.contentStart, c.end);
      if (i.tag !== TAG.INTEGER || i.end - i.contentStart > 2) throw new Error('bad PSS salt length');
      saltLength = params.readUIntBE(i.contentStart, i.end - i.contentStart);
    } else if (c.tag === 0xa3) {
      const i = readTlv(params, c.contentStart, c.end);
      if (i.end - i.contentStart !== 1 || params[i.contentStart] !== 1) throw new Error('bad PSS trailer field');
    }
  }
  if (!hash || hash !== mgfHash) throw new Error('unsupported PSS hash / MGF1 combination');
  return { hash, key: 'rsa', pss: { saltLength } };
}

function schemeFor(crl: ParsedCrl): SigScheme {
  if (crl.signatureAlgorithmOid === OID_RSASSA_PSS) return pssScheme(crl.signatureAlgorithmParams);
  const s = SIG_ALGS[crl.signatureAlgorithmOid];
  if (!s) throw new Error(`unsupported signature algorithm ${crl.signatureAlgorithmOid}`);
  const p = crl.signatureAlgorithmParams;
  // PKCS#1 v1.5 takes NULL or absent parameters; ECDSA and EdDSA take none.
  const okParams = !p || (s.key === 'rsa' && p.length === 2 && p[0] === TAG.NULL && p[1] === 0);
  if (!okParams) throw new Error(`unexpected parameters for signature algorithm ${crl.signatureAlgorithmOid}`);
  return s;
}

/** Certificates that may have signed this CRL: same subject as the CRL issuer, matching key id, allowed to sign CRLs. */
function signerCandidates(crl: ParsedCrl, candidates: X509Certificate[]): X509Certificate[] {
  let crlCanon: string | null = null;
  return candidates.filter((cert) => {
    let info;
    try {
      info = certInfo(cert);
    } catch {
      return false;
    }
    if (!info.parsed.subjectName.equals(crl.issuerNameDer)) {
      crlCanon ??= canonicalName(crl.issuerNameDer, nameTlv(crl.issuerNameDer));
      if (info.subjectCanon !== crlCanon) return false;
    }
    if (crl.authorityKeyId !== null && info.subjectKeyId !== null && crl.authorityKeyId !== info.subjectKeyId) return false;
    if (!info.isCa) return false;
    if (info.keyUsage !== null && !(info.keyUsage & KU.cRLSign)) return false;
    return true;
  });
}

function keyFits(key: KeyObject, s: SigScheme): boolean {
  const type = key.asymmetricKeyType;
  return s.key === 'rsa' ? type === 'rsa' || (type === 'rsa-pss' && !!s.pss) : type === s.key;
}

function verifyKey(s: SigScheme, key: KeyObject): KeyObject | VerifyKeyObjectInput {
  return s.pss ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: s.pss.saltLength } : key;
}

/** The scheme and the certificates worth trying, or null when the CRL's algorithm is unusable. */
function signerTrials(crl: ParsedCrl, candidates: X509Certificate[]): { scheme: SigScheme; certs: X509Certificate[] } | null {
  let scheme: SigScheme;
  try {
    scheme = schemeFor(crl);
  } catch {
    return null;
  }
  return { scheme, certs: signerCandidates(crl, candidates).filter((cert) => keyFits(cert.publicKey, scheme)) };
}

/**
 * The CA among `candidates` whose key verifies the CRL's signature, or null. Hashing a
 * 27 MB CRL takes tens of milliseconds, so it runs on libuv's thread pool (but Node copies
 * the TBS on this thread first: the refresh verifies in the parser thread instead, see
 * parseAndVerifyCrlOffThread).
 */
export async function verifyCrlSignature(crl: ParsedCrl, candidates: X509Certificate[]): Promise<X509Certificate | null> {
  const trials = signerTrials(crl, candidates);
  if (!trials) return null;
  const { scheme, certs } = trials;
  for (const cert of certs) {
    const ok = await new Promise<boolean>((resolve) => {
      try {
        cryptoVerify(scheme.hash, crl.tbs, verifyKey(scheme, cert.publicKey), crl.signature, (err, result) => resolve(!err && result));
      } catch {
        resolve(false);
      }
    });
    if (ok) return cert;
  }
  return null;
}

/** verifyCrlSignature, synchronously: for the parser thread, whose job is to block. */
export function verifyCrlSignatureSync(crl: ParsedCrl, candidates: X509Certificate[]): X509Certificate | null {
  const trials = signerTrials(crl, candidates);
  if (!trials) return null;
  const { scheme, certs } = trials;
  for (const cert of certs) {
    try {
      if (cryptoVerify(scheme.hash, crl.tbs, verifyKey(scheme, cert.publicKey), crl.signature)) return cert;
    } catch {
      // a key Node cannot use with this scheme: try the next candidate
    }
  }
  return null;
}

/**
 * SPEC 2.6 "not older than the one in use": by CRL number when both have one,
 * else by thisUpdate. No current CRL: anything is newer.
 */
export function isNewerOrSame(candidate: Pick<ParsedCrl, 'crlNumber' | 'thisUpdate'>, current: Pick<ParsedCrl, 'crlNumber' | 'thisUpdate'> | null | undefined): boolean {
  if (!current) return true;
  if (candidate.crlNumber !== null && current.crlNumber !== null) return candidate.crlNumber >= current.crlNumber;
  return candidate.thisUpdate.getTime() >= current.thisUpdate.getTime();
}

/** The status fields SPEC 2.6 shows for the CRL in force (JSON-safe). */
export function crlSummary(crl: ParsedCrl): { issuer: string; thisUpdate: string; nextUpdate: string | null; crlNumber: string | null; revokedCount: number; sha256: string; bytes: number } {
  return {
    issuer: crl.issuerDn,
    thisUpdate: crl.thisUpdate.toISOString(),
    nextUpdate: crl.nextUpdate ? crl.nextUpdate.toISOString() : null,
    crlNumber: crl.crlNumber === null ? null : crl.crlNumber.toString(),
    revokedCount: crl.revokedCount,
    sha256: crl.sha256,
    bytes: crl.bytes,
  };
}

// ---------------------------------------------------------------------------
// Moving a parsed CRL between threads
// ---------------------------------------------------------------------------

type Span = [offset: number, length: number];

export interface CrlTransfer {
  buffer: ArrayBuffer;
  issuerNameDer: Span;
  tbs: Span;
  signature: Span;
  signatureAlgorithmParams: Span | null;
  issuerDn: string;
  authorityKeyId: string | null;
  thisUpdate: number;
  nextUpdate: number | null;
  crlNumber: string | null;
  revokedCount: number;
  revoked: RevokedSerialsTransfer;
  signatureAlgorithmOid: string;
  sha256: string;
  bytes: number;
}

/** Packs a ParsedCrl for postMessage; the DER and the index move, not copy. */
export function crlToTransfer(crl: ParsedCrl): { message: CrlTransfer; transferList: ArrayBuffer[] } {
  const params = crl.signatureAlgorithmParams;
  const views = [crl.issuerNameDer, crl.tbs, crl.signature, ...(params ? [params] : [])];
  const backing = crl.tbs.buffer as ArrayBuffer;
  // All four are views of the CRL's DER. Small buffers may live in Node's
  // shared Buffer pool (not transferable, and not ours alone), and a view
  // into something much larger would drag it along: copy those cases.
  if (views.every((v) => v.buffer === backing) && backing.byteLength >= 64 * 1024 && backing.byteLength <= crl.tbs.byteLength * 2) {
    const span = (v: Buffer): Span => [v.byteOffset, v.byteLength];
    return pack(crl, backing, span(crl.issuerNameDer), span(crl.tbs), span(crl.signature), params ? span(params) : null);
  }
  const copy = new Uint8Array(views.reduce((n, v) => n + v.byteLength, 0));
  let o = 0;
  const spans = views.map((v): Span => {
    copy.set(v, o);
    o += v.byteLength;
    return [o - v.byteLength, v.byteLength];
  });
  return pack(crl, copy.buffer, spans[0], spans[1], spans[2], params ? spans[3] : null);
}

function pack(crl: ParsedCrl, buffer: ArrayBuffer, issuerNameDer: Span, tbs: Span, signature: Span, params: Span | null): { message: CrlTransfer; transferList: ArrayBuffer[] } {
  const revoked = crl.revoked.toTransfer();
  return {
    message: {
      buffer,
      issuerNameDer,
      tbs,
      signature,
      signatureAlgorithmParams: params,
      issuerDn: crl.issuerDn,
      authorityKeyId: crl.authorityKeyId,
      thisUpdate: crl.thisUpdate.getTime(),
      nextUpdate: crl.nextUpdate ? crl.nextUpdate.getTime() : null,
      crlNumber: crl.crlNumber === null ? null : crl.crlNumber.toString(),
      revokedCount: crl.revokedCount,
      revoked: revoked.data,
      signatureAlgorithmOid: crl.signatureAlgorithmOid,
      sha256: crl.sha256,
      bytes: crl.bytes,
    },
    transferList: [buffer, ...revoked.transferList],
  };
}

export function crlFromTransfer(m: CrlTransfer): ParsedCrl {
  const view = (s: Span): Buffer => Buffer.from(m.buffer, s[0], s[1]);
  return {
    issuerDn: m.issuerDn,
    issuerNameDer: view(m.issuerNameDer),
    authorityKeyId: m.authorityKeyId,
    thisUpdate: new Date(m.thisUpdate),
    nextUpdate: m.nextUpdate === null ? null : new Date(m.nextUpdate),
    crlNumber: m.crlNumber === null ? null : BigInt(m.crlNumber),
    revokedCount: m.revokedCount,
    revoked: RevokedSerials.fromTransfer(m.revoked),
    tbs: view(m.tbs),
    signatureAlgorithmOid: m.signatureAlgorithmOid,
    signatureAlgorithmParams: m.signatureAlgorithmParams ? view(m.signatureAlgorithmParams) : null,
    signature: view(m.signature),
    sha256: m.sha256,
    bytes: m.bytes,
  };
}

// ---------------------------------------------------------------------------
// Off-thread parsing: one parser thread per process, started on first use
// ---------------------------------------------------------------------------

export interface CrlThreadRequest {
  id: number;
  buffer: ArrayBuffer;
  fileType: CrlFileType;
  /** DER of the CA certificates the signature may verify with; null: parse only. */
  signers: Uint8Array[] | null;
}

/** signer: index into the request's signers, -1 when none verified (or none was asked). */
export type CrlThreadResponse = { id: number; ok: true; crl: CrlTransfer; signer: number } | { id: number; ok: false; message: string };

const RUNNING_TS = import.meta.url.endsWith('.ts');
const THREAD_URL = new URL(RUNNING_TS ? './thread.ts' : './thread.js', import.meta.url);

/**
 * Starts the parser thread. Under tsx (how certgate runs), a Worker does not
 * inherit tsx's module hooks on Node 20: neither the inherited execArgv nor an
 * explicit `execArgv: ['--import', 'tsx']` helps (both fail with "Unknown file
 * extension .ts"). What works is a two-line JS bootstrap that registers tsx's
 * ESM hooks inside the worker (`tsx/esm/api` register()) and then imports the
 * TypeScript entry. Plain JS builds load the entry directly.
 */
function startThread(): Worker {
  if (!RUNNING_TS) return new Worker(THREAD_URL);
  const tsxApiUrl = import.meta.resolve('tsx/esm/api');
  const code = `import(${JSON.stringify(tsxApiUrl)}).then((m) => { m.register(); return import(${JSON.stringify(THREAD_URL.href)}); });`;
  return new Worker(code, { eval: true });
}

interface Pending {
  resolve: (r: CrlThreadResponse) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * The one parser thread of this process. Kept between loads (issue 12): starting a thread
 * (tsx, module load) cost hundreds of milliseconds per CRL on a busy machine, and every new
 * thread's malloc arena grew the worker's RSS by tens of MB that glibc kept. It holds the
 * process open only while a request is pending. A timeout or a crash ends it and fails what
 * was pending; the next request starts a new one.
 */
class ParserThread {
  private worker: Worker | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  request(make: (id: number) => CrlThreadRequest, transferList: ArrayBuffer[], timeoutMs: number): Promise<CrlThreadResponse> {
    const worker = this.worker ?? this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`CRL parsing timed out after ${timeoutMs} ms`)), timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      worker.ref();
      try {
        worker.postMessage(make(id), transferList);
      } catch (e) {
        this.pending.delete(id);
        clearTimeout(timer);
        if (this.pending.size === 0) worker.unref();
        reject(e as Error);
      }
    });
  }

  private start(): Worker {
    const worker = startThread();
    worker.on('message', (m: CrlThreadResponse) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      clearTimeout(p.timer);
      if (this.pending.size === 0) worker.unref();
      p.resolve(m);
    });
    worker.on('error', (e) => this.fail(new Error(`CRL parser thread failed: ${e.message}`), worker));
    worker.on('exit', (code) => this.fail(new Error(`CRL parser thread exited (code ${code}) without an answer`), worker));
    this.worker = worker;
    return worker;
  }

  /** Ends the thread (`which`, default the current one) and fails every pending request. */
  private fail(err: Error, which: Worker | null = this.worker): void {
    if (which === null || which !== this.worker) return;
    this.worker = null;
    void which.terminate();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }
}

const parserThread = new ParserThread();

/** Copy granularity: a few milliseconds of memcpy per event-loop turn. */
const COPY_CHUNK = 4 * 1024 * 1024;

/**
 * Copies `data` into a fresh, transferable ArrayBuffer in chunks, yielding to
 * the event loop between them: one 27 MB copy (plus zero-filling) measured
 * 20-40 ms of blocking on a busy 2-core machine, each 4 MB chunk a few ms.
 */
async function transferableCopy(data: Uint8Array): Promise<ArrayBuffer> {
  const copy = Buffer.allocUnsafeSlow(data.byteLength); // own ArrayBuffer, not zero-filled
  for (let o = 0; o < data.byteLength; o += COPY_CHUNK) {
    if (o > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    copy.set(data.subarray(o, Math.min(o + COPY_CHUNK, data.byteLength)), o);
  }
  return copy.buffer as ArrayBuffer;
}

export interface OffThreadOptions {
  timeoutMs?: number;
  /**
   * The caller gives `data` up: when it is the whole of its own ArrayBuffer (a large Buffer
   * from joinChunks or allocUnsafeSlow), that memory moves to the thread instead of being
   * copied, and `data` is empty afterwards. Saves a copy and its memory (a worker's load).
   */
  handOver?: boolean;
}

function ownsItsMemory(data: Buffer): boolean {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer && data.byteLength >= COPY_CHUNK;
}

async function offThread(data: Buffer, fileType: CrlFileType, signers: X509Certificate[] | null, opts: OffThreadOptions): Promise<{ crl: ParsedCrl; signer: number }> {
  if (!Buffer.isBuffer(data)) throw new TypeError('CRL data must be a Buffer');
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const buffer = opts.handOver && ownsItsMemory(data) ? (data.buffer as ArrayBuffer) : await transferableCopy(data);
  const der = signers?.map((c) => new Uint8Array(c.raw));
  const m = await parserThread.request((id) => ({ id, buffer, fileType, signers: der ?? null }), [buffer], timeoutMs);
  if (!m.ok) throw new Error(m.message);
  return { crl: crlFromTransfer(m.crl), signer: m.signer };
}

/**
 * `parseCrl` in the parser thread, so a 27 MB CRL does not block the event
 * loop (this thread only copies the input, in chunks, and wraps the result).
 * Do not modify `data` until the promise settles (nor use it after, with `handOver`).
 */
export async function parseCrlOffThread(data: Buffer, fileType: CrlFileType, opts: OffThreadOptions = {}): Promise<ParsedCrl> {
  return (await offThread(data, fileType, null, opts)).crl;
}

/**
 * `parseCrl` and then `verifyCrlSignatureSync` against `candidates`, both in the parser
 * thread: hashing the TBS (and Node's copy of it for an asynchronous verify) no longer
 * runs on the caller's event loop. `signer` is null when no candidate verified it.
 */
export async function parseAndVerifyCrlOffThread(
  data: Buffer,
  fileType: CrlFileType,
  candidates: X509Certificate[],
  opts: OffThreadOptions = {},
): Promise<{ crl: ParsedCrl; signer: X509Certificate | null }> {
  const { crl, signer } = await offThread(data, fileType, candidates, opts);
  return { crl, signer: candidates[signer] ?? null };
}
