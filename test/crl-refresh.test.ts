// CRL refresh pipeline (shared/pki/crl/refresh.ts, shared/pki/crl/download.ts) and the workers'
// revocation index (shared/pki/crl/store.ts), against a real Redis, CRLs made by openssl and
// served over HTTP or from files (SPEC §2.6).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { parseCrl } from '../shared/pki/crl/parse.ts';
import { downloadCrl } from '../shared/pki/crl/download.ts';
import { deleteCrlData, refreshSource, trustedCrlSigners, type RefreshContext } from '../shared/pki/crl/refresh.ts';
import { readCrlStatus } from '../shared/pki/crl/stored.ts';
import type { CrlStore, RevocationVerdict } from '../shared/pki/crl/store.ts';
import { startCrlStore } from './helpers/follow.ts';
import { updateConfig } from '../shared/config/store.ts';
import { keys } from '../shared/redis/keys.ts';
import { DEFAULT_CRL_SETTINGS, type CrlSource, type Listener } from '../shared/config/schemas.ts';
import { createPki, type CaHandle, type Issued, type Pki } from './helpers/pki.ts';
import { freePort } from './helpers/ports.ts';
import { startRedis, type TestRedis } from './helpers/redis.ts';
import { startCrlServer, testLogger, type CrlServer } from './helpers/crl-server.ts';
import { eventually } from './helpers/wait.ts';

const logger = testLogger();
let redisServer: TestRedis;
let redis: Redis;
let admin: Redis;
let pki: Pki;
let web: CrlServer;
let dir: string;
let alice: Issued; // intermediate-issued, never revoked
let bob: Issued; // intermediate-issued, revoked in most CRLs below

const HOUR = 3600_000;

function source(name: string, primaryUrl: string, extra: Partial<CrlSource> = {}): CrlSource {
  return { name, fileType: 'asn1', primaryUrl, secondaryUrl: null, schedule: { everySeconds: 3600 }, enabled: true, ...extra };
}

function ctx(over: Partial<RefreshContext> = {}): RefreshContext {
  return { trustedCas: [pki.root.x509, pki.intermediate.x509], fileRoot: null, now: new Date(), logger, ...over };
}

/** Adds (or replaces) sources in the stored configuration, as the API would. */
async function configure(...sources: CrlSource[]): Promise<void> {
  const names = new Set(sources.map((s) => s.name));
  await updateConfig(admin, (c) => ({ ...c, crlSources: [...c.crlSources.filter((s) => !names.has(s.name)), ...sources] }));
}

async function unconfigure(...names: string[]): Promise<void> {
  await updateConfig(admin, (c) => ({ ...c, crlSources: c.crlSources.filter((s) => !names.includes(s.name)) }));
}

/** Serves `crl` at /<name>.crl and makes it the CRL in force of source <name>. */
async function inForce(name: string, crl: Buffer, extra: Partial<CrlSource> = {}): Promise<CrlSource> {
  web.serve(`/${name}.crl`, crl);
  const src = source(name, web.url(`/${name}.crl`), extra);
  const status = await refreshSource(redis, src, ctx());
  assert.equal(status.lastError, null, 'the first CRL is taken');
  return src;
}

const chainOf = (leaf: Issued, ...cas: CaHandle[]): X509Certificate[] => [leaf.x509, ...cas.map((c) => c.x509)];

async function startStore(): Promise<CrlStore> {
  return startCrlStore(redisServer.url, logger);
}

before(async () => {
  [redisServer, pki, web, dir] = await Promise.all([startRedis(), createPki(), startCrlServer(), mkdtemp(join(tmpdir(), 'certgate-crl-test-'))]);
  redis = new Redis(redisServer.url);
  admin = new Redis(redisServer.url);
  [alice, bob] = await Promise.all([pki.client({ cn: 'ALICE', issuer: 'intermediate' }), pki.client({ cn: 'BOB', issuer: 'intermediate' })]);
});

after(async () => {
  redis?.disconnect();
  admin?.disconnect();
  await Promise.all([web?.close(), redisServer?.stop(), pki?.cleanup(), dir && rm(dir, { recursive: true, force: true })]);
});

describe('a successful refresh', () => {
  test('stores the DER and sets every status field', async () => {
    const crl = await pki.crl('intermediate', [{ serial: bob.serial }], { crlNumber: 7 });
    web.serve('/ok.crl', crl);
    const now = new Date();
    const status = await refreshSource(redis, source('ok', web.url('/ok.crl')), ctx({ now }));
    const parsed = parseCrl(crl, 'asn1');
    assert.deepEqual(status, {
      lastAttemptAt: now.toISOString(),
      lastError: null,
      lastSuccessAt: now.toISOString(),
      url: web.url('/ok.crl'),
      issuer: 'CN=Test Intermediate CA,O=certgate test,C=US',
      thisUpdate: parsed.thisUpdate.toISOString(),
      nextUpdate: parsed.nextUpdate?.toISOString(),
      crlNumber: '7',
      revokedCount: 1,
      sha256: parsed.sha256,
      bytes: crl.length,
    });
    assert.deepEqual(await readCrlStatus(redis, 'ok'), status);
    assert.deepEqual(await redis.getBuffer(keys.crlData('ok')), crl);
    assert.equal(await redis.exists(keys.crlLock('ok')), 0, 'the lock is released');
  });

  test('a PEM source is stored as DER; its status describes the file as downloaded', async () => {
    const pem = await pki.crl('intermediate', [{ serial: bob.serial }], { format: 'pem' });
    web.serve('/pem.crl', pem);
    const status = await refreshSource(redis, source('pem', web.url('/pem.crl'), { fileType: 'pem' }), ctx());
    assert.equal(status.lastError, null);
    assert.equal(status.sha256, parseCrl(pem, 'pem').sha256);
    assert.equal(status.bytes, pem.length);
    const der = await redis.getBuffer(keys.crlData('pem'));
    assert.ok(der && der[0] === 0x30);
    assert.deepEqual(parseCrl(der, 'asn1').tbs, parseCrl(pem, 'pem').tbs);
  });

  test('the same file again updates the status but does not make the workers reload', async () => {
    const sub = redis.duplicate();
    const messages: string[] = [];
    sub.on('message', (_channel: string, m: string) => messages.push(m));
    await sub.subscribe(keys.crlChannel);
    try {
      const src = await inForce('same', await pki.crl('intermediate', []));
      const later = new Date(Date.now() + 60_000);
      const again = await refreshSource(redis, src, ctx({ now: later }));
      assert.equal(again.lastSuccessAt, later.toISOString());
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(messages, ['same'], 'published once, for the first CRL only');
    } finally {
      sub.disconnect();
    }
  });

  test('an older thisUpdate is refused when the CRLs have no CRL number; the same is taken', async () => {
    const t0 = new Date(Date.now() - HOUR);
    const src = await inForce('nonum', await pki.crl('intermediate', [], { crlNumber: null, thisUpdate: t0 }));
    web.serve('/nonum.crl', await pki.crl('intermediate', [], { crlNumber: null, thisUpdate: new Date(t0.getTime() - HOUR) }));
    assert.match((await refreshSource(redis, src, ctx())).lastError ?? '', /older than the CRL in force \(thisUpdate /);
    web.serve('/nonum.crl', await pki.crl('intermediate', [{ serial: bob.serial }], { crlNumber: null, thisUpdate: t0 }));
    const same = await refreshSource(redis, src, ctx());
    assert.equal(same.lastError, null);
    assert.equal(same.revokedCount, 1);
  });

  test("re-pointing a source's URLs lets its issuer change", async () => {
    await inForce('repoint', await pki.crl('intermediate', []));
    web.serve('/repoint-root.crl', await pki.crl('root', []));
    const status = await refreshSource(redis, source('repoint', web.url('/repoint-root.crl')), ctx());
    assert.equal(status.lastError, null);
    assert.equal(status.issuer, 'CN=Test Root CA,O=certgate test,C=US');
  });
});

describe('a CRL that is not taken leaves the one in force', () => {
  type Case = { name: string; error: RegExp; setup(src: CrlSource): Promise<{ src?: CrlSource; over?: Partial<RefreshContext> } | void> };
  const path = (src: CrlSource): string => new URL(src.primaryUrl).pathname;
  const cases: Case[] = [
    { name: 'garbage', error: /^primary URL \S+: not a CRL: /, setup: async (src) => web.serve(path(src), Buffer.from('<html>maintenance</html>\n')) },
    {
      name: 'truncated',
      error: /: truncated CRL: /,
      setup: async (src) => {
        const crl = await pki.crl('intermediate', [], { crlNumber: 20 });
        web.serve(path(src), crl.subarray(0, crl.length - 9));
      },
    },
    { name: 'PEM for an asn1 source', error: /the file is PEM, but the source says asn1/, setup: async (src) => web.serve(path(src), await pki.crl('intermediate', [], { crlNumber: 20, format: 'pem' })) },
    { name: 'foreign-signed', error: /: unknown issuer: no trusted CA certificate is named "CN=Foreign Root CA,O=Elsewhere,C=US"/, setup: async (src) => web.serve(path(src), await pki.crl('foreign', [], { crlNumber: 20 })) },
    {
      name: 'bad signature',
      error: /: bad signature: the CRL does not verify with the trusted CA certificate "CN=Test Intermediate CA/,
      setup: async (src) => {
        const crl = Buffer.from(await pki.crl('intermediate', [], { crlNumber: 20 }));
        crl[crl.length - 1] ^= 0x01; // last octet of the ECDSA s value
        web.serve(path(src), crl);
      },
    },
    { name: 'older (lower CRL number)', error: /: older than the CRL in force \(CRL number 9 < 10\)/, setup: async (src) => web.serve(path(src), await pki.crl('intermediate', [], { crlNumber: 9 })) },
    {
      name: 'thisUpdate in the future',
      error: /thisUpdate \S+ is in the future/,
      setup: async (src) => web.serve(path(src), await pki.crl('intermediate', [], { crlNumber: 20, thisUpdate: new Date(Date.now() + 24 * HOUR) })),
    },
    {
      name: "another trusted CA's CRL at the same URL",
      error: /issued by "CN=Test Root CA,O=certgate test,C=US", but the CRL in force is issued by "CN=Test Intermediate CA/,
      setup: async (src) => web.serve(path(src), await pki.crl('root', [], { crlNumber: 20 })),
    },
    { name: 'HTTP 404', error: /^primary URL http:\S+\/gone\.crl: HTTP 404$/, setup: async (src) => ({ src: { ...src, primaryUrl: web.url('/gone.crl') } }) },
    { name: 'unreachable', error: /: cannot reach the server \(connect ECONNREFUSED/, setup: async (src) => ({ src: { ...src, primaryUrl: `http://127.0.0.1:${await freePort()}/x.crl` } }) },
    {
      name: 'too slow',
      error: /: timed out after 300 ms/,
      setup: async (src) => {
        web.serve(path(src), await pki.crl('intermediate', [], { crlNumber: 20 }), { delayMs: 2000 });
        return { over: { timeoutMs: 300 } };
      },
    },
    {
      name: 'too large',
      error: /: the file is larger than the limit of 100 bytes/,
      setup: async (src) => {
        web.serve(path(src), await pki.crl('intermediate', [], { crlNumber: 20 }));
        return { over: { maxBytes: 100 } };
      },
    },
  ];
  cases.forEach((c, i) => {
    test(c.name, async () => {
      const name = `keep-${i}`;
      const first = await inForce(name, await pki.crl('intermediate', [{ serial: bob.serial }], { crlNumber: 10 }));
      const before = await readCrlStatus(redis, name);
      const der = await redis.getBuffer(keys.crlData(name));
      const { src = first, over = {} } = (await c.setup(first)) ?? {};
      const later = new Date(Date.now() + 60_000);
      const status = await refreshSource(redis, src, ctx({ now: later, ...over }));
      assert.match(status.lastError ?? '(null)', c.error);
      assert.ok(status.lastError?.startsWith(`primary URL ${src.primaryUrl}: `), 'lastError names the URL');
      assert.deepEqual(status, { ...before, lastAttemptAt: later.toISOString(), lastError: status.lastError }, 'only lastAttemptAt and lastError change');
      assert.deepEqual(await readCrlStatus(redis, name), status);
      assert.deepEqual(await redis.getBuffer(keys.crlData(name)), der, 'the CRL in force stays');
    });
  });

  test('downloadCrl names the URL of a non-2xx answer', async () => {
    await assert.rejects(downloadCrl(web.url('/nowhere.crl'), { fileRoot: null }), { message: `HTTP 404 from ${web.url('/nowhere.crl')}` });
  });
});

describe('primary and secondary URLs', () => {
  test('the secondary is used when the primary is down', async () => {
    web.serve('/second.crl', await pki.crl('intermediate', []));
    const src = source('failover', `http://127.0.0.1:${await freePort()}/first.crl`, { secondaryUrl: web.url('/second.crl') });
    const status = await refreshSource(redis, src, ctx());
    assert.equal(status.lastError, null);
    assert.equal(status.url, web.url('/second.crl'));
  });

  test('the secondary is used when the primary serves a CRL that fails verification', async () => {
    web.serve('/bad-first.crl', await pki.crl('foreign', []));
    web.serve('/good-second.crl', await pki.crl('intermediate', []));
    const status = await refreshSource(redis, source('failover2', web.url('/bad-first.crl'), { secondaryUrl: web.url('/good-second.crl') }), ctx());
    assert.equal(status.lastError, null);
    assert.equal(status.url, web.url('/good-second.crl'));
  });

  test('when both fail, lastError gives both reasons', async () => {
    web.serve('/both-2.crl', Buffer.from('garbage'));
    const src = source('both', web.url('/both-1.crl'), { secondaryUrl: web.url('/both-2.crl') });
    const status = await refreshSource(redis, src, ctx());
    assert.equal(status.lastSuccessAt, null);
    assert.match(status.lastError ?? '', /^primary URL \S+\/both-1\.crl: HTTP 404; secondary URL \S+\/both-2\.crl: not a CRL: /);
  });
});

describe('file: URLs', () => {
  let root: string;
  let outside: string;
  let crl: Buffer;
  before(async () => {
    root = join(dir, 'crls');
    outside = join(dir, 'elsewhere');
    await Promise.all([mkdir(root), mkdir(outside)]);
    crl = await pki.crl('intermediate', []);
    await Promise.all([writeFile(join(root, 'a.crl'), crl), writeFile(join(outside, 'x.crl'), crl)]);
    await symlink(join(outside, 'x.crl'), join(root, 'link.crl'));
  });
  const fileUrl = (p: string): string => pathToFileURL(p).href;

  test('inside CRL_FILE_ROOT works', async () => {
    const status = await refreshSource(redis, source('file-ok', fileUrl(join(root, 'a.crl'))), ctx({ fileRoot: root }));
    assert.equal(status.lastError, null);
    assert.equal(status.url, fileUrl(join(root, 'a.crl')));
  });

  const refused: Array<[string, () => string, RegExp, () => string | null]> = [
    ['outside the root', () => fileUrl(join(outside, 'x.crl')), /outside CRL_FILE_ROOT/, () => root],
    ['through a symbolic link out of the root', () => fileUrl(join(root, 'link.crl')), /outside CRL_FILE_ROOT/, () => root],
    ['through ..', () => `${fileUrl(root)}/../elsewhere/x.crl`, /outside CRL_FILE_ROOT/, () => root],
    ['a missing file', () => fileUrl(join(root, 'missing.crl')), /: no such file$/, () => root],
    ['with no CRL_FILE_ROOT', () => fileUrl(join(root, 'a.crl')), /: file: URLs are refused \(CRL_FILE_ROOT is not set\)$/, () => null],
  ];
  for (const [what, url, error, fileRoot] of refused) {
    test(`refused: ${what}`, async () => {
      const status = await refreshSource(redis, source('file-refused', url()), ctx({ fileRoot: fileRoot() }));
      assert.match(status.lastError ?? '', error);
      assert.equal(status.lastSuccessAt, null);
    });
  }
});

describe('the lock', () => {
  test('two processes refreshing one source download it once and answer the same result', async () => {
    const other = new Redis(redisServer.url);
    try {
      web.serve('/slow.crl', await pki.crl('intermediate', [{ serial: bob.serial }]), { delayMs: 500 });
      const src = source('locked', web.url('/slow.crl'));
      const [a, b] = await Promise.all([refreshSource(redis, src, ctx()), refreshSource(other, src, ctx())]);
      assert.equal(web.hits('/slow.crl'), 1);
      assert.equal(a.lastError, null);
      assert.deepEqual(b, a, 'the waiting caller answers the status the other one wrote');
      assert.equal(await redis.exists(keys.crlLock('locked')), 0);
    } finally {
      other.disconnect();
    }
  });

  test('with lockWaitMs 0 the second caller answers at once with the status unchanged', async () => {
    web.serve('/slow2.crl', await pki.crl('intermediate', []), { delayMs: 500 });
    const src = source('locked2', web.url('/slow2.crl'));
    const first = refreshSource(redis, src, ctx());
    await eventually(async () => (await redis.exists(keys.crlLock('locked2'))) === 1, 20_000, 'the lock');
    const second = await refreshSource(redis, src, ctx({ lockWaitMs: 0 }));
    assert.equal(second.lastAttemptAt, null, 'nothing written by the caller that found the lock');
    assert.equal((await first).lastError, null);
    assert.equal(web.hits('/slow2.crl'), 1);
  });
});

describe('trusted CRL signers', () => {
  test("every listener's clientCaPem and crlSettings.trustedCaPem, without duplicates", () => {
    const listener = (clientCaPem: string | null) => ({ tls: { clientCaPem } }) as unknown as Listener;
    const cas = trustedCrlSigners({
      listeners: [listener(pki.root.certPem + pki.intermediate.certPem), listener(null), { tls: null } as unknown as Listener, listener(pki.root.certPem)],
      crlSettings: { ...DEFAULT_CRL_SETTINGS, trustedCaPem: pki.foreign.certPem },
    });
    assert.deepEqual(cas.map((c) => c.subject.split('\n').pop()).sort(), ['CN=Foreign Root CA', 'CN=Test Intermediate CA', 'CN=Test Root CA']);
  });
});

describe('CrlStore', () => {
  test('two workers see a revocation after the refresh, and its removal (bench/crl measures how soon)', async () => {
    const src = source('int', web.url('/int.crl'));
    await configure(src);
    const [w1, w2] = await Promise.all([startStore(), startStore()]);
    try {
      for (const w of [w1, w2]) assert.deepEqual(w.check(chainOf(bob, pki.intermediate, pki.root), new Date(), { onExpiredCrl: 'reject' }), { status: 'unchecked' });
      web.serve('/int.crl', await pki.crl('intermediate', [{ serial: bob.serial }], { crlNumber: 100 }));
      assert.equal((await refreshSource(redis, src, ctx())).lastError, null);
      for (const w of [w1, w2]) {
        const v = await eventually(() => {
          const verdict = w.check(chainOf(bob, pki.intermediate, pki.root), new Date(), { onExpiredCrl: 'reject' });
          return verdict.status === 'revoked' && verdict;
        }, 20_000, 'the revocation to reach the worker');
        assert.match((v as { detail: string }).detail, new RegExp(`serial ${bob.serial} is revoked by "CN=Test Intermediate CA,O=certgate test,C=US" \\(CRL source "int"\\)`));
        assert.deepEqual(w.check(chainOf(alice, pki.intermediate, pki.root), new Date(), { onExpiredCrl: 'reject' }), { status: 'good' });
        assert.deepEqual(w.status(), [{ source: 'int', issuer: 'CN=Test Intermediate CA,O=certgate test,C=US', crlNumber: '100', revokedCount: 1 }]);
      }

      web.serve('/int.crl', await pki.crl('intermediate', [], { crlNumber: 101 }));
      await refreshSource(redis, src, ctx());
      for (const w of [w1, w2]) {
        await eventually(() => w.check(chainOf(bob, pki.intermediate, pki.root), new Date(), { onExpiredCrl: 'reject' }).status === 'good', 20_000, 'the newer CRL');
      }

      // A worker started now loads the CRL in force before start() resolves.
      const w3 = await startStore();
      assert.deepEqual(w3.status(), [{ source: 'int', issuer: 'CN=Test Intermediate CA,O=certgate test,C=US', crlNumber: '101', revokedCount: 0 }]);
      await w3.stop();

      // Disabling the source stops its enforcement; deleting its data too.
      await configure({ ...src, enabled: false });
      for (const w of [w1, w2]) await eventually(() => w.status().length === 0, 20_000, 'the disabled source to be dropped');
      await configure(src);
      for (const w of [w1, w2]) await eventually(() => w.status().length === 1, 20_000, 'the re-enabled source to be loaded');
      await deleteCrlData(redis, 'int');
      for (const w of [w1, w2]) await eventually(() => w.status().length === 0, 20_000, 'the deleted CRL to be dropped');
    } finally {
      await Promise.all([w1.stop(), w2.stop()]);
      await unconfigure('int');
    }
  });

  test('an expired CRL is taken; onExpiredCrl decides; a revoked serial is revoked either way', async () => {
    const ca = await pki.ca({ name: 'exp-root', subject: '/C=US/O=certgate test/CN=Expiring CA' });
    const [carol, dave] = await Promise.all([pki.client({ cn: 'CAROL', issuer: ca }), pki.client({ cn: 'DAVE', issuer: ca })]);
    const crl = await pki.crl(ca, [{ serial: carol.serial }], { thisUpdate: new Date(Date.now() - 48 * HOUR), nextUpdate: new Date(Date.now() - 24 * HOUR) });
    web.serve('/expired.crl', crl);
    const src = source('expired', web.url('/expired.crl'));
    const status = await refreshSource(redis, src, ctx({ trustedCas: [ca.x509] }));
    assert.equal(status.lastError, null, 'taken although past its nextUpdate');
    assert.ok(Date.parse(status.nextUpdate ?? '') < Date.now());
    await configure(src);
    const store = await startStore();
    try {
      const now = new Date();
      const reject = store.check(chainOf(dave, ca), now, { onExpiredCrl: 'reject' });
      assert.equal(reject.status, 'crl-expired');
      assert.match((reject as { detail: string }).detail, /the CRL of "CN=Expiring CA,O=certgate test,C=US" \(source "expired"\) expired /);
      assert.equal(store.check(chainOf(dave, ca), now, { onExpiredCrl: 'accept-and-log' }).status, 'crl-expired-accepted');
      assert.equal(store.check(chainOf(carol, ca), now, { onExpiredCrl: 'reject' }).status, 'revoked');
      assert.equal(store.check(chainOf(carol, ca), now, { onExpiredCrl: 'accept-and-log' }).status, 'revoked');
      // Before its nextUpdate the same CRL is simply good.
      assert.equal(store.check(chainOf(dave, ca), new Date(Date.now() - 36 * HOUR), { onExpiredCrl: 'reject' }).status, 'good');
    } finally {
      await store.stop();
      await unconfigure('expired');
    }
  });

  test('a revoked intermediate refuses its leaves; an issuer without a CRL is not checked', async () => {
    const root2 = await pki.ca({ name: 'root2', subject: '/C=US/O=certgate test/CN=Second Root' });
    const int2 = await pki.ca({ name: 'int2', subject: '/C=US/O=certgate test/CN=Second Intermediate', issuer: root2 });
    const [leaf, rootLeaf] = await Promise.all([pki.client({ cn: 'ERIN', issuer: int2 }), pki.client({ cn: 'FRANK', issuer: 'root' })]);
    web.serve('/root2.crl', await pki.crl(root2, [{ serial: int2.serial }]));
    const src = source('root2', web.url('/root2.crl'));
    assert.equal((await refreshSource(redis, src, ctx({ trustedCas: [root2.x509] }))).lastError, null);
    await configure(src);
    const store = await startStore();
    try {
      const verdict: RevocationVerdict = store.check(chainOf(leaf, int2, root2), new Date(), { onExpiredCrl: 'reject' });
      assert.equal(verdict.status, 'revoked');
      assert.match((verdict as { detail: string }).detail, new RegExp(`serial ${int2.serial} is revoked by "CN=Second Root`));
      assert.deepEqual(store.check(chainOf(rootLeaf, pki.root), new Date(), { onExpiredCrl: 'reject' }), { status: 'unchecked' });
      assert.deepEqual(store.check([leaf.x509], new Date(), { onExpiredCrl: 'reject' }), { status: 'unchecked' }, 'a lone anchor is not checked');
    } finally {
      await store.stop();
      await unconfigure('root2');
    }
  });
});
