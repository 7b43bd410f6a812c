import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { safeEqual, verifyStoredPassword } from '../shared/directory/password-hash.ts';

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
    test(`${scheme} from slappasswd`, () => {
      const stored = hash(scheme);
      assert.ok(stored.startsWith(scheme), stored);
      assert.equal(verifyStoredPassword(stored, PASSWORD), true);
      assert.equal(verifyStoredPassword(stored, PASSWORD + ' '), false);
      assert.equal(verifyStoredPassword(stored, 'Correct horse battery staple'), false);
      assert.equal(verifyStoredPassword(hash(`${scheme} unicode`), UNICODE_PASSWORD), true);
      assert.equal(verifyStoredPassword(hash(`${scheme} unicode`), 'passwort'), false);
    });
  }

  test('scheme names are case-insensitive', () => {
    const stored = hash('{SSHA}');
    assert.equal(verifyStoredPassword(stored.replace('{SSHA}', '{ssha}'), PASSWORD), true);
    assert.equal(verifyStoredPassword(stored.replace('{SSHA}', '{SsHa}'), PASSWORD), true);
    const crypt = `{crypt}${hash('openssl -6')}`;
    assert.equal(verifyStoredPassword(crypt, PASSWORD), true);
  });

  for (const [flag, prefix] of [['-1', '$1$'], ['-5', '$5$'], ['-6', '$6$']] as const) {
    test(`{CRYPT} ${prefix} from openssl passwd ${flag}`, () => {
      for (const [variant, password] of [['', PASSWORD], [' unicode', UNICODE_PASSWORD], [' long', 'L'.repeat(200)], [' one char', 'x']] as const) {
        const raw = hash(`openssl ${flag}${variant}`);
        assert.ok(raw.startsWith(prefix), raw);
        assert.equal(verifyStoredPassword(`{CRYPT}${raw}`, password), true, `${flag}${variant}`);
        assert.equal(verifyStoredPassword(`{CRYPT}${raw}`, password.slice(0, -1) || 'y'), false, `${flag}${variant} wrong`);
      }
    });
  }

  test('{CRYPT} from slappasswd, with explicit rounds', () => {
    for (const name of ['{CRYPT}$6$ rounds', '{CRYPT}$5$ rounds', '{CRYPT}$1$ slappasswd']) {
      const stored = hash(name);
      assert.ok(stored.startsWith('{CRYPT}$'), stored);
      assert.equal(verifyStoredPassword(stored, PASSWORD), true, name);
      assert.equal(verifyStoredPassword(stored, 'wrong'), false, name);
    }
    assert.match(hash('{CRYPT}$6$ rounds'), /^\{CRYPT\}\$6\$rounds=2000\$/);
  });

  test('known glibc test vectors (Drepper)', () => {
    assert.equal(
      verifyStoredPassword('{CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5', 'Hello world!'),
      true,
    );
    assert.equal(
      verifyStoredPassword(
        '{CRYPT}$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.',
        'Hello world!',
      ),
      true,
    );
  });

  test('{CLEARTEXT} and values without a scheme compare as plain text', () => {
    assert.equal(verifyStoredPassword('{CLEARTEXT}secret', 'secret'), true);
    assert.equal(verifyStoredPassword('{cleartext}secret', 'secret'), true);
    assert.equal(verifyStoredPassword('{CLEARTEXT}secret', 'Secret'), false);
    assert.equal(verifyStoredPassword('secret', 'secret'), true);
    assert.equal(verifyStoredPassword('secret', 'secret2'), false);
    assert.equal(verifyStoredPassword('secret', 'secre'), false);
    assert.equal(verifyStoredPassword(UNICODE_PASSWORD, UNICODE_PASSWORD), true);
    // A brace that is not a scheme prefix is part of a plain password.
    assert.equal(verifyStoredPassword('{not a scheme', '{not a scheme'), true);
  });

  test('an empty password never verifies', () => {
    assert.equal(verifyStoredPassword('', ''), false);
    assert.equal(verifyStoredPassword('{CLEARTEXT}', ''), false);
    assert.equal(verifyStoredPassword(hash('{SSHA}'), ''), false);
  });

  test('unknown schemes never verify (fail closed)', () => {
    assert.equal(verifyStoredPassword('{PBKDF2}secret', 'secret'), false);
    assert.equal(verifyStoredPassword('{ARGON2}$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$aGFzaA', 'secret'), false);
    assert.equal(verifyStoredPassword('{PBKDF2}secret', '{PBKDF2}secret'), false);
  });

  test('malformed stored values never verify and never throw', () => {
    const digest = createHash('sha1').update('secret').digest();
    assert.equal(verifyStoredPassword(`{SHA}${digest.toString('base64')}`, 'secret'), true);
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
      assert.doesNotThrow(() => verifyStoredPassword(stored, 'secret'));
      assert.equal(verifyStoredPassword(stored, 'secret'), false, stored);
    }
  });
});

describe('safeEqual', () => {
  test('compares content, also for different lengths', () => {
    assert.equal(safeEqual(Buffer.from('abc'), Buffer.from('abc')), true);
    assert.equal(safeEqual(Buffer.from('abc'), Buffer.from('abd')), false);
    assert.equal(safeEqual(Buffer.from('abc'), Buffer.from('abcd')), false);
    assert.equal(safeEqual(Buffer.alloc(0), Buffer.from('a')), false);
  });
});
