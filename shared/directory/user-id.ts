/**
 * The text form of a user id read from a directory attribute (SPEC §2.1,
 * `userIdAttribute`): text values as they are; `objectGUID` in the standard
 * GUID form, `objectSid` as `S-1-5-21-...`, any other binary value as
 * uppercase hex. Binary values must never be decoded as text: the bytes of
 * two different GUIDs can decode to the same garbled string.
 *
 * Pure functions, no I/O.
 */
import { hasControlChars } from '../util/text.ts';

/** Attributes whose values are binary whatever bytes they hold. */
const GUID_ATTRIBUTES: ReadonlySet<string> = new Set(['objectguid']);
const SID_ATTRIBUTES: ReadonlySet<string> = new Set(['objectsid']);

/**
 * A value as ldapts hands it over: a Buffer when it is not valid UTF-8, else a
 * string (decoded strictly, so `Buffer.from(value, 'utf8')` gives the exact bytes back).
 */
export function userIdText(attribute: string, value: string | Buffer): string {
  const name = attribute.toLowerCase();
  const known = GUID_ATTRIBUTES.has(name) || SID_ATTRIBUTES.has(name);
  // Control characters (NUL included) never occur in a text id: such a value is binary.
  if (typeof value === 'string' && !known && !hasControlChars(value)) return value;
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  if (GUID_ATTRIBUTES.has(name)) return guidText(bytes) ?? hex(bytes);
  if (SID_ATTRIBUTES.has(name)) return sidText(bytes) ?? hex(bytes);
  return hex(bytes);
}

function hex(b: Buffer): string {
  return b.toString('hex').toUpperCase();
}

/**
 * Microsoft's GUID layout (`uuid.UUID(bytes_le=...)`): the first three fields
 * little-endian, the last two as stored; lowercase like Windows tools print it.
 */
export function guidText(b: Buffer): string | null {
  if (b.length !== 16) return null;
  const le = (from: number, to: number): string => Buffer.from(b.subarray(from, to)).reverse().toString('hex');
  const be = (from: number, to: number): string => b.subarray(from, to).toString('hex');
  return `${le(0, 4)}-${le(4, 6)}-${le(6, 8)}-${be(8, 10)}-${be(10, 16)}`;
}

/**
 * MS-DTYP §2.4.2.2: revision, sub-authority count, a 48-bit big-endian
 * identifier authority, then little-endian 32-bit sub-authorities.
 */
export function sidText(b: Buffer): string | null {
  if (b.length < 8) return null;
  const revision = b[0] as number;
  const count = b[1] as number;
  if (revision !== 1 || count > 15 || b.length !== 8 + 4 * count) return null;
  const authority = b.readUIntBE(2, 6);
  const subs: number[] = [];
  for (let i = 0; i < count; i++) subs.push(b.readUInt32LE(8 + 4 * i));
  return ['S', revision, authority, ...subs].join('-');
}
