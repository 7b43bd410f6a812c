// CRUD of the five configuration resources, deletion while referenced, CRL status and
// settings, and the routes that answer 501 until their issues land.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { keys } from '../shared/redis/keys.ts';
import { bodies, startApi, type ApiHarness } from './helpers/api.ts';

interface Case {
  path: string;
  create: Record<string, unknown>;
  /** A replacement (name left out, as a PUT may) and the property it changes. */
  replace: Record<string, unknown>;
  changed: [string, unknown];
  /** Defaults the API must have filled into the created item. */
  defaults: Record<string, unknown>;
}

const CASES: Case[] = [
  {
    path: 'ldap-profiles',
    create: bodies.ldapProfile('dir1'),
    replace: { ...bodies.ldapProfile('dir1'), name: undefined, baseDn: 'dc=other,dc=org' },
    changed: ['baseDn', 'dc=other,dc=org'],
    defaults: { connection: 'failover', bind: null, startTls: false, caPem: null, timeoutMs: 5000, cacheTtlSeconds: 0, maxConnections: 10 },
  },
  {
    path: 'smtp-auth-profiles',
    create: bodies.certificateAuthProfile('cert1', 'corp'),
    replace: { type: 'certificate', ldapProfile: 'corp', allowSmtpAuthWithoutCertificate: true, fallbackProfile: 'ldap-auth' },
    changed: ['allowSmtpAuthWithoutCertificate', true],
    defaults: { allowSmtpAuthWithoutCertificate: false, fallbackProfile: null },
  },
  {
    path: 'mail-flow-policies',
    create: bodies.policy('pol1'),
    replace: { action: 'accept', tls: 'preferred' },
    changed: ['tls', 'preferred'],
    defaults: { tls: 'off', verifyClientCertificate: false, requireSmtpAuth: false, smtpAuthRequiresTls: false, maxMessageBytes: 26214400, maxRecipients: 100,
      maxMessagesPerConnection: 100, maxConnectionsPerClient: 100, maxAuthFailuresPerConnection: 3, maxBadCommands: 10,
      authFailureThrottle: { perClient: { maxFailures: 100, windowSeconds: 600 }, perUser: null },
    },
  },
  {
    path: 'listeners',
    create: bodies.listener('lis1', 2701),
    replace: { ...bodies.listener('lis1', 2702), name: undefined },
    changed: ['port', 2702],
    defaults: { implicitTls: false, tls: null, smtpAuthProfile: null, senderGroups: [], acceptedDomains: [], proxyProtocol: null, maxConnections: 1000, idleTimeoutSeconds: 300, enabled: true },
  },
  {
    path: 'crl-sources',
    create: bodies.crlSource('crl1'),
    replace: { primaryUrl: 'file:///var/lib/crl/ca.crl', schedule: { cron: '0 */6 * * *' } },
    changed: ['schedule', { cron: '0 */6 * * *' }],
    defaults: { fileType: 'asn1', secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true },
  },
];

describe('configuration resources', () => {
  let api: ApiHarness;
  before(async () => {
    api = await startApi();
    for (const [url, body] of [
      ['/v1/ldap-profiles', bodies.ldapProfile('corp')],
      ['/v1/smtp-auth-profiles', bodies.ldapAuthProfile('ldap-auth', 'corp')],
      ['/v1/mail-flow-policies', bodies.policy('PLAIN')],
    ] as const) {
      assert.equal((await api.call('POST', url, body)).status, 201, url);
    }
  });
  after(async () => {
    await api.close();
  });

  for (const c of CASES) {
    test(`${c.path}: create, read, list, replace, delete`, async () => {
      const base = `/v1/${c.path}`;
      const name = c.create.name as string;
      const before = await api.version();

      const created = await api.call('POST', base, c.create);
      assert.equal(created.status, 201, created.text);
      assert.equal(created.headers.etag, `"${before + 1}"`);
      assert.equal(created.headers.location, `${base}/${name}`);
      for (const [key, value] of Object.entries(c.defaults)) assert.deepEqual(created.body[key], value, `default of ${key}`);

      const duplicate = await api.call('POST', base, c.create);
      assert.equal(duplicate.status, 409);
      assert.match(duplicate.body.message, new RegExp(`"${name}" already exists`));

      const got = await api.call('GET', `${base}/${name}`);
      assert.equal(got.status, 200);
      const { status: _status, ...item } = got.body; // crl-sources add a read-only status
      assert.deepEqual(item, created.body);
      assert.equal(got.headers.etag, `"${before + 1}"`);

      const list = await api.call('GET', base);
      assert.equal(list.status, 200);
      assert.equal(list.body.version, before + 1);
      assert.deepEqual(list.body.items.find((i: { name: string }) => i.name === name), created.body);

      const replaced = await api.call('PUT', `${base}/${name}`, c.replace);
      assert.equal(replaced.status, 200, replaced.text);
      assert.equal(replaced.body.name, name, 'the name comes from the path');
      assert.deepEqual(replaced.body[c.changed[0]], c.changed[1]);
      assert.equal(replaced.headers.etag, `"${before + 2}"`);
      assert.deepEqual((await api.call('GET', `${base}/${name}`)).body[c.changed[0]], c.changed[1]);

      const renamed = await api.call('PUT', `${base}/${name}`, { ...c.replace, name: 'other' });
      assert.equal(renamed.status, 400);
      assert.match(renamed.body.message, /body\/name must equal the name in the path/);
      assert.equal((await api.call('PUT', `${base}/absent`, c.replace)).status, 404);
      assert.equal((await api.call('GET', `${base}/absent`)).status, 404);
      const badName = await api.call('GET', `${base}/-bad-name`);
      assert.equal(badName.status, 400);
      assert.match(badName.body.message, /params\/name/);

      const deleted = await api.call('DELETE', `${base}/${name}`);
      assert.equal(deleted.status, 204);
      assert.equal(deleted.text, '');
      assert.equal(deleted.headers.etag, `"${before + 3}"`);
      assert.equal((await api.call('GET', `${base}/${name}`)).status, 404);
      assert.equal((await api.call('DELETE', `${base}/${name}`)).status, 404);
      assert.equal(await api.version(), before + 3, 'failed requests change nothing');
    });
  }

  test('a resource still referenced cannot be deleted (409 names the user)', async () => {
    const create = async (url: string, body: unknown) => assert.equal((await api.call('POST', url, body)).status, 201, url);
    await create('/v1/mail-flow-policies', bodies.policy('GROUPED'));
    await create('/v1/smtp-auth-profiles', bodies.certificateAuthProfile('cac', 'corp', { allowSmtpAuthWithoutCertificate: true, fallbackProfile: 'ldap-auth' }));
    await create(
      '/v1/listeners',
      bodies.listener('submission', 2801, { smtpAuthProfile: 'ldap-auth', senderGroups: [{ name: 'LOCAL', senders: ['127.0.0.0/8'], policy: 'GROUPED' }] }),
    );
    const before = await api.version();

    const refused = async (url: string, pattern: RegExp) => {
      const res = await api.call('DELETE', url);
      assert.equal(res.status, 409, url);
      assert.match(res.body.message, pattern);
    };
    await refused('/v1/mail-flow-policies/PLAIN', /mail flow policy "PLAIN" is in use by listener submission/);
    await refused('/v1/mail-flow-policies/GROUPED', /in use by listener submission/);
    await refused('/v1/ldap-profiles/corp', /LDAP profile "corp" is in use by SMTP auth profile ldap-auth, SMTP auth profile cac/);
    await refused('/v1/smtp-auth-profiles/ldap-auth', /in use by SMTP auth profile cac, listener submission/);
    assert.equal(await api.version(), before);

    assert.equal((await api.call('DELETE', '/v1/listeners/submission')).status, 204);
    assert.equal((await api.call('DELETE', '/v1/mail-flow-policies/GROUPED')).status, 204);
    await refused('/v1/smtp-auth-profiles/ldap-auth', /in use by SMTP auth profile cac$/);
    assert.equal((await api.call('DELETE', '/v1/smtp-auth-profiles/cac')).status, 204);
    assert.equal((await api.call('DELETE', '/v1/smtp-auth-profiles/ldap-auth')).status, 204);
  });

  test('GET /v1/crl-sources/{name} adds the download status', async () => {
    assert.equal((await api.call('POST', '/v1/crl-sources', bodies.crlSource('ca59'))).status, 201);
    const never = await api.call('GET', '/v1/crl-sources/ca59');
    assert.deepEqual(never.body.status, {
      lastAttemptAt: null,
      lastError: null,
      lastSuccessAt: null,
      url: null,
      issuer: null,
      thisUpdate: null,
      nextUpdate: null,
      crlNumber: null,
      revokedCount: null,
      sha256: null,
      bytes: null,
    });
    const attempt = { lastAttemptAt: '2026-11-27T18:00:00.000Z', lastError: 'HTTP 404 from http://crl.example.com/ca59.crl' };
    await api.redis.set(keys.crlStatus('ca59'), JSON.stringify(attempt));
    const failed = await api.call('GET', '/v1/crl-sources/ca59');
    assert.equal(failed.body.status.lastError, attempt.lastError);
    assert.equal(failed.body.status.lastAttemptAt, attempt.lastAttemptAt);
    assert.equal(failed.body.status.revokedCount, null);

    const written = await api.call('PUT', '/v1/crl-sources/ca59', { ...bodies.crlSource('ca59'), status: { lastError: null } });
    assert.equal(written.status, 400, 'status is read-only');
    assert.match(written.body.message, /body\/status is not a known property/);
  });

  test('GET/PUT /v1/crl-settings', async () => {
    const initial = await api.call('GET', '/v1/crl-settings');
    assert.deepEqual(initial.body, { inboundSmtpTls: true, outboundSmtpTls: false, webInterface: false, trustedCaPem: null, onExpiredCrl: 'reject' });
    const put = await api.call('PUT', '/v1/crl-settings', { outboundSmtpTls: true, onExpiredCrl: 'accept-and-log' });
    assert.equal(put.status, 200, put.text);
    assert.deepEqual(put.body, { inboundSmtpTls: true, outboundSmtpTls: true, webInterface: false, trustedCaPem: null, onExpiredCrl: 'accept-and-log' });
    assert.deepEqual((await api.call('GET', '/v1/crl-settings')).body, put.body);
    const bad = await api.call('PUT', '/v1/crl-settings', { onExpiredCrl: 'ignore' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.message, /body\/onExpiredCrl/);
  });

  test('GET/PUT /v1/ocsp-settings: SPEC defaults, a partial PUT fills them, audited and versioned', async () => {
    const defaults = {
      inboundSmtpTls: false, outboundSmtpTls: false, webInterface: false, responderUrl: null, responderCaPem: null,
      timeoutMs: 3000, maxCacheSeconds: 3600, onUnavailable: 'use-crl', sendNonce: false,
    };
    const initial = await api.call('GET', '/v1/ocsp-settings');
    assert.equal(initial.status, 200);
    assert.deepEqual(initial.body, defaults);
    assert.equal(initial.headers.etag, `"${await api.version()}"`);
    const put = await api.call('PUT', '/v1/ocsp-settings', { inboundSmtpTls: true, responderUrl: 'http://ocsp.example.mil/', onUnavailable: 'reject', sendNonce: true });
    assert.equal(put.status, 200, put.text);
    const expected = { ...defaults, inboundSmtpTls: true, responderUrl: 'http://ocsp.example.mil/', onUnavailable: 'reject', sendNonce: true };
    assert.deepEqual(put.body, expected);
    assert.equal(put.headers.etag, `"${await api.version()}"`);
    assert.deepEqual((await api.call('GET', '/v1/ocsp-settings')).body, expected);
    assert.deepEqual((await api.call('GET', '/v1/config')).body.ocspSettings, expected, 'part of the exported configuration');
    const audit = await api.call('GET', '/v1/audit?limit=1');
    assert.equal(audit.body.items[0].kind, 'ocsp-settings');
    assert.equal(audit.body.items[0].action, 'replace');
    const bad = await api.call('PUT', '/v1/ocsp-settings', { onUnavailable: 'ignore' });
    assert.equal(bad.status, 400);
    assert.match(bad.body.message, /body\/onUnavailable/);
    await api.call('PUT', '/v1/ocsp-settings', {});
  });

  test('LDAP test and CRL refresh: 404 for an unknown name, 400 for a bad body', async () => {
    assert.equal((await api.call('POST', '/v1/ldap-profiles/nope/test', { query: 'certificate', certificatePem: 'x' })).status, 404);
    const badQuery = await api.call('POST', '/v1/ldap-profiles/corp/test', { query: 'everything' });
    assert.equal(badQuery.status, 400);
    assert.match(badQuery.body.message, /body\/query/);
    assert.equal((await api.call('POST', '/v1/crl-sources/nope/refresh')).status, 404);
  });
});
