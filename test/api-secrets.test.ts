// Write-only secrets: bind passwords and listener private keys are stored, never
// returned; a PUT without them keeps them, `null` clears them, an import keeps them.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../shared/config/store.ts';
import { createPki, type Issued, type Pki } from './helpers/pki.ts';
import { bodies, startApi, type ApiHarness } from './helpers/api.ts';

const PASSWORD = 'S3cret-bind-password!';

describe('secrets are write-only', () => {
  let api: ApiHarness;
  let pki: Pki;
  let server: Issued;
  /** The private key's base64 body: unique enough to find in any response. */
  let keyMarker: string;

  const stored = async () => {
    const config = await loadConfig(api.redis);
    return {
      password: config.ldapProfiles.find((p) => p.name === 'corp')?.bind?.password,
      privateKey: config.listeners.find((l) => l.name === 'secure')?.tls?.privateKeyPem,
    };
  };
  const ldap = (bind: Record<string, unknown> | null) => bodies.ldapProfile('corp', { bind });
  const secureListener = (tls: Record<string, unknown>) =>
    bodies.listener('secure', 3001, { defaultPolicy: 'TLS', tls: { certificatePem: server.certPem, clientCaPem: null, ...tls } });

  before(async () => {
    [api, pki] = await Promise.all([startApi(), createPki()]);
    server = await pki.server({ cn: 'gateway.example.com' });
    keyMarker = server.keyPem.split('\n')[2] ?? '';
    assert.ok(keyMarker.length > 40);
    await api.call('POST', '/v1/mail-flow-policies', bodies.policy('TLS', { tls: 'required' }));
  });
  after(async () => {
    await Promise.all([api.close(), pki.cleanup()]);
  });

  test('create: responses say passwordSet / privateKeySet instead of the secret', async () => {
    const profile = await api.call('POST', '/v1/ldap-profiles', ldap({ dn: 'cn=admin,dc=example,dc=com', password: PASSWORD }));
    assert.equal(profile.status, 201, profile.text);
    assert.deepEqual(profile.body.bind, { dn: 'cn=admin,dc=example,dc=com', passwordSet: true });
    const listener = await api.call('POST', '/v1/listeners', secureListener({ privateKeyPem: server.keyPem }));
    assert.equal(listener.status, 201, listener.text);
    assert.deepEqual(listener.body.tls, { certificatePem: server.certPem, clientCaPem: null, privateKeySet: true });
    assert.deepEqual(await stored(), { password: PASSWORD, privateKey: server.keyPem });
  });

  test('reads never return them', async () => {
    for (const url of ['/v1/ldap-profiles', '/v1/ldap-profiles/corp', '/v1/listeners', '/v1/listeners/secure', '/v1/config']) {
      const res = await api.call('GET', url);
      assert.equal(res.status, 200, url);
    }
    const config = (await api.call('GET', '/v1/config')).body;
    assert.deepEqual(config.ldapProfiles[0].bind, { dn: 'cn=admin,dc=example,dc=com', passwordSet: true });
    assert.equal(config.listeners[0].tls.privateKeySet, true);
    assert.equal('privateKeyPem' in config.listeners[0].tls, false);
  });

  test('a PUT that omits a secret keeps it (also with the read-only flag sent back)', async () => {
    const profile = await api.call('PUT', '/v1/ldap-profiles/corp', ldap({ dn: 'cn=reader,dc=example,dc=com' }));
    assert.equal(profile.status, 200, profile.text);
    assert.deepEqual(profile.body.bind, { dn: 'cn=reader,dc=example,dc=com', passwordSet: true });
    const roundTrip = (await api.call('GET', '/v1/listeners/secure')).body;
    const listener = await api.call('PUT', '/v1/listeners/secure', { ...roundTrip, port: 3002 });
    assert.equal(listener.status, 200, listener.text);
    assert.equal(listener.body.tls.privateKeySet, true);
    assert.deepEqual(await stored(), { password: PASSWORD, privateKey: server.keyPem });
  });

  test('an import keeps the secrets of resources with the same name', async () => {
    const { version: _version, ...exported } = (await api.call('GET', '/v1/config')).body;
    const imported = await api.call('PUT', '/v1/config', exported);
    assert.equal(imported.status, 200, imported.text);
    assert.deepEqual(await stored(), { password: PASSWORD, privateKey: server.keyPem });
  });

  test('null clears a secret', async () => {
    const profile = await api.call('PUT', '/v1/ldap-profiles/corp', ldap({ dn: 'cn=reader,dc=example,dc=com', password: null }));
    assert.equal(profile.status, 200);
    assert.deepEqual(profile.body.bind, { dn: 'cn=reader,dc=example,dc=com', passwordSet: false });
    assert.equal((await stored()).password, undefined);

    // A listener that needs TLS cannot lose its key...
    const refused = await api.call('PUT', '/v1/listeners/secure', secureListener({ privateKeyPem: null }));
    assert.equal(refused.status, 400);
    assert.match(refused.body.message, /\/listeners\/secure\/tls\/privateKeyPem/);
    assert.equal((await stored()).privateKey, server.keyPem);
    // ...but drops it with the whole TLS setup once its policy no longer needs it.
    await api.call('POST', '/v1/mail-flow-policies', bodies.policy('PLAIN'));
    const plain = await api.call('PUT', '/v1/listeners/secure', bodies.listener('secure', 3001, { tls: null }));
    assert.equal(plain.status, 200, plain.text);
    assert.equal(plain.body.tls, null);
    assert.equal((await stored()).privateKey, undefined);
  });

  test('no response ever contained a secret', () => {
    assert.ok(api.responses.length > 10);
    for (const body of api.responses) {
      assert.ok(!body.includes(PASSWORD), `bind password leaked in ${body.slice(0, 200)}`);
      assert.ok(!body.includes(keyMarker), `private key leaked in ${body.slice(0, 200)}`);
      assert.ok(!body.includes('PRIVATE KEY'), `private key leaked in ${body.slice(0, 200)}`);
    }
  });
});
