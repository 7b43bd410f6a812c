import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { MAX_PBKDF2_ITERATIONS, safeEqual, verifyStoredPassword } from '../shared/directory/password-hash.ts';

const execFileAsync = promisify(execFile);

/** Hashes made by the real tools (slappasswd from slapd, openssl), as directories store them. */
async function slappasswd(scheme: string, password: string, cryptFormat?: string): Promise<string> {
  const args = ['-o', 'module-load=pw-sha2.so', '-h', scheme, '-s', password, ...(cryptFormat ? ['-c', cryptFormat] : [])];
  const { stdout } = await execFileAsync('/usr/sbin/slappasswd', args);
  return stdout.trim();
}

async function opensslPasswd(flag: '-1' | '-5' | '-6', password: string): Promise<string> {
  const { stdout } = await execFileAsync('openssl', ['passwd', flag, password]);
  return stdout.trim();
}

/** Hashes made by 389 Directory Server's own tool (`pwdhash -s SCHEME`), as it stores them. */
async function pwdhash(scheme: string, password: string): Promise<string> {
  const { stdout } = await execFileAsync('/usr/bin/pwdhash', ['-s', scheme, password]);
  return stdout.trim();
}

/** True when the stored value verifies; throws on a scheme reported as unsupported, so a test never mistakes one for a mismatch. */
async function matches(stored: string, given: string): Promise<boolean> {
  const verdict = await verifyStoredPassword(stored, given);
  if (verdict.result === 'unsupported-scheme') throw new Error(`unsupported scheme ${verdict.scheme} for ${stored}`);
  return verdict.result === 'match';
}

const PASSWORD = 'correct horse battery staple';
const UNICODE_PASSWORD = 'pässwörd 日本 😀';

describe('verifyStoredPassword', () => {
  const hashes = new Map<string, string>();

  before(async () => {
    const jobs: Array<[string, Promise<string>]> = [];
    for (const scheme of ['{SSHA}', '{SHA}', '{MD5}', '{SMD5}', '{SHA256}', '{SSHA256}', '{SHA384}', '{SSHA384}', '{SHA512}', '{SSHA512}']) {
      jobs.push([scheme, slappasswd(scheme, PASSWORD)]);
      jobs.push([`${scheme} unicode`, slappasswd(scheme, UNICODE_PASSWORD)]);
    }
    jobs.push(['{CRYPT}$6$ rounds', slappasswd('{CRYPT}', PASSWORD, '$6$rounds=2000$%.16s')]);
    jobs.push(['{CRYPT}$5$ rounds', slappasswd('{CRYPT}', PASSWORD, '$5$rounds=1200$%.16s')]);
    jobs.push(['{CRYPT}$1$ slappasswd', slappasswd('{CRYPT}', PASSWORD, '$1$%.8s')]);
    for (const flag of ['-1', '-5', '-6'] as const) {
      jobs.push([`openssl ${flag}`, opensslPasswd(flag, PASSWORD)]);
      jobs.push([`openssl ${flag} unicode`, opensslPasswd(flag, UNICODE_PASSWORD)]);
      jobs.push([`openssl ${flag} long`, opensslPasswd(flag, 'L'.repeat(200))]);
      jobs.push([`openssl ${flag} one char`, opensslPasswd(flag, 'x')]);
    }
    for (const [name, job] of jobs) hashes.set(name, await job);
  });

  const hash = (name: string): string => {
    const h = hashes.get(name);
    assert.ok(h, `no hash ${name}`);
    return h;
  };

  for (const scheme of ['{SSHA}', '{SHA}', '{MD5}', '{SMD5}', '{SHA256}', '{SSHA256}', '{SHA384}', '{SSHA384}', '{SHA512}', '{SSHA512}']) {
    test(`${scheme} from slappasswd`, async () => {
      const stored = hash(scheme);
      assert.ok(stored.startsWith(scheme), stored);
      assert.equal(await matches(stored, PASSWORD), true);
      assert.equal(await matches(stored, PASSWORD + ' '), false);
      assert.equal(await matches(stored, 'Correct horse battery staple'), false);
      assert.equal(await matches(hash(`${scheme} unicode`), UNICODE_PASSWORD), true);
      assert.equal(await matches(hash(`${scheme} unicode`), 'passwort'), false);
    });
  }

  test('scheme names are case-insensitive', async () => {
    const stored = hash('{SSHA}');
    assert.equal(await matches(stored.replace('{SSHA}', '{ssha}'), PASSWORD), true);
    assert.equal(await matches(stored.replace('{SSHA}', '{SsHa}'), PASSWORD), true);
    const crypt = `{crypt}${hash('openssl -6')}`;
    assert.equal(await matches(crypt, PASSWORD), true);
  });

  for (const [flag, prefix] of [['-1', '$1$'], ['-5', '$5$'], ['-6', '$6$']] as const) {
    test(`{CRYPT} ${prefix} from openssl passwd ${flag}`, async () => {
      for (const [variant, password] of [['', PASSWORD], [' unicode', UNICODE_PASSWORD], [' long', 'L'.repeat(200)], [' one char', 'x']] as const) {
        const raw = hash(`openssl ${flag}${variant}`);
        assert.ok(raw.startsWith(prefix), raw);
        assert.equal(await matches(`{CRYPT}${raw}`, password), true, `${flag}${variant}`);
        assert.equal(await matches(`{CRYPT}${raw}`, password.slice(0, -1) || 'y'), false, `${flag}${variant} wrong`);
      }
    });
  }

  test('{CRYPT} from slappasswd, with explicit rounds', async () => {
    for (const name of ['{CRYPT}$6$ rounds', '{CRYPT}$5$ rounds', '{CRYPT}$1$ slappasswd']) {
      const stored = hash(name);
      assert.ok(stored.startsWith('{CRYPT}$'), stored);
      assert.equal(await matches(stored, PASSWORD), true, name);
      assert.equal(await matches(stored, 'wrong'), false, name);
    }
    assert.match(hash('{CRYPT}$6$ rounds'), /^\{CRYPT\}\$6\$rounds=2000\$/);
  });

  test('known glibc test vectors (Drepper)', async () => {
    assert.equal(await matches('{CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5', 'Hello world!'),
      true,
    );
    assert.equal(await matches(
        '{CRYPT}$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.',
        'Hello world!',
      ),
      true,
    );
  });

  test('{CLEARTEXT} and values without a scheme compare as plain text', async () => {
    assert.equal(await matches('{CLEARTEXT}secret', 'secret'), true);
    assert.equal(await matches('{cleartext}secret', 'secret'), true);
    assert.equal(await matches('{CLEARTEXT}secret', 'Secret'), false);
    assert.equal(await matches('secret', 'secret'), true);
    assert.equal(await matches('secret', 'secret2'), false);
    assert.equal(await matches('secret', 'secre'), false);
    assert.equal(await matches(UNICODE_PASSWORD, UNICODE_PASSWORD), true);
    // A brace that is not a scheme prefix is part of a plain password.
    assert.equal(await matches('{not a scheme', '{not a scheme'), true);
  });

  test('an empty password never verifies', async () => {
    assert.equal(await matches('', ''), false);
    assert.equal(await matches('{CLEARTEXT}', ''), false);
    assert.equal(await matches(hash('{SSHA}'), ''), false);
  });

  test('unknown schemes never verify (fail closed) and are named in the verdict', async () => {
    assert.deepEqual(await verifyStoredPassword('{ARGON2}$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$aGFzaA', 'secret'), { result: 'unsupported-scheme', scheme: 'ARGON2' });
    assert.deepEqual(await verifyStoredPassword(await pwdhash('GOST_YESCRYPT', 'secret'), 'secret'), { result: 'unsupported-scheme', scheme: 'GOST_YESCRYPT' });
    assert.deepEqual(await verifyStoredPassword('{CRYPT}$y$j9T$ZzW5Gd0RwU6FzgrK/GZD51$E4BYTLcODQ86QAdEpBtLhX6Sq4gW6K5XUYj7Zk.7Yx6', 'x'), { result: 'unsupported-scheme', scheme: 'CRYPT $y$' });
    assert.deepEqual(await verifyStoredPassword('{CRYPT}ab01FAX.bQRSU', 'x'), { result: 'unsupported-scheme', scheme: 'CRYPT (DES)' });
    // A known scheme with a malformed body is a mismatch, not an unknown scheme.
    assert.deepEqual(await verifyStoredPassword('{PBKDF2}secret', 'secret'), { result: 'mismatch' });
    assert.deepEqual(await verifyStoredPassword('{PBKDF2}secret', '{PBKDF2}secret'), { result: 'mismatch' });
  });

  test('389 Directory Server PBKDF2 schemes, from pwdhash', async () => {
    for (const scheme of ['PBKDF2', 'PBKDF2-SHA1', 'PBKDF2-SHA256', 'PBKDF2-SHA512', 'PBKDF2_SHA256']) {
      const stored = await pwdhash(scheme, PASSWORD);
      assert.match(stored, /^\{PBKDF2[-_A-Z0-9]*\}/, stored);
      assert.equal(await matches(stored, PASSWORD), true, `${scheme}: ${stored}`);
      assert.equal(await matches(stored, PASSWORD + 'x'), false, scheme);
      assert.equal(await matches(await pwdhash(scheme, UNICODE_PASSWORD), UNICODE_PASSWORD), true, `${scheme} unicode`);
    }
    // pwdhash -s PBKDF2 writes {PBKDF2-SHA1}; the server also verifies the same body under {PBKDF2}.
    const sha1 = await pwdhash('PBKDF2-SHA1', PASSWORD);
    assert.equal(await matches(sha1.replace('{PBKDF2-SHA1}', '{PBKDF2}'), PASSWORD), true);
    assert.equal(await matches(sha1.replace('{PBKDF2-SHA1}', '{pbkdf2-sha1}'), PASSWORD), true);
  });

  test('389-ds SSHA384, SHA384, MD5, SMD5 and the other digests, from pwdhash', async () => {
    for (const scheme of ['SSHA', 'SHA', 'SSHA256', 'SHA256', 'SSHA384', 'SHA384', 'SSHA512', 'SHA512', 'MD5', 'SMD5', 'CRYPT-SHA512', 'CRYPT-MD5', 'CLEAR']) {
      const stored = await pwdhash(scheme, PASSWORD);
      assert.equal(await matches(stored, PASSWORD), true, `${scheme}: ${stored}`);
      assert.equal(await matches(stored, 'wrong'), false, scheme);
    }
  });

  test('PBKDF2 with more iterations than certgate verifies is refused without computing it', async () => {
    const stored = await pwdhash('PBKDF2-SHA256', PASSWORD);
    const costly = stored.replace(/\}10000\$/, `}${MAX_PBKDF2_ITERATIONS + 1}$`);
    assert.notEqual(costly, stored);
    const started = performance.now();
    const verdict = await verifyStoredPassword(costly, PASSWORD);
    assert.equal(verdict.result, 'unsupported-scheme');
    assert.match(verdict.result === 'unsupported-scheme' ? verdict.scheme : '', /PBKDF2-SHA256 with 1000001 iterations/);
    assert.ok(performance.now() - started < 1000);
    const raw = Buffer.from((await pwdhash('PBKDF2_SHA256', PASSWORD)).slice('{PBKDF2_SHA256}'.length), 'base64');
    raw.writeUInt32BE(MAX_PBKDF2_ITERATIONS + 1, 0);
    assert.equal((await verifyStoredPassword(`{PBKDF2_SHA256}${raw.toString('base64')}`, PASSWORD)).result, 'unsupported-scheme');
  });

  test('malformed stored values never verify and never throw', async () => {
    const digest = createHash('sha1').update('secret').digest();
    assert.equal(await matches(`{SHA}${digest.toString('base64')}`, 'secret'), true);
    const malformed = [
      `{SHA}${digest.subarray(0, 19).toString('base64')}`, // truncated digest
      `{SSHA}${digest.toString('base64')}`, // no salt
      '{SSHA}!!!not base64!!!',
      '{SHA}',
      '{CRYPT}',
      '{CRYPT}$6$',
      '{CRYPT}$6$salt$tooshort',
      '{CRYPT}$1$toolongsalt$aaaaaaaaaaaaaaaaaaaaaa',
      '{CRYPT}$2y$10$abcdefghijklmnopqrstuuJ0Yy0W1Pp6jY1bWm1Wk0n4H9kJ5vKqC', // bcrypt: unsupported
      '{CRYPT}ab01FAX.bQRSU', // traditional DES: unsupported
      `{CRYPT}$6$rounds=5000000$saltsalt$${'a'.repeat(86)}`, // too costly to check
    ];
    for (const stored of malformed) {
      assert.notEqual((await verifyStoredPassword(stored, 'secret')).result, 'match', stored);
    }
  });
});

describe('safeEqual', () => {
  test('compares content, also for different lengths', async () => {
    assert.equal(safeEqual(Buffer.from('abc'), Buffer.from('abc')), true);
    assert.equal(safeEqual(Buffer.from('abc'), Buffer.from('abd')), false);
    assert.equal(safeEqual(Buffer.from('abc'), Buffer.from('abcd')), false);
    assert.equal(safeEqual(Buffer.alloc(0), Buffer.from('a')), false);
  });
});
