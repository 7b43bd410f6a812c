// Bearer tokens: what needs one, the bootstrap token, created admin and read-only tokens.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { keys } from '../shared/redis/keys.ts';
import { bodies, startApi, type ApiHarness } from './helpers/api.ts';

describe('API authentication', () => {
  let api: ApiHarness;
  before(async () => {
    api = await startApi();
  });
  after(async () => {
    await api.close();
  });

  test('a missing token gets a JSON 401 with WWW-Authenticate', async () => {
    const res = await api.call('GET', '/v1/listeners', undefined, { token: null });
    assert.equal(res.status, 401);
    assert.deepEqual(Object.keys(res.body).sort(), ['error', 'message', 'statusCode']);
    assert.equal(res.body.statusCode, 401);
    assert.equal(res.body.error, 'Unauthorized');
    assert.match(res.body.message, /bearer token/i);
    assert.match(String(res.headers['www-authenticate']), /^Bearer/);
  });

  test('a wrong token gets 401, on reads, writes and unknown routes alike', async () => {
    for (const [method, url] of [
      ['GET', '/v1/listeners'],
      ['POST', '/v1/mail-flow-policies'],
      ['GET', '/metrics'],
      ['GET', '/v1/no-such-route'],
    ] as const) {
      const res = await api.call(method, url, method === 'POST' ? bodies.policy('X') : undefined, { token: 'wrong-token' });
      assert.equal(res.status, 401, `${method} ${url}`);
      assert.equal(res.body.message, 'invalid bearer token');
    }
    const malformed = await api.call('GET', '/v1/listeners', undefined, { token: null, headers: { authorization: 'Basic YWRtaW46YWRtaW4=' } });
    assert.equal(malformed.status, 401);
  });

  test('/health, /openapi.json and /docs need no token', async () => {
    for (const url of ['/health', '/openapi.json', '/docs', '/docs/json']) {
      const res = await api.call('GET', url, undefined, { token: null });
      assert.ok(res.status === 200 || res.status === 302, `${url}: ${res.status}`);
    }
  });

  test('the bootstrap token is an admin', async () => {
    const res = await api.call('POST', '/v1/mail-flow-policies', bodies.policy('PLAIN'));
    assert.equal(res.status, 201);
  });

  test('POST /v1/tokens creates a token shown once, stored only as a hash', async () => {
    const created = await api.call('POST', '/v1/tokens', { name: 'ci', role: 'admin' });
    assert.equal(created.status, 201);
    assert.equal(created.body.name, 'ci');
    assert.equal(created.body.role, 'admin');
    assert.match(created.body.token, /^[A-Za-z0-9_-]{43}$/, '32 random bytes, base64url');

    const stored = await api.redis.hgetall(keys.tokens);
    assert.ok(!JSON.stringify(stored).includes(created.body.token), 'the token itself is not stored');

    const list = await api.call('GET', '/v1/tokens');
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.items.map((t: { name: string }) => t.name), ['ci']);
    assert.ok(!list.text.includes(created.body.token), 'listing never shows tokens');
    assert.deepEqual(Object.keys(list.body.items[0]).sort(), ['createdAt', 'name', 'role']);

    const withIt = await api.call('POST', '/v1/listeners', bodies.listener('by-ci', 2601), { token: created.body.token });
    assert.equal(withIt.status, 201);
    const audit = await api.call('GET', '/v1/audit?limit=1');
    assert.equal(audit.body.items[0].token, 'ci', 'changes are audited under the token name');
  });

  test('token names are unique, and "bootstrap" is reserved', async () => {
    assert.equal((await api.call('POST', '/v1/tokens', { name: 'ci', role: 'read-only' })).status, 409);
    const reserved = await api.call('POST', '/v1/tokens', { name: 'bootstrap', role: 'admin' });
    assert.equal(reserved.status, 409);
    assert.match(reserved.body.message, /reserved/);
    const bad = await api.call('POST', '/v1/tokens', { name: 'x', role: 'superuser' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.message, /body\/role/);
  });

  test('a read-only token may GET but gets 403 on every write', async () => {
    const { body } = await api.call('POST', '/v1/tokens', { name: 'viewer', role: 'read-only' });
    const viewer = body.token as string;
    assert.equal((await api.call('GET', '/v1/listeners', undefined, { token: viewer })).status, 200);
    assert.equal((await api.call('GET', '/v1/config', undefined, { token: viewer })).status, 200);
    assert.equal((await api.call('GET', '/metrics', undefined, { token: viewer })).status, 200);
    const before = await api.version();
    for (const [method, url, payload] of [
      ['POST', '/v1/mail-flow-policies', bodies.policy('RO')],
      ['PUT', '/v1/mail-flow-policies/PLAIN', bodies.policy('PLAIN', { action: 'reject' })],
      ['DELETE', '/v1/listeners/by-ci', undefined],
      ['PUT', '/v1/config', {}],
      ['PUT', '/v1/crl-settings', {}],
      ['PUT', '/v1/ocsp-settings', {}],
      ['POST', '/v1/tokens', { name: 'escalate', role: 'admin' }],
      ['DELETE', '/v1/tokens/ci', undefined],
    ] as const) {
      const res = await api.call(method, url, payload, { token: viewer });
      assert.equal(res.status, 403, `${method} ${url}`);
      assert.match(res.body.message, /read-only/);
    }
    assert.equal(await api.version(), before, 'nothing changed');
    assert.equal((await api.call('GET', '/v1/tokens')).body.items.length, 2);
  });

  test('DELETE /v1/tokens/{name} revokes at once', async () => {
    const { body } = await api.call('POST', '/v1/tokens', { name: 'temp', role: 'admin' });
    assert.equal((await api.call('GET', '/v1/listeners', undefined, { token: body.token })).status, 200);
    assert.equal((await api.call('DELETE', '/v1/tokens/temp')).status, 204);
    assert.equal((await api.call('GET', '/v1/listeners', undefined, { token: body.token })).status, 401);
    assert.equal((await api.call('DELETE', '/v1/tokens/temp')).status, 404);
    const audit = await api.call('GET', '/v1/audit?limit=2');
    assert.deepEqual(
      audit.body.items.map((e: { kind: string; name: string; action: string }) => `${e.kind} ${e.name} ${e.action}`),
      ['tokens temp delete', 'tokens temp create'],
    );
  });
});
