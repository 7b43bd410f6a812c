// Session events, worker heartbeats, metrics and health.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { recordEvent } from '../shared/status/events.ts';
import { publishHeartbeat } from '../shared/status/workers.ts';
import { keys } from '../shared/redis/keys.ts';
import type { NewSessionEvent, WorkerStatus } from '../shared/config/schemas.ts';
import { bodies, startApi, type ApiHarness } from './helpers/api.ts';

function event(overrides: Partial<NewSessionEvent>): NewSessionEvent {
  return {
    time: new Date().toISOString(),
    worker: 'w1',
    listener: 'submission',
    sessionId: 's1',
    clientAddress: '127.0.0.1',
    tlsVersion: 'TLSv1.3',
    certificate: null,
    method: 'smtp-auth',
    user: 'jdoe',
    outcome: 'accepted',
    reason: 'password accepted',
    detail: null,
    command: 'AUTH',
    reply: '235 2.7.0 Authentication successful',
    envelope: null,
    ...overrides,
  };
}

function worker(id: string, lastSeen: Date): WorkerStatus {
  return { id, listeners: [{ name: 'submission', address: '127.0.0.1', port: 2587 }], configVersion: 0, crls: [], sessions: 0, lastSeen: lastSeen.toISOString(), processes: 1, listenerErrors: [], configError: null };
}

describe('events, workers, metrics, health', () => {
  let api: ApiHarness;
  const start = new Date();
  before(async () => {
    api = await startApi();
  });
  after(async () => {
    await api.close();
  });

  test('GET /v1/events: newest first, filtered by user, outcome, listener, since, limit', async () => {
    await recordEvent(api.redis, event({ user: 'old', time: new Date(Date.now() - 3_600_000).toISOString(), reason: 'an hour ago' }));
    const sinceMark = new Date();
    await new Promise((r) => setTimeout(r, 5)); // stream ids are per millisecond
    await recordEvent(api.redis, event({ user: 'jdoe', reason: 'first' }));
    await recordEvent(api.redis, event({ user: 'asmith', outcome: 'rejected', reason: 'wrong password', reply: '535 5.7.8 Authentication credentials invalid' }));
    await recordEvent(api.redis, event({ user: 'jdoe', listener: 'mta', outcome: 'allowed-not-permitted', reason: 'not allowed' }));
    await recordEvent(api.redis, event({ user: null, method: 'certificate', certificate: { subject: 'CN=X', serial: '0A1B', issuer: 'CN=CA' }, reason: 'last' }));

    const reasons = async (query: string) => {
      const res = await api.call('GET', `/v1/events${query}`);
      assert.equal(res.status, 200, res.text);
      return res.body.items.map((e: { reason: string }) => e.reason);
    };
    assert.deepEqual(await reasons(''), ['last', 'not allowed', 'wrong password', 'first', 'an hour ago']);
    assert.deepEqual(await reasons('?user=jdoe'), ['not allowed', 'first']);
    assert.deepEqual(await reasons('?outcome=rejected'), ['wrong password']);
    assert.deepEqual(await reasons('?listener=mta'), ['not allowed']);
    assert.deepEqual(await reasons('?user=jdoe&listener=submission'), ['first']);
    assert.deepEqual(await reasons(`?since=${encodeURIComponent(sinceMark.toISOString())}`), ['last', 'not allowed', 'wrong password', 'first']);
    assert.deepEqual(await reasons('?limit=2'), ['last', 'not allowed']);

    const full = (await api.call('GET', '/v1/events?limit=1')).body.items[0];
    assert.match(full.id, /^[0-9]+-[0-9]+$/);
    assert.deepEqual(full.certificate, { subject: 'CN=X', serial: '0A1B', issuer: 'CN=CA' });
    assert.equal(full.method, 'certificate');
  });

  test('GET /v1/events: 400 for a bad since, outcome or limit', async () => {
    for (const [query, field] of [
      ['?since=yesterday', 'querystring/since'],
      ['?outcome=maybe', 'querystring/outcome'],
      ['?limit=1001', 'querystring/limit'],
      ['?limit=0', 'querystring/limit'],
    ]) {
      const res = await api.call('GET', `/v1/events${query}`);
      assert.equal(res.status, 400, query);
      assert.ok(res.body.message.includes(field), `${query}: ${res.body.message}`);
    }
  });

  test('GET /v1/workers lists workers seen within 15 s and forgets those gone for an hour', async () => {
    const now = new Date();
    await publishHeartbeat(api.redis, worker('fresh', now));
    await publishHeartbeat(api.redis, worker('recent', new Date(now.getTime() - 10_000)));
    await publishHeartbeat(api.redis, worker('stale', new Date(now.getTime() - 20_000)));
    await publishHeartbeat(api.redis, worker('gone', new Date(now.getTime() - 2 * 3_600_000)));
    const res = await api.call('GET', '/v1/workers');
    assert.equal(res.status, 200);
    assert.deepEqual(res.body.items.map((w: { id: string }) => w.id), ['fresh', 'recent']);
    assert.deepEqual(res.body.items[0], worker('fresh', now));
    assert.equal(await api.redis.hexists(keys.workers, 'stale'), 1, 'a stale worker is kept a while (it may come back)');
    assert.equal(await api.redis.hexists(keys.workers, 'gone'), 0, 'a worker gone for an hour is pruned');
  });

  test('GET /metrics: request counts by route and status, the configuration version', async () => {
    await api.call('POST', '/v1/mail-flow-policies', bodies.policy('PLAIN'));
    await api.call('GET', '/v1/mail-flow-policies/PLAIN');
    await api.call('GET', '/v1/mail-flow-policies/absent');
    assert.equal((await api.call('GET', '/metrics', undefined, { token: null })).status, 401);
    const res = await api.call('GET', '/metrics');
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/plain/);
    assert.match(res.text, /^certgate_api_requests_total\{method="GET",route="\/v1\/mail-flow-policies\/:name",status="200"\} 1$/m);
    assert.match(res.text, /^certgate_api_requests_total\{method="GET",route="\/v1\/mail-flow-policies\/:name",status="404"\} 1$/m);
    assert.match(res.text, /^certgate_api_requests_total\{method="POST",route="\/v1\/mail-flow-policies",status="201"\} 1$/m);
    assert.match(res.text, /^certgate_api_request_duration_seconds_bucket\{.*route="\/v1\/mail-flow-policies".*\} 1$/m);
    assert.match(res.text, /^certgate_config_version 1$/m);
    assert.match(res.text, /^process_cpu_seconds_total /m);
  });

  test('/health: 200 while Redis answers, 503 when it is down', async () => {
    const up = await api.call('GET', '/health', undefined, { token: null });
    assert.equal(up.status, 200);
    assert.deepEqual(up.body, { status: 'ok', redis: 'up' });
    await api.stopRedis();
    for (let i = 0; i < 50 && api.redis.status === 'ready'; i++) await new Promise((r) => setTimeout(r, 10));
    const started = Date.now();
    const down = await api.call('GET', '/health', undefined, { token: null });
    assert.equal(down.status, 503);
    assert.deepEqual(down.body, { status: 'degraded', redis: 'down' });
    assert.ok(Date.now() - started < 1500, 'answers promptly');
    const configRead = await api.call('GET', '/v1/listeners');
    assert.equal(configRead.status, 503, 'store errors are a JSON 503');
    assert.match(configRead.body.message, /Redis/);
    assert.ok(start.getTime() <= Date.now());
  });
});
