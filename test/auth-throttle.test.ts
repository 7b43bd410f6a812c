// SPEC §2.4 authFailureThrottle: the pure decisions (keys, window, what counts) exhaustively,
// then the Redis counters with a real redis-server: two connections (as two workers) see
// one count, and with Redis gone each keeps its own.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import {
  bucketAt, canonicalUser, countsAsFailure, isThrottled, slidingCount, throttleKeys, THROTTLED,
} from '../shared/policy/auth-throttle.ts';
import { clientKey } from '../shared/policy/sender-groups.ts';
import { AuthThrottle } from '../worker/auth-throttle.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';

const W = 600;
const limit = { maxFailures: 5, windowSeconds: W };

describe('auth throttle decisions', () => {
  test('the reply is SPEC §2.4 word for word', () => {
    assert.deepEqual(THROTTLED, { code: 454, text: '4.7.0 Too many authentication failures, try again later' });
  });

  test('client keys: IPv4 as is, IPv4-mapped as IPv4, IPv6 by /64', () => {
    const cases: [string, string][] = [
      ['192.0.2.7', '192.0.2.7'],
      ['::ffff:192.0.2.7', '192.0.2.7'],
      ['::FFFF:c000:0207', '192.0.2.7'],
      ['2001:db8:1:2:3:4:5:6', '2001:db8:1:2::/64'],
      ['2001:db8:1:2:aaaa:bbbb:cccc:dddd', '2001:db8:1:2::/64'],
      ['2001:0db8:0001:0002::1', '2001:db8:1:2::/64'],
      ['::1', '::/64'],
      ['fe80::1%eth0', 'fe80::/64'],
      ['not an address', 'not an address'],
    ];
    for (const [address, key] of cases) assert.equal(clientKey(address), key, address);
  });

  test('user names count case-folded and NFKC-normalised, trimmed', () => {
    assert.equal(canonicalUser(' JDoe '), 'jdoe');
    assert.equal(canonicalUser('ｊｄｏｅ'), 'jdoe'); // full-width letters
    assert.equal(canonicalUser('Ä'), canonicalUser('A\u0308'));
  });

  test('every spelling of one account falls on one key: DOMAIN\\ prefix and @domain suffix dropped', () => {
    const spellings = [
      'asmith', 'ASMITH', 'ASmith', ' asmith ',
      'asmith@corp.example', 'ASMITH@CORP.EXAMPLE', 'asmith@other.example', 'asmith@',
      'CORP\\asmith', 'corp\\ASMITH', 'CORP\\asmith@corp.example', 'CORP\\ asmith', 'A\\B\\asmith',
      'ａｓｍｉｔｈ＠ｃｏｒｐ．ｅｘａｍｐｌｅ', // full-width, @ included: NFKC comes before the split
      'ＣＯＲＰ＼ａｓｍｉｔｈ', // full-width backslash
      'corp\ufe68asmith', // small reverse solidus, NFKC-equal to a backslash
      'asmith@corp.example@evil.example',
    ];
    for (const name of spellings) assert.equal(canonicalUser(name), 'asmith', JSON.stringify(name));
    const policy = { perClient: null, perUser: { maxFailures: 3, windowSeconds: 900 } };
    const ids = new Set(spellings.map((name) => throttleKeys(policy, '192.0.2.7', name)[0]?.id));
    assert.deepEqual([...ids], ['asmith'], 'one per-user counter for all of them');
  });

  test('different accounts stay apart; a name with nothing but a domain keeps its whole form', () => {
    assert.notEqual(canonicalUser('asmith'), canonicalUser('bsmith'));
    assert.notEqual(canonicalUser('CORP\\asmith'), canonicalUser('CORP\\bsmith'));
    const cases: [string, string][] = [
      ['a.smith@corp.example', 'a.smith'],
      ['@corp.example', '@corp.example'],
      ['CORP\\', 'corp\\'],
      ['CORP\\@corp.example', 'corp\\@corp.example'],
      ['', ''],
      ['   ', ''],
    ];
    for (const [name, key] of cases) assert.equal(canonicalUser(name), key, JSON.stringify(name));
  });

  test('canonicalUser is idempotent: a key normalised again is the same key', () => {
    for (const name of ['ASMITH', 'CORP\\asmith@corp.example', '@corp.example', 'CORP\\', 'Ä', 'ＣＯＲＰ＼ａｓｍｉｔｈ', ' x@y@z ']) {
      const key = canonicalUser(name);
      assert.equal(canonicalUser(key), key, JSON.stringify(name));
    }
  });

  test('keys: per client by default, per user only when set, never for an empty name', () => {
    const off = { perClient: null, perUser: null };
    const both = { perClient: limit, perUser: { maxFailures: 3, windowSeconds: 900 } };
    assert.deepEqual(throttleKeys(off, '192.0.2.7', 'jdoe'), []);
    assert.deepEqual(throttleKeys({ perClient: limit, perUser: null }, '192.0.2.7', 'jdoe').map((k) => [k.scope, k.id]), [['client', '192.0.2.7']]);
    assert.deepEqual(throttleKeys(both, '::ffff:192.0.2.7', 'JDoe').map((k) => [k.scope, k.id]), [['client', '192.0.2.7'], ['user', 'jdoe']]);
    assert.deepEqual(throttleKeys(both, '192.0.2.7', '  ').map((k) => k.scope), ['client']);
  });

  test('what counts as a failure', () => {
    for (const r of ['invalid-credentials', 'unknown-user', 'empty-password', 'ambiguous', 'not-allowed-by-allow-query']) assert.ok(countsAsFailure(r), r);
    for (const r of ['authenticated', 'directory-unavailable', 'throttled', 'tls-required', 'unknown-mechanism']) assert.ok(!countsAsFailure(r), r);
  });

  test('buckets are epoch-aligned and one window long', () => {
    assert.deepEqual(bucketAt(limit, 0), { bucket: 0, elapsed: 0 });
    assert.deepEqual(bucketAt(limit, W * 1000 - 1).bucket, 0);
    assert.deepEqual(bucketAt(limit, W * 1000), { bucket: 1, elapsed: 0 });
    assert.equal(bucketAt(limit, 1.5 * W * 1000).elapsed, 0.5);
  });

  test('sliding count against a log of failures: exact for even spreads, never under the current bucket, never over both', () => {
    // Every combination of counts and positions on a grid, checked against its bounds.
    for (let current = 0; current <= 8; current++) {
      for (let previous = 0; previous <= 8; previous++) {
        for (let step = 0; step <= 20; step++) {
          const now = 10 * W * 1000 + (step / 20) * W * 1000 - (step === 20 ? 1 : 0);
          const estimate = slidingCount(limit, now, { current, previous });
          assert.ok(estimate >= current && estimate <= current + previous, `${current}/${previous}/${step}`);
          assert.equal(isThrottled(limit, now, { current, previous }), estimate >= limit.maxFailures);
        }
      }
    }
    // One failure a minute for an hour, evenly: the estimate at any minute equals the true count of the last 10 minutes.
    const minute = 60_000;
    const log = Array.from({ length: 60 }, (_, i) => i * minute + minute / 2);
    for (let t = 20 * minute; t <= 59 * minute; t += minute) {
      const { bucket } = bucketAt(limit, t);
      const inBucket = (b: number) => log.filter((f) => f <= t && Math.floor(f / (W * 1000)) === b).length;
      const estimate = slidingCount(limit, t, { current: inBucket(bucket), previous: inBucket(bucket - 1) });
      const truth = log.filter((f) => f <= t && f > t - W * 1000).length;
      assert.ok(Math.abs(estimate - truth) <= 1, `at ${t / minute} min: estimate ${estimate}, truth ${truth}`);
    }
  });

  test('the limit is reached at maxFailures: with 5, the 6th AUTH is refused', () => {
    const now = 7 * W * 1000;
    assert.equal(isThrottled(limit, now, { current: 4, previous: 0 }), false);
    assert.equal(isThrottled(limit, now, { current: 5, previous: 0 }), true);
    // The previous bucket fades out over the window.
    assert.equal(isThrottled(limit, now + 0.1 * W * 1000, { current: 0, previous: 5 }), false);
    assert.equal(isThrottled(limit, now, { current: 0, previous: 5 }), true);
    assert.equal(isThrottled(limit, now + 0.5 * W * 1000, { current: 3, previous: 4 }), true);
    assert.equal(isThrottled(limit, now + 0.8 * W * 1000, { current: 3, previous: 4 }), false);
  });
});

describe('auth throttle counters in Redis', () => {
  let redis: TestRedis;
  const clients: Redis[] = [];
  const connect = (url: string) => {
    const c = new Redis(url, { enableOfflineQueue: false, commandTimeout: 500, maxRetriesPerRequest: 0, retryStrategy: () => 200 });
    c.on('error', () => undefined);
    clients.push(c);
    return c;
  };
  before(async () => {
    redis = await startRedis();
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await redis.stop();
  });

  const policy = { perClient: { maxFailures: 3, windowSeconds: 60 }, perUser: { maxFailures: 4, windowSeconds: 60 } };
  const ready = (c: Redis) => new Promise<void>((resolve) => (c.status === 'ready' ? resolve() : c.once('ready', () => resolve())));

  test('two workers count together, per client and per user; the window slides on', async () => {
    const [a, b] = [connect(redis.url), connect(redis.url)];
    await Promise.all([ready(a), ready(b)]);
    const [one, two] = [new AuthThrottle(a), new AuthThrottle(b)];
    const t0 = 1_000 * 60_000 + 1000; // just inside a bucket
    assert.equal(await one.check(policy, '192.0.2.1', 'jdoe', t0), null);
    await one.recordFailure(policy, '192.0.2.1', 'jdoe', t0);
    await two.recordFailure(policy, '192.0.2.1', 'JDoe', t0);
    assert.equal(await one.check(policy, '192.0.2.1', 'jdoe', t0), null);
    await two.recordFailure(policy, '::ffff:192.0.2.1', 'alice', t0);
    // 3 failures from the address across both workers: both refuse it now, whatever the user.
    assert.equal(await one.check(policy, '192.0.2.1', 'bob', t0), 'client');
    assert.equal(await two.check(policy, '192.0.2.1', 'bob', t0), 'client');
    // Another address is not throttled; jdoe has 2 failures of 4.
    assert.equal(await two.check(policy, '192.0.2.2', 'jdoe', t0), null);
    await one.recordFailure(policy, '192.0.2.3', 'jdoe', t0);
    await two.recordFailure(policy, '192.0.2.4', 'jdoe', t0);
    // jdoe has 4: refused from any address (the right password included: nothing is asked).
    assert.equal(await one.check(policy, '192.0.2.9', 'JDOE', t0), 'user');
    // Half a window after the bucket ended the previous bucket counts half: 2 of 4 for jdoe, 1.5 of 3 for the client.
    const later = t0 - 1000 + 60_000 + 30_000;
    assert.equal(await two.check(policy, '192.0.2.1', 'jdoe', later), null);
    // Two windows on, nothing is left.
    assert.equal(await one.check(policy, '192.0.2.1', 'jdoe', t0 + 120_000), null);
    const stored = await a.keys('certgate:authfail:*');
    assert.ok(stored.length > 0 && stored.every((k) => !k.includes('jdoe')), `no user name in a key: ${stored.join(' ')}`);
    const ttl = await a.pttl(stored[0] as string);
    assert.ok(ttl > 60_000 && ttl <= 120_000, `a bucket lives two windows (ttl ${ttl} ms)`);
  });

  test('spellings of one user share its Redis counter across workers', async () => {
    const [a, b] = [connect(redis.url), connect(redis.url)];
    await Promise.all([ready(a), ready(b)]);
    const [one, two] = [new AuthThrottle(a), new AuthThrottle(b)];
    const perUser = { perClient: null, perUser: { maxFailures: 4, windowSeconds: 60 } };
    const t0 = 3_000 * 60_000 + 1000;
    await one.recordFailure(perUser, '192.0.2.11', 'ASMITH', t0);
    await two.recordFailure(perUser, '192.0.2.12', 'asmith@corp.example', t0);
    await one.recordFailure(perUser, '192.0.2.13', 'CORP\\asmith', t0);
    assert.equal(await two.check(perUser, '192.0.2.14', 'asmith', t0), null, '3 of 4');
    await two.recordFailure(perUser, '192.0.2.15', 'ＣＯＲＰ＼ＡＳｍｉｔｈ', t0);
    for (const name of ['asmith', 'ASmith@Other.Example', 'corp\\ASMITH']) assert.equal(await one.check(perUser, '192.0.2.16', name, t0), 'user', name);
    assert.equal(await one.check(perUser, '192.0.2.16', 'bsmith', t0), null, 'another user is not throttled');
  });

  test('Redis unreachable: each process counts for itself, at once', async () => {
    const other = await startRedis();
    const [a, b] = [connect(other.url), connect(other.url)];
    await Promise.all([ready(a), ready(b)]);
    const [one, two] = [new AuthThrottle(a), new AuthThrottle(b)];
    await other.stop();
    const t0 = 2_000 * 60_000 + 1000;
    const started = Date.now();
    for (let i = 0; i < 3; i++) await one.recordFailure(policy, '198.51.100.1', 'x', t0);
    assert.equal(await one.check(policy, '198.51.100.1', 'x', t0), 'client', 'this process counted its own failures');
    assert.equal(await two.check(policy, '198.51.100.1', 'x', t0), null, 'the other process has its own counts');
    assert.ok(Date.now() - started < 5_000, 'no waiting for Redis');
  });
});
