// The configuration as one versioned document: ETag / If-Match, publication of every
// version, atomic import, concurrent writers, the audit log.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { buildApp } from '../api/app.ts';
import { keys } from '../shared/redis/keys.ts';
import { loadConfig } from '../shared/config/store.ts';
import { ADMIN_TOKEN, bodies, startApi, type ApiHarness } from './helpers/api.ts';

describe('configuration versions', () => {
  let api: ApiHarness;
  before(async () => {
    api = await startApi();
    assert.equal((await api.call('POST', '/v1/mail-flow-policies', bodies.policy('PLAIN'))).status, 201);
  });
  after(async () => {
    await api.close();
  });

  test('GET /v1/config and every write carry the version as ETag', async () => {
    const config = await api.call('GET', '/v1/config');
    assert.equal(config.body.version, 1);
    assert.equal(config.headers.etag, '"1"');
    const write = await api.call('POST', '/v1/crl-sources', bodies.crlSource('a'));
    assert.equal(write.headers.etag, '"2"');
    assert.equal((await api.call('GET', '/v1/crl-sources')).body.version, 2);
  });

  test('If-Match: the current version applies, any other gets 412 and changes nothing', async () => {
    const current = await api.version();
    const stale = await api.call('POST', '/v1/crl-sources', bodies.crlSource('b'), { headers: { 'if-match': `"${current - 1}"` } });
    assert.equal(stale.status, 412);
    assert.match(stale.body.message, new RegExp(`version is ${current}, not ${current - 1}`));
    const malformed = await api.call('DELETE', '/v1/crl-sources/a', undefined, { headers: { 'if-match': 'W/"xyz"' } });
    assert.equal(malformed.status, 412);
    assert.equal(await api.version(), current);

    const fresh = await api.call('POST', '/v1/crl-sources', bodies.crlSource('b'), { headers: { 'if-match': `"${current}"` } });
    assert.equal(fresh.status, 201);
    const star = await api.call('DELETE', '/v1/crl-sources/b', undefined, { headers: { 'if-match': '*' } });
    assert.equal(star.status, 204);
    const settings = await api.call('PUT', '/v1/crl-settings', {}, { headers: { 'if-match': `"${current}"` } });
    assert.equal(settings.status, 412, 'singletons and imports honour If-Match too');
  });

  test('every write publishes its version on the change channel', async () => {
    const subscriber = new Redis(api.redisServer.url);
    try {
      const messages: string[] = [];
      subscriber.on('message', (_channel: string, message: string) => messages.push(message));
      await subscriber.subscribe(keys.configChannel);
      const created = await api.call('POST', '/v1/crl-sources', bodies.crlSource('published'));
      const deleted = await api.call('DELETE', '/v1/crl-sources/published');
      const expected = [created.headers.etag, deleted.headers.etag].map((etag) => String(etag).replaceAll('"', ''));
      for (let i = 0; i < 50 && messages.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(messages, expected);
    } finally {
      subscriber.disconnect();
    }
  });

  test('PUT /v1/config is all or nothing', async () => {
    const before = await loadConfig(api.redis);
    const { version: _version, ...exported } = (await api.call('GET', '/v1/config')).body;
    const bad = structuredClone(exported);
    bad.crlSources.push(bodies.crlSource('fine-1'), bodies.crlSource('fine-2'));
    bad.listeners.push(bodies.listener('ok', 3101), bodies.listener('broken', 3102, { defaultPolicy: 'missing' }));
    const res = await api.call('PUT', '/v1/config', bad);
    assert.equal(res.status, 400);
    assert.match(res.body.message, /\/listeners\/broken\/defaultPolicy/);
    assert.deepEqual(await loadConfig(api.redis), before, 'nothing of the import was applied');

    const good = structuredClone(exported);
    good.crlSources = [bodies.crlSource('only')];
    const applied = await api.call('PUT', '/v1/config', good);
    assert.equal(applied.status, 200, applied.text);
    assert.equal(applied.body.version, before.version + 1);
    assert.deepEqual(applied.body.crlSources.map((s: { name: string }) => s.name), ['only']);
    assert.equal(applied.body.crlSources[0].fileType, 'asn1', 'defaults are filled in imported items');
  });

  test('an exported configuration imports as is', async () => {
    const exported = (await api.call('GET', '/v1/config')).body;
    const res = await api.call('PUT', '/v1/config', exported);
    assert.equal(res.status, 200, res.text);
    const { version, ...imported } = res.body;
    const { version: exportedVersion, ...original } = exported;
    assert.equal(version, exportedVersion + 1);
    assert.deepEqual(imported, original);
  });

  test('20 concurrent writes all land, one version each', async () => {
    const before = await api.version();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => api.call('POST', '/v1/crl-sources', bodies.crlSource(`c${i}`))));
    assert.deepEqual(results.map((r) => r.status), Array(20).fill(201));
    const versions = results.map((r) => Number(String(r.headers.etag).replaceAll('"', ''))).sort((a, b) => a - b);
    assert.deepEqual(versions, Array.from({ length: 20 }, (_, i) => before + 1 + i));
    assert.equal(await api.version(), before + 20);
    const names = (await api.call('GET', '/v1/crl-sources')).body.items.map((s: { name: string }) => s.name);
    for (let i = 0; i < 20; i++) assert.ok(names.includes(`c${i}`), `c${i} is stored`);
  });

  test('writers in two API processes (two Redis clients) do not lose updates', async () => {
    const otherRedis = new Redis(api.redisServer.url);
    const other = await buildApp({ redis: otherRedis, apiToken: ADMIN_TOKEN, logger: false });
    try {
      const before = await api.version();
      const post = (app: typeof other, name: string) =>
        app.inject({ method: 'POST', url: '/v1/crl-sources', payload: bodies.crlSource(name), headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => post(i % 2 ? other : api.app, `x${i}`)));
      assert.deepEqual(results.map((r) => r.statusCode), Array(20).fill(201));
      assert.equal(await api.version(), before + 20);
      // Each process sees the other's writes (its cache follows the change channel).
      const seen = await other.inject({ method: 'GET', url: '/v1/crl-sources/x0', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      assert.equal(seen.statusCode, 200);
      assert.equal((await api.call('GET', '/v1/crl-sources/x1')).status, 200);
    } finally {
      await other.close();
      otherRedis.disconnect();
    }
  });

  test('the audit log records who changed what, newest first', async () => {
    await api.call('POST', '/v1/tokens', { name: 'auditor', role: 'admin' }).then(async ({ body }) => {
      await api.call('POST', '/v1/mail-flow-policies', bodies.policy('AUDITED'), { token: body.token });
      await api.call('PUT', '/v1/mail-flow-policies/AUDITED', bodies.policy('AUDITED', { action: 'reject' }), { token: body.token });
      await api.call('DELETE', '/v1/mail-flow-policies/AUDITED', undefined, { token: body.token });
    });
    const version = await api.version();
    const audit = await api.call('GET', '/v1/audit?limit=4');
    assert.equal(audit.status, 200);
    const entries = audit.body.items.map(({ token, kind, name, action, version: v }: Record<string, unknown>) => ({ token, kind, name, action, version: v }));
    assert.deepEqual(entries, [
      { token: 'auditor', kind: 'mail-flow-policies', name: 'AUDITED', action: 'delete', version },
      { token: 'auditor', kind: 'mail-flow-policies', name: 'AUDITED', action: 'replace', version: version - 1 },
      { token: 'auditor', kind: 'mail-flow-policies', name: 'AUDITED', action: 'create', version: version - 2 },
      { token: 'bootstrap', kind: 'tokens', name: 'auditor', action: 'create', version: null },
    ]);
    assert.ok(!Number.isNaN(Date.parse(audit.body.items[0].time)));
    // A refused change is not audited.
    await api.call('POST', '/v1/mail-flow-policies', bodies.policy('PLAIN'));
    assert.equal((await api.call('GET', '/v1/audit?limit=1')).body.items[0].action, 'delete');
    assert.equal((await api.call('GET', '/v1/audit?limit=0')).status, 400);
  });
});
