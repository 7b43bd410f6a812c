// SPEC §1 "Redis unreachable", with a real Redis stopped, frozen (SIGSTOP) and flushed under
// a running worker (WORKER_MAX_STALE_SECONDS=6): it keeps relaying on the configuration it
// last applied, keeps its events in memory and writes them when Redis is back, answers new
// connections 421 4.3.0 once the configuration is unconfirmed for too long and is normal
// again when Redis returns; an empty store is refused (configError) and an import into it
// applied. And the event recorder itself: batches, the 10,000 bound, nothing lost.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { EventRecorder, RecentEvents } from '../shared/status/events.ts';
import { configurationAdmission, UNAVAILABLE } from '../shared/policy/admission.ts';
import { keys } from '../shared/redis/keys.ts';
import type { NewSessionEvent } from '../shared/config/schemas.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { startSystem, type System } from './helpers/system.ts';
import { python, swaks } from './helpers/smtp-clients.ts';
import { greeting } from './helpers/smtp-probe.ts';
import { freePort } from './helpers/ports.ts';
import { eventually } from './helpers/wait.ts';
import { listener } from './fixtures/deployments.ts';

const MAX_STALE = 6;

describe('configurationAdmission (pure)', () => {
  test('refuses only past WORKER_MAX_STALE_SECONDS, or when never confirmed; never without it', () => {
    assert.equal(configurationAdmission(1000, null), null);
    assert.equal(configurationAdmission(null, null), null);
    assert.equal(configurationAdmission(0, 5), null);
    assert.equal(configurationAdmission(5, 5), null);
    assert.deepEqual(configurationAdmission(5.01, 5), UNAVAILABLE);
    assert.deepEqual(configurationAdmission(null, 5), UNAVAILABLE);
    assert.deepEqual(UNAVAILABLE, { code: 421, text: '4.3.0 Service temporarily unavailable' });
  });
});

describe('RecentEvents (pure): what tells the EventRecorder it is busy', () => {
  test('counts the current 100 ms window and the one just before; an older window counts nothing', () => {
    const recent = new RecentEvents();
    assert.equal(recent.peak, 0);
    for (const t of [0, 10, 99]) recent.add(t);
    assert.equal(recent.peak, 3, 'one window');
    recent.add(150); // a new window; the one before held 3
    assert.equal(recent.peak, 3);
    recent.add(260); // a new window again; the one before held 1
    assert.equal(recent.peak, 1);
    recent.add(600); // 340 ms later: the window before is not the last one
    assert.equal(recent.peak, 1);
    for (let t = 601; t < 640; t++) recent.add(t);
    assert.equal(recent.peak, 40);
  });
});

describe('EventRecorder on a real Redis', () => {
  const event = (i: number): NewSessionEvent => ({
    time: new Date().toISOString(), worker: 'w', listener: 'l', sessionId: `s${i}`, clientAddress: '127.0.0.1', tlsVersion: null, certificate: null,
    method: 'none', user: null, outcome: 'accepted', reason: 'relayed', detail: null, command: 'DATA', reply: '250 2.0.0 relayed', envelope: null,
  });

  /** Runs `task` with a connection to a fresh Redis whose pipelines are counted. */
  const withCountedPipelines = async (task: (conn: Redis, pipelines: () => number) => Promise<void>): Promise<void> => {
    const r = await startRedis();
    const conn = new Redis(r.url);
    try {
      let pipelines = 0;
      const pipeline = conn.pipeline.bind(conn);
      conn.pipeline = ((...a: Parameters<typeof pipeline>) => {
        pipelines++;
        return pipeline(...a);
      }) as typeof conn.pipeline;
      await task(conn, () => pipelines);
    } finally {
      conn.disconnect();
      await r.stop();
    }
  };

  test('events of one turn share a pipeline; none is lost', () =>
    withCountedPipelines(async (conn, pipelines) => {
      const recorder = new EventRecorder({ redis: conn });
      for (let i = 0; i < 2000; i++) recorder.record(event(i));
      assert.equal(await recorder.drain(10_000), 0);
      assert.equal(await conn.xlen(keys.events), 2000);
      assert.ok(pipelines() <= 4, `${pipelines()} pipelines for 2000 events (500 each)`);
    }));

  test('busy, the first event is written at once; what follows within lingerMs waits and shares one write', () =>
    withCountedPipelines(async (conn, pipelines) => {
      const recorder = new EventRecorder({ redis: conn, lingerMs: 2000, busyEvents: 1 });
      recorder.record(event(0));
      assert.equal(await recorder.drain(10_000), 0, 'an idle recorder writes at once');
      const firstWritten = performance.now();
      for (let i = 1; i <= 3; i++) recorder.record(event(i));
      assert.equal(await recorder.drain(300), 3, 'held: a write started less than lingerMs ago');
      assert.equal(await recorder.drain(10_000), 0);
      assert.ok(performance.now() - firstWritten >= 1900, 'not before lingerMs');
      assert.equal(pipelines(), 1, 'the three in one pipeline');
      assert.equal(await conn.xlen(keys.events), 4);
    }));

  test('below busyEvents every event is written at once, however recent the write before', () =>
    withCountedPipelines(async (conn) => {
      const recorder = new EventRecorder({ redis: conn, lingerMs: 60_000, busyEvents: 32 });
      for (let i = 0; i < 5; i++) {
        recorder.record(event(i));
        assert.equal(await recorder.drain(10_000), 0, `event ${i} written without waiting for lingerMs`);
      }
      assert.equal(await conn.xlen(keys.events), 5);
    }));

  test('a lone event is one plain XADD; refused, it stays pending and is written on a retry', () =>
    withCountedPipelines(async (conn, pipelines) => {
      const errors: string[] = [];
      const recorder = new EventRecorder({ redis: conn, retryMs: 100, onError: (err) => errors.push(err.message) });
      recorder.record(event(0));
      assert.equal(await recorder.drain(10_000), 0);
      assert.equal(pipelines(), 0);
      // The stream's key holding a string: Redis refuses the XADD (WRONGTYPE).
      await conn.del(keys.events);
      await conn.set(keys.events, 'not a stream');
      recorder.record(event(1));
      await eventually(() => errors.length > 0, 10_000, 'the refusal');
      assert.match(errors[0] as string, /WRONGTYPE/);
      assert.equal(recorder.size, 1, 'kept');
      await conn.del(keys.events);
      assert.equal(await recorder.drain(10_000), 0);
      const [[, [, written]]] = await conn.xrange(keys.events, '-', '+') as Array<[string, string[]]>;
      assert.equal(JSON.parse(written as string).sessionId, 's1');
      assert.equal(pipelines(), 0);
    }));

  test('while Redis is away: up to 10,000 kept and written when it is back, the rest counted as dropped', async () => {
    const r = await startRedis();
    const conn = new Redis(r.url, { maxRetriesPerRequest: 1, retryStrategy: () => 100 });
    conn.on('error', () => undefined);
    try {
      await conn.ping();
      await r.shutdownSave();
      await eventually(() => conn.status !== 'ready', 5000, 'the connection to notice');
      let dropped = 0;
      const recorder = new EventRecorder({ redis: conn, retryMs: 100, onDropped: () => dropped++ });
      for (let i = 0; i < 10_005; i++) recorder.record(event(i));
      assert.equal(dropped, 5);
      assert.equal(recorder.size, 10_000);
      await new Promise((resolve) => setTimeout(resolve, 300)); // a few retries meanwhile
      assert.equal(recorder.size, 10_000, 'nothing lost while Redis is away');
      await r.restart();
      assert.equal(await recorder.drain(20_000), 0);
      assert.equal(await conn.xlen(keys.events), 10_000);
      const first = await conn.xrange(keys.events, '-', '+', 'COUNT', 1);
      assert.equal(JSON.parse(first[0][1][1]).sessionId, 's0', 'the oldest kept, in order');
    } finally {
      conn.disconnect();
      await r.stop();
    }
  });
});

describe('a worker while Redis is stopped, frozen and flushed', () => {
  let redis: TestRedis;
  let sys: System;
  let port: number;
  let metricsUrl: string;

  const relay = async (from: string): Promise<boolean> => {
    const r = await swaks(['--server', `127.0.0.1:${port}`, '--from', from, '--to', 'rcpt@example.com']);
    return r.replies.some((x) => x.code === 250 && /relayed/.test(x.text));
  };
  const health = async (): Promise<{ status: number; body: { status: string; reasons?: string[] } }> => {
    const res = await fetch(`${metricsUrl}/health`);
    return { status: res.status, body: (await res.json()) as { status: string; reasons?: string[] } };
  };
  const metric = async (name: string): Promise<number> => {
    const text = await (await fetch(`${metricsUrl}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name} `));
    return line ? Number(line.split(' ')[1]) : NaN;
  };
  /** A session that connects now and sends its message `seconds` later. */
  const inFlight = (seconds: number, from: string): Promise<number> =>
    python<number>(
      'import smtplib,sys,time,json; s=smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=60); s.ehlo("c.example"); time.sleep(float(sys.argv[2])); ' +
        'r=s.sendmail(sys.argv[3], ["rcpt@example.com"], b"Subject: outage\\r\\n\\r\\nx\\r\\n"); s.quit(); print(json.dumps(250))',
      [String(port), String(seconds), from],
      90_000,
    );
  const eventFrom = async (from: string): Promise<boolean> => {
    const { items } = await sys.api.ok<{ items: Array<{ envelope: { from: string } | null; outcome: string }> }>('GET', '/v1/events?limit=200');
    return items.some((e) => e.envelope?.from === from && e.outcome === 'accepted');
  };

  before(async () => {
    redis = await startRedis();
    sys = await startSystem({ redis, workerEnv: { WORKER_MAX_STALE_SECONDS: String(MAX_STALE) } });
    metricsUrl = `http://127.0.0.1:${sys.workers[0].metricsPort}`;
    port = await freePort();
    await sys.api.ok('POST', '/v1/mail-flow-policies', { name: 'OPEN', action: 'relay', tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false });
    await sys.api.ok('POST', '/v1/listeners', listener(sys, { name: 'mx', port, authProfile: null, tls: null, policy: 'OPEN' }));
    await sys.settled();
    assert.equal((await health()).status, 200);
  });
  after(async () => {
    await sys?.stop();
    await redis?.stop();
  });

  for (const outage of ['stopped', 'frozen'] as const) {
    test(`Redis ${outage}: sessions go on, then new connections get 421 4.3.0 until Redis is back; events arrive afterwards`, async () => {
      const during = `during-${outage}@example.com`;
      const open = inFlight(MAX_STALE + 3, `open-${outage}@example.com`);
      await eventually(async () => (await metric('certgate_smtp_sessions_active')) >= 1, 10_000, 'the long session to be open');
      if (outage === 'stopped') await redis.shutdownSave();
      else redis.signal('SIGSTOP');
      try {
        assert.ok(await relay(during), 'a new session right after the outage began is relayed on the configuration in force');
        const refused = await eventually(async () => {
          const g = await greeting(port, 5000);
          return g?.code === 421 && g;
        }, 30_000, `421 once the configuration is unconfirmed for ${MAX_STALE} s`);
        assert.equal(refused.text, '4.3.0 Service temporarily unavailable');
        assert.ok((await metric('certgate_config_age_seconds')) > MAX_STALE);
        const h = await health();
        assert.equal(h.status, 503);
        assert.ok(h.body.reasons?.some((r) => /not confirmed by Redis/.test(r)), JSON.stringify(h.body));
        assert.equal(await open, 250, 'the session open before the outage finishes normally');
      } finally {
        if (outage === 'stopped') await redis.restart();
        else redis.signal('SIGCONT');
      }
      await eventually(async () => (await greeting(port, 5000))?.code === 220, 30_000, 'the greeting when Redis is back');
      await eventually(async () => (await health()).status === 200, 30_000, '/health 200 again');
      await eventually(() => eventFrom(during), 20_000, 'the event of the session relayed during the outage');
      assert.equal(await metric('certgate_events_dropped_total'), 0);
    });
  }

  test('Redis flushed: the worker keeps its configuration (configError), still serves, and applies an import', async () => {
    const exported = await sys.api.ok<Record<string, unknown> & { version: number }>('GET', '/v1/config');
    const conn = new Redis(redis.url);
    try {
      await conn.flushall();
    } finally {
      conn.disconnect();
    }
    const worker = async () => (await sys.api.ok<{ items: Array<{ configVersion: number; configError: string | null }> }>('GET', '/v1/workers')).items[0];
    const refused = await eventually(async () => {
      const w = await worker();
      return w?.configError && w;
    }, 20_000, 'configError in GET /v1/workers');
    assert.match(refused.configError!, /empty \(version 0/);
    assert.equal(refused.configVersion, exported.version, 'the running version is kept');
    assert.ok(await relay('after-flush@example.com'), 'still relaying on the configuration it has');
    // An empty store can be read: it is not "unconfirmed", so no 421 (past the stale limit, with a reason to wait).
    await new Promise((r) => setTimeout(r, (MAX_STALE + 2) * 1000));
    assert.equal((await greeting(port, 5000))?.code, 220);
    assert.equal((await health()).status, 200);

    const { version: _, ...config } = exported;
    const imported = await sys.api.ok<{ version: number }>('PUT', '/v1/config', config);
    await eventually(async () => {
      const w = await worker();
      return w && w.configError === null && w.configVersion === imported.version;
    }, 20_000, 'the import to be applied');
    assert.ok(await relay('after-import@example.com'));
  });
});
