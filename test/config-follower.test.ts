// The configuration follower (shared/config/follower.ts) against a real Redis: what it
// applies and refuses (succession), one parse per version, coalesced loads, resync after
// its subscription was cut, the poll as safety net; and, end to end, that a write reaches
// a running worker in under one second with the poll disabled (SPEC §1).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { succession, type FollowMode } from '../shared/config/follower.ts';
import { loadStoredConfig, updateConfig, updateStoredConfig } from '../shared/config/store.ts';
import { DEFAULT_POLICY_LIMITS, EMPTY_CONFIG, type Config, type MailFlowPolicy } from '../shared/config/schemas.ts';
import { keys } from '../shared/redis/keys.ts';
import type { ProcessRedis } from '../shared/process/kit.ts';
import { processRedis } from './helpers/follow.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { eventually } from './helpers/wait.ts';
import { startSystem, type System } from './helpers/system.ts';
import { greeting } from './helpers/smtp-probe.ts';
import { freePort } from './helpers/ports.ts';
import { listener } from './fixtures/deployments.ts';

const policy = (name: string): MailFlowPolicy => ({
  name, action: 'relay', tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false,
  maxMessageBytes: 1_000_000, maxRecipients: 10, ...DEFAULT_POLICY_LIMITS,
});
const addPolicy = (name: string) => (c: Config): Config => ({ ...c, mailFlowPolicies: [...c.mailFlowPolicies, policy(name)] });

describe('succession: what a process takes from the store', () => {
  const S = 'aaaaaaaa-0000-4000-8000-000000000001';
  const T = 'bbbbbbbb-0000-4000-8000-000000000002';
  const cases: Array<[FollowMode, { store: string | null; version: number } | null, { store: string | null; version: number }, string]> = [
    ['runner', null, { store: null, version: 0 }, 'apply'],
    ['runner', null, { store: S, version: 5 }, 'apply'],
    ['runner', { store: S, version: 5 }, { store: S, version: 5 }, 'same'],
    ['runner', { store: S, version: 5 }, { store: S, version: 6 }, 'apply'],
    ['runner', { store: S, version: 5 }, { store: S, version: 4 }, 'refuse'],
    ['runner', { store: S, version: 5 }, { store: null, version: 0 }, 'refuse'],
    ['runner', { store: S, version: 5 }, { store: T, version: 1 }, 'apply'],
    ['runner', { store: S, version: 5 }, { store: T, version: 9 }, 'apply'],
    ['runner', { store: null, version: 0 }, { store: null, version: 0 }, 'same'],
    ['runner', { store: null, version: 0 }, { store: S, version: 1 }, 'apply'],
    ['runner', { store: '', version: 3 }, { store: S, version: 4 }, 'apply'],
    ['mirror', { store: S, version: 5 }, { store: S, version: 4 }, 'apply'],
    ['mirror', { store: S, version: 5 }, { store: null, version: 0 }, 'apply'],
    ['mirror', { store: S, version: 5 }, { store: S, version: 5 }, 'same'],
  ];
  for (const [mode, running, stored, verdict] of cases) {
    test(`${mode}: running ${JSON.stringify(running)}, stored ${JSON.stringify(stored)} → ${verdict}`, () => {
      const s = succession(running, stored, mode);
      assert.equal(s.verdict, verdict);
      if (s.verdict === 'refuse') assert.match(s.reason, stored.version === 0 ? /empty \(version 0/ : /older than the running version 5/);
    });
  }
});

describe('the follower on a real Redis', () => {
  let redisServer: TestRedis;
  let admin: Redis;
  const opened: ProcessRedis[] = [];
  const follow = async (mode: FollowMode, pollMs: number | null): Promise<ProcessRedis> => {
    const p = await processRedis(redisServer.url, { mode, pollMs });
    opened.push(p);
    return p;
  };
  /** The stored document, rewritten: `mutate` gets and returns it whole (version and store included). */
  const rewrite = async (mutate: (doc: Record<string, unknown>) => Record<string, unknown>, alsoKillSubscribers = false): Promise<void> => {
    const doc = JSON.parse((await admin.get(keys.config)) ?? '{}') as Record<string, unknown>;
    const tx = admin.multi();
    // Subscribers cut first, in the same transaction: the write can only reach them by their resync.
    if (alsoKillSubscribers) tx.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await tx.set(keys.config, JSON.stringify(mutate(doc))).exec();
  };

  before(async () => {
    redisServer = await startRedis();
    admin = new Redis(redisServer.url);
    await updateConfig(admin, addPolicy('A'));
  });
  after(async () => {
    for (const p of opened) await p.close();
    admin?.disconnect();
    await redisServer?.stop();
  });

  test('one parse per version: every user gets the same object; polls read only the first bytes', async () => {
    const p = await follow('runner', 100);
    let fullReads = 0;
    const get = p.redis.get.bind(p.redis);
    p.redis.get = ((key: string) => {
      if (key === keys.config) fullReads++;
      return get(key);
    }) as typeof p.redis.get;
    const seen: unknown[] = [];
    p.follower.follow((c) => void seen.push(c));
    p.follower.follow((c) => void seen.push(c));
    const first = p.follower.current();
    const confirmed = p.follower.confirmedAt!;
    await eventually(() => p.follower.confirmedAt! > confirmed + 250, 5000, 'a few polls');
    assert.equal(fullReads, 0, 'an unchanged version is not fetched again');
    assert.equal(p.follower.current(), first);
    const written = await updateConfig(admin, addPolicy('B'));
    await eventually(() => p.follower.current()?.version === written.version, 3000, 'the new version');
    assert.equal(fullReads, 1, 'fetched once');
    assert.equal(seen.length, 2);
    assert.equal(seen[0], seen[1], 'both users got the one parsed object');
    assert.equal(seen[0], p.follower.current());
  });

  test('a burst of notices: at most one load runs and one waits', async () => {
    const p = await follow('runner', null);
    let headerReads = 0;
    const getrange = p.redis.getrange.bind(p.redis);
    p.redis.getrange = ((...a: Parameters<typeof getrange>) => {
      headerReads++;
      return getrange(...a);
    }) as typeof p.redis.getrange;
    const written = await updateConfig(admin, addPolicy('C'));
    const burst = admin.pipeline();
    for (let i = 0; i < 200; i++) burst.publish(keys.configChannel, String(written.version + 1000));
    await burst.exec();
    await eventually(() => p.follower.current()?.version === written.version, 3000, 'the written version');
    await p.follower.refresh(); // settles what is queued
    assert.ok(headerReads <= 4, `${headerReads} loads for 200 notices`);
  });

  test('a write while the subscription is cut arrives by the resync after the reconnect (no poll)', async () => {
    const p = await follow('runner', null);
    const before = p.follower.current()!.version;
    await rewrite((d) => ({ ...d, version: before + 1 }), true);
    await eventually(() => p.follower.current()?.version === before + 1, 10_000, 'the version written while disconnected');
  });

  test('a write without a notice arrives by the poll', async () => {
    const p = await follow('runner', 200);
    const before = p.follower.current()!.version;
    await rewrite((d) => ({ ...d, version: before + 1 }));
    await eventually(() => p.follower.current()?.version === before + 1, 5000, 'the silently written version');
  });

  test('runner: an older version of the same store and an empty store are refused; a store written again is applied', async () => {
    const runner = await follow('runner', 100);
    const mirror = await follow('mirror', 100);
    const running = runner.follower.current()!;
    const storeBefore = (await loadStoredConfig(admin)).store;
    await rewrite((d) => ({ ...d, version: running.version - 1 }));
    await eventually(() => runner.follower.error, 3000, 'the refusal');
    assert.match(runner.follower.error!, new RegExp(`holds version ${running.version - 1}, older than the running version ${running.version}`));
    assert.equal(runner.follower.current(), running);
    await eventually(() => mirror.follower.current()?.version === running.version - 1, 3000, 'the mirror to show what is stored');

    await admin.flushall();
    await eventually(() => /empty \(version 0/.test(runner.follower.error ?? ''), 3000, 'the empty store refused');
    assert.equal(runner.follower.current(), running, 'the running configuration is kept');
    const refusedAt = runner.follower.confirmedAt!;
    await eventually(() => mirror.follower.current()?.version === 0, 3000, 'the mirror to show the empty store');
    // A store that can be read confirms that nothing newer waits, even when it is refused.
    await eventually(() => runner.follower.confirmedAt! > refusedAt, 3000, 'the next poll to confirm');

    // An import after the data loss: a new store, version 1, applied although 1 < the running version.
    const imported = await updateStoredConfig(admin, () => ({ ...structuredClone(EMPTY_CONFIG), mailFlowPolicies: [policy('IMPORTED')] }));
    assert.equal(imported.config.version, 1);
    assert.notEqual(imported.store, storeBefore, 'a new store id');
    await eventually(() => runner.follower.current()?.mailFlowPolicies[0]?.name === 'IMPORTED', 3000, 'the imported store applied');
    assert.equal(runner.follower.error, null);
    assert.ok(runner.follower.confirmedAt! > refusedAt);
  });
});

describe('end to end: a write reaches a running worker in under one second, by the change channel alone', () => {
  let sys: System;
  let port: number;
  before(async () => {
    sys = await startSystem({ workers: 1, workerEnv: { CONFIG_POLL_SECONDS: '0' } });
    port = await freePort();
    for (const name of ['OPEN', 'BLOCK']) {
      await sys.api.ok('POST', '/v1/mail-flow-policies', { name, action: name === 'OPEN' ? 'relay' : 'reject', tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false });
    }
    await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'mx', port, authProfile: null, tls: null, policy: 'OPEN' }));
    await sys.settled();
  });
  after(async () => {
    await sys?.stop();
  });

  test('five sender-group switches between relay and reject, each seen by a new connection', async (t) => {
    const body = listener(sys, { name: 'mx', port, authProfile: null, tls: null, policy: 'OPEN' });
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      const target = i % 2 === 0 ? 'BLOCK' : 'OPEN';
      await sys.api.ok('PUT', '/v1/listeners/mx', { ...body, senderGroups: [{ ...body.senderGroups[0], policy: target }] });
      const written = Date.now();
      const want = target === 'BLOCK' ? 554 : 220;
      for (;;) {
        const r = await greeting(port, 5000);
        if (r?.code === want) break;
        assert.ok(Date.now() - written < 10_000, `the ${target} switch did not reach the worker in 10 s (last reply ${JSON.stringify(r)})`);
        await new Promise((r) => setTimeout(r, 10));
      }
      delays.push(Date.now() - written);
    }
    const median = [...delays].sort((a, b) => a - b)[2];
    t.diagnostic(`write → new connection sees it: ${delays.join(', ')} ms`);
    assert.ok(median < 1000, `write → worker took ${delays.join(', ')} ms (median ${median} ms; SPEC §1: under one second)`);
  });
});
