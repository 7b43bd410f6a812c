// The API logs JSON lines (pino) and never writes a bearer token, password or private
// key into them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { Redis } from 'ioredis';
import { buildApp } from '../api/app.ts';
import { startRedis } from './helpers/redis.ts';
import { ADMIN_TOKEN, bodies } from './helpers/api.ts';

test('logs are JSON lines with secrets redacted', async () => {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  const redisServer = await startRedis();
  const redis = new Redis(redisServer.url);
  const app = await buildApp({ redis, apiToken: ADMIN_TOKEN, logger: { level: 'info', stream } });
  try {
    const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
    const created = await app.inject({ method: 'POST', url: '/v1/ldap-profiles', headers, payload: bodies.ldapProfile('corp', { bind: { dn: 'cn=a', password: 'hunter2-password' } }) });
    assert.equal(created.statusCode, 201);
    // What a handler might log while debugging: the request headers and a profile.
    app.log.info({ req: { headers }, profile: { bind: { password: 'hunter2-password' } }, tls: { privateKeyPem: '-----BEGIN PRIVATE KEY-----' } }, 'debug');
    app.log.info({ password: 'hunter2-password', token: 'created-token-value' }, 'flat');

    assert.ok(lines.length >= 4, 'request lines and the two debug lines');
    for (const line of lines) {
      const entry = JSON.parse(line) as Record<string, unknown>;
      assert.equal(typeof entry.time, 'number');
      for (const secret of [ADMIN_TOKEN, 'hunter2-password', 'BEGIN PRIVATE KEY', 'created-token-value']) {
        assert.ok(!line.includes(secret), `"${secret}" in log line ${line}`);
      }
    }
    assert.ok(lines.some((l) => l.includes('[redacted]')));
  } finally {
    await app.close();
    redis.disconnect();
    await redisServer.stop();
  }
});
