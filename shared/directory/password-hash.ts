/**
 * Verification of passwords stored in an LDAP password attribute
 * (SMTP AUTH method `password-attribute`, SPEC 2.1).
 *
 * Supported (scheme names case-insensitive):
 *   {SHA} {SSHA} {SHA256} {SSHA256} {SHA384} {SSHA384} {SHA512} {SSHA512}
 *   {MD5} {SMD5}  — RFC 2307 / OpenLDAP style, base64(digest [+ salt])
 *   {CRYPT}       — glibc crypt(3): `$1$` (md5-crypt), `$5$` (sha256-crypt),
 *                   `$6$` (sha512-crypt); implemented here, Node has no crypt().
 *   {PBKDF2} {PBKDF2-SHA1} {PBKDF2-SHA256} {PBKDF2-SHA512} — 389 Directory
 *                   Server's `iterations$salt$hash` (passlib's adapted base64);
 *                   {PBKDF2} is the short name of {PBKDF2-SHA1}.
 *   {PBKDF2_SHA256} — 389-ds's older C plugin: base64(4-byte iterations,
 *                   64-byte salt, 256-byte HMAC-SHA256 key).
 *   {CLEARTEXT} and values without a scheme — plain text.
 * Any other scheme (ARGON2, GOST_YESCRYPT, crypt's `$y$` or DES, ...) is
 * `unsupported-scheme`, named in the verdict so that the event can say which:
 * it never verifies (fail closed).
 *
 * PBKDF2 runs on libuv's thread pool (node:crypto's async pbkdf2), so a costly
 * stored value never stalls the event loop; iteration counts are bounded.
 * All final comparisons go through {@link safeEqual}.
 */
import { createHash, pbkdf2, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const pbkdf2Async = promisify(pbkdf2);

export type PasswordVerdict =
  | { result: 'match' | 'mismatch' }
  /** `scheme`: the stored value's scheme as it names it, e.g. `ARGON2` or `CRYPT $y$`. */
  | { result: 'unsupported-scheme'; scheme: string };

/**
 * Constant-time equality, also when lengths differ: both sides are hashed
 * first, so timingSafeEqual always sees two 32-byte buffers and the time
 * taken reveals neither the content nor the length of the stored value.
 */
export function safeEqual(a: Buffer, b: Buffer): boolean {
  const da = createHash('sha256').update(a).digest();
  const db = createHash('sha256').update(b).digest();
  return timingSafeEqual(da, db);
}

interface DigestScheme {
  algorithm: string;
  length: number;
  salted: boolean;
}

const DIGEST_SCHEMES: Readonly<Record<string, DigestScheme>> = {
  MD5: { algorithm: 'md5', length: 16, salted: false },
  SMD5: { algorithm: 'md5', length: 16, salted: true },
  SHA: { algorithm: 'sha1', length: 20, salted: false },
  SSHA: { algorithm: 'sha1', length: 20, salted: true },
  SHA256: { algorithm: 'sha256', length: 32, salted: false },
  SSHA256: { algorithm: 'sha256', length: 32, salted: true },
  SHA384: { algorithm: 'sha384', length: 48, salted: false },
  SSHA384: { algorithm: 'sha384', length: 48, salted: true },
  SHA512: { algorithm: 'sha512', length: 64, salted: false },
  SSHA512: { algorithm: 'sha512', length: 64, salted: true },
};

/** 389-ds pwdchan schemes: HMAC digest and its length (the stored key is exactly one digest long). */
const PBKDF2_SCHEMES: Readonly<Record<string, { digest: string; length: number }>> = {
  PBKDF2: { digest: 'sha1', length: 20 },
  'PBKDF2-SHA1': { digest: 'sha1', length: 20 },
  'PBKDF2-SHA256': { digest: 'sha256', length: 32 },
  'PBKDF2-SHA512': { digest: 'sha512', length: 64 },
};

/**
 * Stored values asking for more iterations never verify: about 1 s of one
 * thread-pool thread for PBKDF2-SHA512 here, a hundred times 389-ds's default,
 * but a bound on what a hostile or mistaken directory value can cost.
 */
export const MAX_PBKDF2_ITERATIONS = 1_000_000;

const SCHEME_RE = /^\{([A-Za-z0-9._-]+)\}/;
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/** Whether `given` matches the `stored` attribute value. Never rejects. */
export async function verifyStoredPassword(stored: string, given: string): Promise<PasswordVerdict> {
  const verdict = (ok: boolean): PasswordVerdict => ({ result: ok ? 'match' : 'mismatch' });
  // An empty password never authenticates, whatever is stored.
  if (given === '' || stored === '') return verdict(false);
  const m = SCHEME_RE.exec(stored);
  if (!m) return verdict(safeEqual(Buffer.from(stored, 'utf8'), Buffer.from(given, 'utf8')));
  const scheme = (m[1] ?? '').toUpperCase();
  const rest = stored.slice(m[0].length);
  const password = Buffer.from(given, 'utf8');
  try {
    if (scheme === 'CLEARTEXT') return verdict(safeEqual(Buffer.from(rest, 'utf8'), password));
    if (scheme === 'CRYPT') return verifyCrypt(rest, password);
    const digestScheme = DIGEST_SCHEMES[scheme];
    if (digestScheme) return verdict(verifyDigest(digestScheme, rest, password));
    const pbkdf2Scheme = PBKDF2_SCHEMES[scheme];
    if (pbkdf2Scheme) return await verifyPbkdf2(scheme, pbkdf2Scheme, rest, password);
    if (scheme === 'PBKDF2_SHA256') return await verifyPbkdf2Sha256C(rest, password);
    return { result: 'unsupported-scheme', scheme: m[1] ?? '' };
  } catch {
    // A malformed stored value is a mismatch, not an error the caller must handle.
    return verdict(false);
  }
}

/** 389-ds pwdchan and passlib's "adapted base64": `.` for `+`, padding optional. */
function adaptedBase64(s: string): Buffer | null {
  const b64 = s.replace(/\./g, '+');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return null;
  return Buffer.from(b64, 'base64');
}

function tooManyIterations(scheme: string, iterations: number): PasswordVerdict {
  return { result: 'unsupported-scheme', scheme: `${scheme} with ${iterations} iterations (certgate verifies at most ${MAX_PBKDF2_ITERATIONS})` };
}

/** `{PBKDF2-SHA256}10000$salt$key`, salt and key in adapted base64. */
async function verifyPbkdf2(name: string, scheme: { digest: string; length: number }, body: string, password: Buffer): Promise<PasswordVerdict> {
  const m = /^([0-9]{1,10})\$([^$]+)\$([^$]+)$/.exec(body.trim());
  if (!m) return { result: 'mismatch' };
  const iterations = Number(m[1]);
  const salt = adaptedBase64(m[2] ?? '');
  const key = adaptedBase64(m[3] ?? '');
  if (!salt || !key || key.length !== scheme.length || iterations < 1) return { result: 'mismatch' };
  if (iterations > MAX_PBKDF2_ITERATIONS) return tooManyIterations(name, iterations);
  const computed = await pbkdf2Async(password, salt, iterations, key.length, scheme.digest);
  return { result: safeEqual(computed, key) ? 'match' : 'mismatch' };
}

/** `{PBKDF2_SHA256}` of 389-ds's C plugin: base64 of iterations (uint32 BE), a 64-byte salt and a 256-byte key. */
async function verifyPbkdf2Sha256C(body: string, password: Buffer): Promise<PasswordVerdict> {
  const trimmed = body.trim();
  if (!BASE64_RE.test(trimmed)) return { result: 'mismatch' };
  const raw = Buffer.from(trimmed, 'base64');
  if (raw.length !== 4 + 64 + 256) return { result: 'mismatch' };
  const iterations = raw.readUInt32BE(0);
  if (iterations < 1) return { result: 'mismatch' };
  if (iterations > MAX_PBKDF2_ITERATIONS) return tooManyIterations('PBKDF2_SHA256', iterations);
  const key = raw.subarray(68);
  const computed = await pbkdf2Async(password, raw.subarray(4, 68), iterations, key.length, 'sha256');
  return { result: safeEqual(computed, key) ? 'match' : 'mismatch' };
}

function verifyDigest(scheme: DigestScheme, encoded: string, password: Buffer): boolean {
  const trimmed = encoded.trim();
  if (!BASE64_RE.test(trimmed)) return false;
  const raw = Buffer.from(trimmed, 'base64');
  if (scheme.salted ? raw.length <= scheme.length : raw.length !== scheme.length) return false;
  const digest = raw.subarray(0, scheme.length);
  const salt = raw.subarray(scheme.length);
  const computed = createHash(scheme.algorithm).update(password).update(salt).digest();
  return safeEqual(computed, digest);
}

function verifyCrypt(stored: string, password: Buffer): PasswordVerdict {
  const value = stored.trim();
  // Another crypt(3) method (`$y$` yescrypt, `$2b$` bcrypt, `$7$`, DES without a prefix): unsupported, not wrong.
  const method = /^\$([^$]*)\$/.exec(value)?.[1];
  if (method !== '1' && method !== '5' && method !== '6') return { result: 'unsupported-scheme', scheme: method === undefined ? 'CRYPT (DES)' : `CRYPT $${method}$` };
  const parsed = parseCrypt(value);
  if (!parsed) return { result: 'mismatch' };
  const computed =
    parsed.id === '1'
      ? md5Crypt(password, parsed.salt)
      : shaCrypt(parsed.id === '5' ? SHA256_CRYPT : SHA512_CRYPT, password, parsed.salt, parsed.rounds);
  return { result: safeEqual(Buffer.from(computed, 'ascii'), Buffer.from(parsed.hash, 'ascii')) ? 'match' : 'mismatch' };
}

// ---------------------------------------------------------------------------
// crypt(3) — md5-crypt (Poul-Henning Kamp) and sha-crypt (Ulrich Drepper,
// https://www.akkadia.org/drepper/SHA-crypt.txt), verification only.

/**
 * sha-crypt hashes with more rounds never verify. Verification is synchronous
 * and costs ~4 µs per round here (default 5000 rounds ≈ 20 ms); 1M rounds
 * (≈ 4 s) still admits passlib's default of 656000 but bounds the stall a
 * hostile or mistaken directory value can cause.
 */
const MAX_SHA_CRYPT_ROUNDS = 1_000_000;
const CRYPT_ALPHABET = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

interface ParsedCrypt {
  id: '1' | '5' | '6';
  salt: Buffer;
  rounds: number;
  hash: string;
}

function parseCrypt(stored: string): ParsedCrypt | null {
  const m = /^\$(1|5|6)\$(?:rounds=([0-9]{1,10})\$)?([^$]*)\$([./0-9A-Za-z]+)$/.exec(stored);
  if (!m) return null;
  const id = m[1] as ParsedCrypt['id'];
  const salt = m[3] ?? '';
  const hash = m[4] ?? '';
  if (id === '1') {
    if (m[2] !== undefined || salt.length > 8 || hash.length !== 22) return null;
    return { id, salt: Buffer.from(salt, 'utf8'), rounds: 1000, hash };
  }
  if (salt.length > 16 || hash.length !== (id === '5' ? 43 : 86)) return null;
  // glibc clamps the requested rounds into [1000, 999999999].
  const rounds = m[2] === undefined ? 5000 : Math.min(Math.max(Number(m[2]), 1000), 999_999_999);
  if (rounds > MAX_SHA_CRYPT_ROUNDS) return null;
  return { id, salt: Buffer.from(salt, 'utf8'), rounds, hash };
}

/** crypt's base64: 24 bits from three bytes, emitted least-significant 6 bits first. */
function encode24(b2: number, b1: number, b0: number, chars: number): string {
  let w = (b2 << 16) | (b1 << 8) | b0;
  let out = '';
  for (let i = 0; i < chars; i++) {
    out += CRYPT_ALPHABET[w & 0x3f];
    w >>>= 6;
  }
  return out;
}

/** Encodes a digest following a table of byte-index triples (the last one may be shorter). */
function encodeDigest(digest: Buffer, order: ReadonlyArray<readonly [number, number, number, number]>): string {
  return order.map(([a, b, c, n]) => encode24(a < 0 ? 0 : digest[a]!, b < 0 ? 0 : digest[b]!, digest[c]!, n)).join('');
}

function md5Crypt(password: Buffer, salt: Buffer): string {
  const md5 = () => createHash('md5');
  const alt = md5().update(password).update(salt).update(password).digest();
  const ctx = md5().update(password).update('$1$').update(salt);
  for (let pl = password.length; pl > 0; pl -= 16) ctx.update(alt.subarray(0, Math.min(pl, 16)));
  for (let i = password.length; i > 0; i >>= 1) ctx.update(i & 1 ? Buffer.from([0]) : password.subarray(0, 1));
  let final = ctx.digest();
  for (let i = 0; i < 1000; i++) {
    const c = md5();
    c.update(i & 1 ? password : final);
    if (i % 3) c.update(salt);
    if (i % 7) c.update(password);
    c.update(i & 1 ? final : password);
    final = c.digest();
  }
  return encodeDigest(final, [
    [0, 6, 12, 4],
    [1, 7, 13, 4],
    [2, 8, 14, 4],
    [3, 9, 15, 4],
    [4, 10, 5, 4],
    [-1, -1, 11, 2],
  ]);
}

interface ShaCryptVariant {
  algorithm: 'sha256' | 'sha512';
  size: number;
  order: ReadonlyArray<readonly [number, number, number, number]>;
}

/** Byte order of the final encodings, as in Drepper's reference implementation. */
const SHA256_CRYPT: ShaCryptVariant = {
  algorithm: 'sha256',
  size: 32,
  order: [
    [0, 10, 20, 4],
    [21, 1, 11, 4],
    [12, 22, 2, 4],
    [3, 13, 23, 4],
    [24, 4, 14, 4],
    [15, 25, 5, 4],
    [6, 16, 26, 4],
    [27, 7, 17, 4],
    [18, 28, 8, 4],
    [9, 19, 29, 4],
    [-1, 31, 30, 3],
  ],
};

const SHA512_CRYPT: ShaCryptVariant = {
  algorithm: 'sha512',
  size: 64,
  order: [
    [0, 21, 42, 4],
    [22, 43, 1, 4],
    [44, 2, 23, 4],
    [3, 24, 45, 4],
    [25, 46, 4, 4],
    [47, 5, 26, 4],
    [6, 27, 48, 4],
    [28, 49, 7, 4],
    [50, 8, 29, 4],
    [9, 30, 51, 4],
    [31, 52, 10, 4],
    [53, 11, 32, 4],
    [12, 33, 54, 4],
    [34, 55, 13, 4],
    [56, 14, 35, 4],
    [15, 36, 57, 4],
    [37, 58, 16, 4],
    [59, 17, 38, 4],
    [18, 39, 60, 4],
    [40, 61, 19, 4],
    [62, 20, 41, 4],
    [-1, -1, 63, 2],
  ],
};

/** Repeats `block` to exactly `length` bytes. */
function stretch(block: Buffer, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let off = 0; off < length; off += block.length) block.copy(out, off, 0, Math.min(block.length, length - off));
  return out;
}

function shaCrypt(v: ShaCryptVariant, password: Buffer, salt: Buffer, rounds: number): string {
  const h = () => createHash(v.algorithm);
  const b = h().update(password).update(salt).update(password).digest();
  const a = h().update(password).update(salt);
  let cnt = password.length;
  for (; cnt > v.size; cnt -= v.size) a.update(b);
  a.update(b.subarray(0, cnt));
  for (let i = password.length; i > 0; i >>= 1) a.update(i & 1 ? b : password);
  const aDigest = a.digest();

  const dp = h();
  for (let i = 0; i < password.length; i++) dp.update(password);
  const p = stretch(dp.digest(), password.length);

  const ds = h();
  for (let i = 0; i < 16 + aDigest[0]!; i++) ds.update(salt);
  const s = stretch(ds.digest(), salt.length);

  let c = aDigest;
  for (let r = 0; r < rounds; r++) {
    const ctx = h();
    ctx.update(r & 1 ? p : c);
    if (r % 3) ctx.update(s);
    if (r % 7) ctx.update(p);
    ctx.update(r & 1 ? c : p);
    c = ctx.digest();
  }
  return encodeDigest(c, v.order);
}
