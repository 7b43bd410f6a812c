// SPEC §1 "Redis high availability" with a real master, a replica and three real
// redis-sentinel processes: the API (with its CRL scheduler) and a worker find the master
// through REDIS_SENTINELS; the master is killed (kill -9) and, without restarting anything,
// within 20 s an API write reaches the worker, heartbeats and events are written and the
// scheduler still downloads; a graceful switch back (the master demoted under the
// connections: READONLY) is followed too. Settings that cannot work exit with one line.
// A fake sentinel opens, on demand, the window in which ioredis gives a connection up.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { redisConnector, redisSettings, RedisSettingsError } from '../shared/redis/connection.ts';
import { startRedis, startRedisHa, type TestRedisHa } from './helpers/redis.ts';
import { startFakeSentinel } from './helpers/fake-sentinel.ts';
import { startSystem, type System } from './helpers/system.ts';
import { startCrlServer, type CrlServer } from './helpers/crl-server.ts';
import { greeting } from './helpers/smtp-probe.ts';
import { freePort } from './helpers/ports.ts';
import { eventually } from './helpers/wait.ts';
import { listener } from './fixtures/deployments.ts';

describe('redisSettings (pure)', () => {
  const reason = (env: Record<string, string>): string => {
    try {
      redisSettings(env);
    } catch (err) {
      assert.ok(err instanceof RedisSettingsError);
      return err.message;
    }
    return '';
  };

  test('REDIS_URL alone: address, password, database, TLS', () => {
    const s = redisSettings({ REDIS_URL: 'rediss://user:p%40ss@redis.example:6380/3' });
    assert.equal(s.sentinel, null);
    assert.deepEqual({ host: s.base.host, port: s.base.port, username: s.base.username, password: s.base.password, db: s.base.db }, { host: 'redis.example', port: 6380, username: 'user', password: 'p@ss', db: 3 });
    assert.ok(s.base.tls);
    assert.equal(s.shown, 'rediss://user:***@redis.example:6380/3');
    assert.equal(redisSettings({}).base.port, 6379);
  });

  test('sentinels: REDIS_URL gives only password, database and TLS', () => {
    const s = redisSettings({ REDIS_URL: 'rediss://:pw@ignored:1/2', REDIS_SENTINELS: '10.0.0.1:26379, [::1]:26380,sentinel-c', REDIS_SENTINEL_MASTER: 'mymaster', REDIS_SENTINEL_PASSWORD: 'spw' });
    assert.deepEqual(s.sentinel, { master: 'mymaster', addresses: [{ host: '10.0.0.1', port: 26379 }, { host: '::1', port: 26380 }, { host: 'sentinel-c', port: 26379 }] });
    assert.equal(s.base.name, 'mymaster');
    assert.equal(s.base.password, 'pw');
    assert.equal(s.base.sentinelPassword, 'spw');
    assert.equal(s.base.db, 2);
    assert.equal(s.base.host, undefined);
    assert.equal(s.base.enableTLSForSentinelMode, true);
    assert.doesNotMatch(s.shown, /pw/);
  });

  test('settings that cannot work: one line each', () => {
    assert.equal(reason({ REDIS_URL: 'http://x' }), 'REDIS_URL must be a redis:// or rediss:// URL, not "http://x"');
    assert.match(reason({ REDIS_URL: 'redis://h/abc' }), /path must be a database number/);
    assert.match(reason({ REDIS_URL: 'redis://h/?db=1' }), /no query parameters/);
    assert.match(reason({ REDIS_SENTINELS: 'a:1' }), /REDIS_SENTINEL_MASTER is not/);
    assert.match(reason({ REDIS_SENTINEL_MASTER: 'm' }), /REDIS_SENTINELS is not/);
    assert.match(reason({ REDIS_SENTINEL_PASSWORD: 'p' }), /REDIS_SENTINELS is not/);
    assert.match(reason({ REDIS_SENTINELS: 'a:99999', REDIS_SENTINEL_MASTER: 'm' }), /host:port/);
    assert.match(reason({ REDIS_SENTINELS: 'a:1,,b:2', REDIS_SENTINEL_MASTER: 'm' }), /host:port/);
  });
});

describe('a connection ioredis gives up on is connected again', () => {
  // ioredis ends a sentinel connection for good when its failover detector drops it while
  // it is asking a sentinel for the master (a +switch-master during a reconnect, as after a
  // kill -9 of the master). A fake sentinel makes that window wide and certain.
  test('a +switch-master while the connection asks for the master: it comes back; one its owner closed stays closed', async (t) => {
    const redis = await startRedis();
    const sentinel = await startFakeSentinel({ name: 'm', host: '127.0.0.1', port: redis.port });
    const warnings: string[] = [];
    const logger = { debug: () => undefined, info: () => undefined, error: () => undefined, warn: (_: object, msg?: string) => void warnings.push(msg ?? '') };
    const connector = redisConnector(redisSettings({ REDIS_SENTINELS: `127.0.0.1:${sentinel.port}`, REDIS_SENTINEL_MASTER: 'm' }), logger);
    const conn = connector.connect('race');
    const admin = new Redis({ port: redis.port });
    t.after(async () => {
      conn.disconnect();
      admin.disconnect();
      await sentinel.close();
      await redis.stop();
    });
    let ends = 0;
    conn.on('end', () => ends++);
    assert.equal(await conn.ping(), 'PONG');
    await eventually(() => sentinel.subscribers() === 1, 20_000, 'the failover detector to subscribe');

    sentinel.hold();
    await admin.call('CLIENT', 'KILL', 'ID', String(await conn.call('CLIENT', 'ID')));
    await eventually(() => sentinel.held() === 1, 20_000, 'the reconnect to ask the sentinel for the master');
    sentinel.switchMaster();
    await eventually(() => sentinel.subscribers() === 0, 20_000, 'the failover detector to act (it drops its sentinel connections)');
    sentinel.release();

    await eventually(() => ends > 0, 20_000, 'ioredis to end the connection (the fault this guards against)');
    await eventually(async () => conn.status === 'ready' && (await conn.ping()) === 'PONG', 20_000, 'the connection to come back');
    assert.ok(warnings.some((w) => /ended by the client library/.test(w)), warnings.join('; '));

    const copy = conn.duplicate();
    assert.equal(copy.constructor, conn.constructor, 'duplicate() (BullMQ, the API) makes one that is connected again too');
    copy.disconnect();
    conn.disconnect();
    await eventually(() => conn.status === 'end', 20_000, 'the owner\'s disconnect');
    const endsAfterClose = ends;
    await new Promise((r) => setTimeout(r, 1500)); // longer than the delay before connecting again
    assert.equal(conn.status, 'end');
    assert.equal(ends, endsAfterClose);
  });
});

describe('a real failover', () => {
  let ha: TestRedisHa;
  let sys: System;
  let web: CrlServer;
  let port: number;
  let redisEnv: Record<string, string>;

  before(async () => {
    ha = await startRedisHa('certgate');
    web = await startCrlServer();
    redisEnv = { REDIS_SENTINELS: ha.sentinels, REDIS_SENTINEL_MASTER: ha.masterName };
    sys = await startSystem({ redis: ha.master, redisEnv, apiEnv: { SCHEDULER: 'on' } });
    port = await freePort();
    for (const [name, action] of [['OPEN', 'relay'], ['BLOCK', 'reject']]) {
      await sys.api.ok('POST', '/v1/mail-flow-policies', { name, action, tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false });
    }
    await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'mx', port, authProfile: null, tls: null, policy: 'OPEN' }));
    const settings = await sys.api.ok<Record<string, unknown>>('GET', '/v1/crl-settings');
    await sys.api.ok('PUT', '/v1/crl-settings', { ...settings, trustedCaPem: sys.pki.root.certPem + sys.pki.intermediate.certPem });
    await sys.settled(20_000);
  });
  after(async () => {
    await sys?.stop();
    await web?.close();
    await ha?.stop();
  });

  /** PUTs the listener with its sender group on `policy`, retrying while the API has no master; then waits for a new connection to get `code`. */
  const switchTo = async (policy: string, code: number, deadline: number): Promise<void> => {
    const body = listener(sys, { name: 'mx', port, authProfile: null, tls: null, policy: 'OPEN' });
    await eventually(async () => {
      const r = await sys.api.call('PUT', '/v1/listeners/mx', { ...body, senderGroups: [{ ...body.senderGroups[0], policy }] });
      return r.status === 200;
    }, Math.max(1, deadline - Date.now()), `the API write (sender group → ${policy})`);
    await eventually(async () => (await greeting(port, 3000))?.code === code, Math.max(1, deadline - Date.now()), `${code} at connect after the switch to ${policy}`);
  };
  const pids = (): Array<number | undefined> => [sys.apiProc.child.pid, ...sys.workers.map((w) => w.child.pid)];
  const allRunning = (): boolean => [sys.apiProc, ...sys.workers].every((p) => p.child.exitCode === null && p.child.signalCode === null);

  test('kill -9 the master: within 20 s, nothing restarted, writes reach the worker, heartbeats, events and CRL downloads go on', async () => {
    assert.equal((await greeting(port))?.code, 220);
    const before = pids();
    const oldMaster = await ha.currentMaster();
    assert.equal(oldMaster, ha.master.port);
    ha.master.signal('SIGKILL');
    const killedAt = Date.now();
    const deadline = killedAt + 20_000;

    await switchTo('BLOCK', 554, deadline);
    assert.notEqual(await ha.currentMaster(), oldMaster, 'the sentinels promoted the replica');

    await eventually(async () => {
      const { items } = await sys.api.ok<{ items: Array<{ lastSeen: string; configVersion: number }> }>('GET', '/v1/workers');
      const { version } = await sys.api.ok<{ version: number }>('GET', '/v1/config');
      return items.length === 1 && Date.parse(items[0].lastSeen) > killedAt && items[0].configVersion === version;
    }, Math.max(1, deadline - Date.now()), 'a heartbeat written after the failover');

    await eventually(async () => {
      const { items } = await sys.api.ok<{ items: Array<{ time: string; reason: string }> }>('GET', '/v1/events?limit=50');
      return items.some((e) => e.reason === 'policy-reject' && Date.parse(e.time) > killedAt);
    }, Math.max(1, deadline - Date.now()), 'an event of a session after the failover');

    // A source created now is scheduled and downloaded by a BullMQ job of the API's scheduler.
    // The 20 s of the issue are for the worker path above; the scheduler's own BullMQ
    // connections come back on their own backoff, which a busy machine stretches: what is
    // asserted here is that it runs again without a restart, within a generous minute.
    const schedulerDeadline = killedAt + 60_000;
    web.serve('/after.crl', await sys.pki.crl('intermediate', []));
    await eventually(async () => (await sys.api.call('POST', '/v1/crl-sources', { name: 'after', primaryUrl: web.url('/after.crl') })).status === 201,
      Math.max(1, schedulerDeadline - Date.now()), 'the CRL source to be created');
    await eventually(async () => {
      const s = await sys.api.ok<{ status: { lastSuccessAt: string | null } }>('GET', '/v1/crl-sources/after');
      return s.status.lastSuccessAt !== null;
    }, Math.max(1, schedulerDeadline - Date.now()), 'the scheduled download after the failover');

    assert.deepEqual(pids(), before, 'no process was restarted');
    assert.ok(allRunning());
  });

  test('a graceful switch back (the serving master demoted to a replica under open connections) is followed too', async () => {
    // The killed master comes back empty; the sentinels make it a replica of the new master.
    await ha.master.restart();
    const s = new Redis({ port: ha.sentinelPorts[0] });
    try {
      await eventually(async () => {
        const replicas = (await s.call('SENTINEL', 'REPLICAS', ha.masterName)) as string[][];
        return replicas.some((r) => r[r.indexOf('port') + 1] === String(ha.master.port) && r[r.indexOf('master-link-status') + 1] === 'ok');
      }, 30_000, 'the old master to be a synced replica');
      await s.call('SENTINEL', 'FAILOVER', ha.masterName);
      await eventually(async () => (await ha.currentMaster()) === ha.master.port, 30_000, 'the switch back');
    } finally {
      s.disconnect();
    }
    const before = pids();
    await switchTo('OPEN', 220, Date.now() + 20_000);
    const written = Date.now();
    await eventually(async () => {
      const { items } = await sys.api.ok<{ items: Array<{ lastSeen: string }> }>('GET', '/v1/workers');
      return items.length === 1 && Date.parse(items[0].lastSeen) > written;
    }, 20_000, 'heartbeats on the new master');
    assert.deepEqual(pids(), before);
    assert.ok(allRunning());
  });

  describe('settings that cannot work exit with a one-line reason', () => {
    const runWorker = async (env: Record<string, string>): Promise<{ code: number | null; stderr: string }> => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'worker/main.ts'], {
        env: { ...process.env, REDIS_URL: '', REDIS_SENTINELS: '', REDIS_SENTINEL_MASTER: '', METRICS_PORT: String(await freePort()), ...env },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
      const killer = setTimeout(() => child.kill('SIGKILL'), 60_000); // a worker that starts would run forever
      const [code] = (await once(child, 'exit')) as [number | null];
      clearTimeout(killer);
      return { code, stderr };
    };
    const oneLine = (r: { code: number | null; stderr: string }, pattern: RegExp): void => {
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^certgate worker: [^\n]+\n$/, r.stderr);
      assert.match(r.stderr, pattern);
    };

    test('REDIS_URL at a sentinel', async () => {
      oneLine(await runWorker({ REDIS_URL: `redis://127.0.0.1:${ha.sentinelPorts[0]}` }), /points at a Redis Sentinel, not a Redis server: set REDIS_SENTINELS/);
    });
    test('REDIS_URL at a replica', async () => {
      const master = await ha.currentMaster();
      const replica = master === ha.master.port ? ha.replica.port : ha.master.port;
      const r = new Redis({ port: replica });
      try {
        // Just after a switch the sentinels may not have demoted it yet.
        await eventually(async () => ((await r.call('ROLE')) as string[])[0] === 'slave', 20_000, 'the replica to be one');
      } finally {
        r.disconnect();
      }
      oneLine(await runWorker({ REDIS_URL: `redis://127.0.0.1:${replica}` }), /is a read-only replica/);
    });
    test('REDIS_SENTINELS at a Redis server', async () => {
      oneLine(await runWorker({ REDIS_SENTINELS: `127.0.0.1:${await ha.currentMaster()}`, REDIS_SENTINEL_MASTER: ha.masterName }), /a Redis server, not a sentinel/);
    });
    test('a master name no sentinel knows', async () => {
      oneLine(await runWorker({ REDIS_SENTINELS: ha.sentinels, REDIS_SENTINEL_MASTER: 'nope' }), /knows the master "nope" .*they watch: certgate/);
    });
    test('no sentinel reachable', async () => {
      const dead = await freePort();
      oneLine(await runWorker({ REDIS_SENTINELS: `127.0.0.1:${dead}`, REDIS_SENTINEL_MASTER: 'x' }), /no sentinel in REDIS_SENTINELS answered: 127\.0\.0\.1:[0-9]+: connect ECONNREFUSED/);
    });
    test('the API and the scheduler say the same', async () => {
      for (const entry of ['api/main.ts', 'api/scheduler-main.ts']) {
        const child = spawn(process.execPath, ['--import', 'tsx', entry], {
          env: { ...process.env, REDIS_URL: `redis://127.0.0.1:${ha.sentinelPorts[1]}`, API_PORT: String(await freePort()) },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
        const [code] = (await once(child, 'exit')) as [number | null];
        assert.equal(code, 1, entry);
        assert.match(stderr, /^certgate (api|scheduler): REDIS_URL \([^)]*\) points at a Redis Sentinel[^\n]*\n$/, stderr);
      }
    });
  });
});
