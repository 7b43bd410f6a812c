// The API in mutual-TLS mode (api/mtls.ts, SPEC §2.6 and §2.6b `webInterface`): HTTPS options
// from the environment, and the revocation hook (CRLs, and OCSP against openssl's responder)
// on a minimal Fastify HTTPS server.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { httpsOptionsFromEnv, revocationHook } from '../api/mtls.ts';
import { updateConfig } from '../shared/config/store.ts';
import { refreshSource } from '../shared/pki/crl/refresh.ts';
import type { CrlStore } from '../shared/pki/crl/store.ts';
import { startCrlStore } from './helpers/follow.ts';
import { DEFAULT_CRL_SETTINGS, DEFAULT_OCSP_SETTINGS, type CrlSettings, type CrlSource, type OcspSettings } from '../shared/config/schemas.ts';
import { OcspChecker } from '../shared/pki/ocsp/checker.ts';
import { startOcspResponder, type OcspResponder } from './helpers/ocsp-responder.ts';
import { startCrlServer, testLogger, type CrlServer } from './helpers/crl-server.ts';
import { eventually } from './helpers/wait.ts';
import { createPki, type Issued, type Pki } from './helpers/pki.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { freePort } from './helpers/ports.ts';

let pki: Pki;
let dir: string;
let env: Record<string, string>;
let redisServer: TestRedis;
let redis: Redis;
let web: CrlServer;
let store: CrlStore;
let app: FastifyInstance;
let port: number;
let alice: Issued; // valid
let bob: Issued; // revoked (CRL)
let carol: Issued; // revoked (OCSP only)
let dave: Issued; // valid, never asked about before the responder goes away
let settings: CrlSettings;
let ocspSettings: OcspSettings = DEFAULT_OCSP_SETTINGS;
let responder: OcspResponder;

interface Answer {
  status: number;
  body: { statusCode?: number; error?: string; message?: string; ok?: boolean };
}

/** GET /v1/ping over a fresh TLS connection, with the client's certificate chain if given. */
function get(client: Issued | null): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const auth = client ? { cert: client.chainPem, key: client.keyPem } : {};
    const req = https.request({ host: '127.0.0.1', port, path: '/v1/ping', ca: pki.root.certPem, agent: false, ...auth }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

function crlSource(name: string): CrlSource {
  return { name, fileType: 'asn1', primaryUrl: web.url(`/${name}.crl`), secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true };
}

/** Serves, downloads and enables a CRL source, and waits until the store has loaded it. */
async function enforce(name: string, crl: Buffer): Promise<void> {
  web.serve(`/${name}.crl`, crl);
  const src = crlSource(name);
  const status = await refreshSource(redis, src, { trustedCas: [pki.root.x509, pki.intermediate.x509], fileRoot: null, now: new Date() });
  assert.equal(status.lastError, null);
  await updateConfig(redis, (c) => ({ ...c, crlSources: [...c.crlSources, src] }));
  await eventually(() => store.status().some((s) => s.source === name), 3000, `CRL source "${name}" in the store`);
}

before(async () => {
  [pki, dir, redisServer, web] = await Promise.all([createPki(), mkdtemp(join(tmpdir(), 'certgate-mtls-')), startRedis(), startCrlServer()]);
  const server = await pki.server({ cn: 'api.example.com' });
  [alice, bob, carol, dave] = await Promise.all(['ALICE', 'BOB', 'CAROL', 'DAVE'].map((cn) => pki.client({ cn, issuer: 'intermediate' })));
  env = { API_TLS_CERT: join(dir, 'api.pem'), API_TLS_KEY: join(dir, 'api.key'), API_CLIENT_CA: join(dir, 'ca.pem') };
  await Promise.all([writeFile(env.API_TLS_CERT, server.certPem), writeFile(env.API_TLS_KEY, server.keyPem), writeFile(env.API_CLIENT_CA, pki.root.certPem)]);

  redis = new Redis(redisServer.url);
  store = await startCrlStore(redisServer.url, testLogger());
  settings = { ...DEFAULT_CRL_SETTINGS, webInterface: true };

  const httpsOptions = httpsOptionsFromEnv(env);
  assert.ok(httpsOptions);
  app = Fastify({ https: httpsOptions });
  responder = await startOcspResponder({ ca: pki.intermediate, entries: [{ serial: alice.serial }, { serial: bob.serial }, { serial: carol.serial, revoked: { reason: 'affiliationChanged' } }] });
  const ocsp = new OcspChecker({ redis: null, logger: testLogger() });
  app.addHook('onRequest', revocationHook({ crls: store, ocsp }, () => ({ crlSettings: settings, ocspSettings }), httpsOptions));
  app.get('/v1/ping', async () => ({ ok: true }));
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
});

after(async () => {
  await app?.close();
  await responder?.stop();
  await store?.stop();
  redis?.disconnect();
  await Promise.all([web?.close(), redisServer?.stop(), pki?.cleanup(), dir && rm(dir, { recursive: true, force: true })]);
});

describe('httpsOptionsFromEnv', () => {
  test('none of the variables: plain HTTP (null)', () => {
    assert.equal(httpsOptionsFromEnv({}), null);
  });

  test('all three: mutual TLS options', () => {
    const o = httpsOptionsFromEnv(env);
    assert.ok(o);
    assert.deepEqual({ requestCert: o.requestCert, rejectUnauthorized: o.rejectUnauthorized, minVersion: o.minVersion }, { requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
    assert.match(o.ca, /BEGIN CERTIFICATE/);
  });

  test('unusable settings are one-line errors', () => {
    const oneLine = (re: RegExp) => (err: Error) => re.test(err.message) && !err.message.includes('\n');
    assert.throws(() => httpsOptionsFromEnv({ API_TLS_CERT: env.API_TLS_CERT }), oneLine(/together; API_TLS_KEY, API_CLIENT_CA are not set$/));
    assert.throws(() => httpsOptionsFromEnv({ ...env, API_CLIENT_CA: join(dir, 'missing.pem') }), oneLine(/^API_CLIENT_CA ".*missing\.pem" cannot be read: ENOENT/));
    assert.throws(() => httpsOptionsFromEnv({ ...env, API_CLIENT_CA: env.API_TLS_KEY }), oneLine(/^API_CLIENT_CA: PEM block #1 is PRIVATE KEY, expected CERTIFICATE$/));
    assert.throws(() => httpsOptionsFromEnv({ ...env, API_TLS_KEY: alice.keyPath }), oneLine(/^API_TLS_KEY is not the private key of the API_TLS_CERT certificate$/));
  });
});

describe('revocation hook', () => {
  test('a valid client certificate passes; none at all fails the handshake', async () => {
    assert.deepEqual(await get(alice), { status: 200, body: { ok: true } });
    await assert.rejects(get(null));
  });

  test('no TLS session resumption: a saved session offered again without the certificate fails the handshake', async () => {
    const connect = (o: tls.ConnectionOptions) => new Promise<tls.TLSSocket>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, ca: pki.root.certPem, ...o }, () => resolve(s));
      s.on('error', reject);
    });
    const first = await connect({ cert: alice.chainPem, key: alice.keyPem });
    // TLS 1.3 tickets come after the handshake; the client saves the session from them.
    const session = await new Promise<Buffer>((resolve) => first.once('session', resolve));
    first.end();
    const withCert = await connect({ cert: alice.chainPem, key: alice.keyPem, session });
    assert.equal(withCert.isSessionReused(), false, 'a full handshake, the certificate proved again');
    withCert.end();
    await assert.rejects(async () => {
      const bare = await connect({ session });
      // A TLS 1.3 client learns of the refused certificate after its own handshake ends.
      await new Promise((resolve, reject) => { bare.on('data', resolve); bare.on('error', reject); bare.on('end', () => reject(new Error('closed'))); });
    });
  });

  test('a revoked certificate gets 403 once its CRL is loaded and webInterface is on', async () => {
    assert.equal((await get(bob)).status, 200, 'no CRL yet: not revocation-checked');
    await enforce('int', await pki.crl('intermediate', [{ serial: bob.serial }]));
    assert.deepEqual(await get(bob), { status: 403, body: { statusCode: 403, error: 'Forbidden', message: 'client certificate revoked' } });
    assert.equal((await get(alice)).status, 200);
  });

  test('with webInterface off the revoked certificate passes', async () => {
    settings = { ...settings, webInterface: false };
    try {
      assert.equal((await get(bob)).status, 200);
    } finally {
      settings = { ...settings, webInterface: true };
    }
  });

  test('an expired CRL: 403 under onExpiredCrl reject, passes under accept-and-log', async () => {
    const hour = 3600_000;
    await enforce('root', await pki.crl('root', [], { thisUpdate: new Date(Date.now() - 48 * hour), nextUpdate: new Date(Date.now() - 24 * hour) }));
    assert.deepEqual(await get(alice), { status: 403, body: { statusCode: 403, error: 'Forbidden', message: 'client certificate cannot be checked: the CRL has expired' } });
    settings = { ...settings, onExpiredCrl: 'accept-and-log' };
    assert.equal((await get(alice)).status, 200);
    assert.equal((await get(bob)).status, 403, 'revoked stays revoked');
  });
});

describe('revocation hook with OCSP', () => {
  test('webInterface in the OCSP settings: revoked by OCSP only gets 403, good passes', async () => {
    assert.equal((await get(carol)).status, 200, 'OCSP off: the CRLs do not know carol');
    ocspSettings = { ...DEFAULT_OCSP_SETTINGS, webInterface: true, responderUrl: responder.url };
    assert.deepEqual(await get(carol), { status: 403, body: { statusCode: 403, error: 'Forbidden', message: 'client certificate revoked' } });
    assert.equal((await get(alice)).status, 200);
  });

  test('no answer: onUnavailable reject gets 403, accept-and-log and use-crl pass', async () => {
    const closed = `http://127.0.0.1:${await freePort()}/`;
    ocspSettings = { ...DEFAULT_OCSP_SETTINGS, webInterface: true, responderUrl: closed, onUnavailable: 'reject' };
    assert.deepEqual(await get(dave), { status: 403, body: { statusCode: 403, error: 'Forbidden', message: 'client certificate cannot be checked: its revocation status is unavailable' } });
    assert.equal((await get(alice)).status, 200, 'alice: the answer cached before the responder went away');
    ocspSettings = { ...ocspSettings, onUnavailable: 'accept-and-log' };
    assert.equal((await get(dave)).status, 200);
    ocspSettings = { ...ocspSettings, onUnavailable: 'use-crl' };
    assert.equal((await get(dave)).status, 200);
    assert.equal((await get(bob)).status, 403, 'use-crl: the CRL still revokes bob');
  });
});
