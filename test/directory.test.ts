import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import { Directory, handOverIndex, userBindSlots, type Identity, type QueryInfo } from '../shared/directory/client.ts';
import type { LdapProfile } from '../shared/config/schemas.ts';
import { startSlapd, type Slapd } from './helpers/slapd.ts';
import { peopleLdif, personDn, personLdif, type PersonSpec } from './helpers/people.ts';
import { listening } from './helpers/ports.ts';
import { ALLOW_QUERY, ldapProfile } from './fixtures/deployments.ts';

const execFileAsync = promisify(execFile);

const DAY = 24 * 3600 * 1000;
const DEAD_HOST = 'ldap://127.0.0.1:1';

/** Inputs an attacker controls as SMTP user names. */
const HOSTILE_NAMES = [
  '*',
  'a*',
  '*e*',
  ')(uid=*',
  '*)(uid=*',
  'alice)(|(uid=*',
  'alice)(uid=alice',
  '*)(|(objectClass=*',
  'alice\0',
  '\0',
  '\\',
  '\\2a',
  '(',
  ')',
  'alice*',
  'jürgen*',
  '日本',
  'x'.repeat(1024),
];

/**
 * A TCP relay in front of slapd that counts connections and can be made to
 * refuse, stay silent, delay answers or drop everything: the directory's
 * failure modes, on demand.
 */
class TcpProxy {
  mode: 'forward' | 'refuse' | 'silent' = 'forward';
  delayMs = 0;
  total = 0;
  open = 0;
  maxOpen = 0;
  port = 0;
  private readonly server = net.createServer((client) => this.accept(client));
  private readonly sockets = new Set<net.Socket>();

  constructor(private readonly targetPort: number) {}

  get url(): string {
    return `ldap://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.port = await listening(this.server);
    return this;
  }

  resetCounters(): void {
    this.total = 0;
    this.maxOpen = this.open;
  }

  private track(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
  }

  private accept(client: net.Socket): void {
    this.total++;
    this.track(client);
    if (this.mode === 'refuse') {
      client.destroy();
      return;
    }
    if (this.mode === 'silent') return;
    this.open++;
    this.maxOpen = Math.max(this.maxOpen, this.open);
    const upstream = net.connect(this.targetPort, '127.0.0.1');
    this.track(upstream);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => {
      if (this.delayMs > 0) setTimeout(() => client.write(d), this.delayMs);
      else client.write(d);
    });
    client.on('close', () => {
      this.open--;
      upstream.destroy();
    });
    upstream.on('close', () => client.destroy());
  }

  dropAll(): void {
    for (const s of this.sockets) s.destroy();
  }

  async stop(): Promise<void> {
    this.dropAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const settle = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const PEOPLE: PersonSpec[] = [
  { uid: 'alice', password: 'alice-pw', mail: 'alice@example.com' },
  { uid: 'bob', password: 'bob-pw', passwordScheme: 'ssha', caccn: 'SMITH.BOB.1234567890', cacserial: '0A1B' },
  { uid: 'carol', password: 'carol-pw', caccn: 'JONES.CAROL.1', cacserial: '0C', cacexempt: true },
  { uid: 'dave', password: 'dave-pw', caccn: 'DOE.DAVE.1', cacserial: '0D', cacemergency: new Date(Date.now() + DAY) },
  { uid: 'erin', password: 'erin-pw', caccn: 'ROE.ERIN.1', cacserial: '0E', cacemergency: new Date(Date.now() - DAY) },
  { uid: 'jürgen', password: 'jürgen-pw', caccn: '日本 太郎', cacserial: '7F00' },
  { uid: 'twin1', password: 'twin-pw', caccn: 'TWIN', cacserial: 'FF01' },
  { uid: 'twin2', password: 'twin-pw', caccn: 'TWIN', cacserial: 'FF01' },
  // Its mail is alice's uid: "(|(uid={u})(mail={u}))" for "alice" is ambiguous.
  { uid: 'mallory', password: 'mallory-pw', mail: 'alice' },
  { uid: 'nopass' },
  { uid: 'mutable', password: 'mutable-pw', caccn: 'MUTABLE', cacserial: '01' },
];

describe('connection hand-over (handOverIndex)', () => {
  const queue = (...spec: Array<[Identity, number]>) => spec.map(([prefer, passedOver]) => ({ prefer, passedOver }));
  test('no waiter: none', () => assert.equal(handOverIndex([], 'service'), -1));
  test('the head when it needs the identity, or when nobody within reach does', () => {
    assert.equal(handOverIndex(queue(['service', 0], ['user', 0]), 'service'), 0);
    assert.equal(handOverIndex(queue(['user', 0], ['user', 0]), 'service'), 0);
    const far = queue(...Array.from({ length: 16 }, (): [Identity, number] => ['user', 0]), ['service', 0]);
    assert.equal(handOverIndex(far, 'service'), 0, 'the 17th waiter is beyond the lookahead of 16');
  });
  test('else the first waiter within 16 that needs it', () => {
    assert.equal(handOverIndex(queue(['user', 0], ['user', 0], ['service', 0], ['service', 0]), 'service'), 2);
    const last = queue(...Array.from({ length: 15 }, (): [Identity, number] => ['user', 0]), ['service', 0]);
    assert.equal(handOverIndex(last, 'service'), 15);
  });
  test('a head passed over 4 times is served whatever it needs', () => {
    assert.equal(handOverIndex(queue(['user', 3], ['service', 0]), 'service'), 1);
    assert.equal(handOverIndex(queue(['user', 4], ['service', 0]), 'service'), 0);
  });
});

describe('connections kept for user binds (userBindSlots)', () => {
  const bind = { name: 'a', query: '(uid={u})', method: 'bind' as const, passwordAttribute: 'userPassword', allowQuery: null, userIdAttribute: 'uid' };
  test('a third of maxConnections, at least one, when the profile binds as users and has room for two pools', () => {
    assert.deepEqual([2, 3, 4, 10, 100].map((maxConnections) => userBindSlots({ maxConnections, smtpAuthQuery: bind })), [1, 1, 1, 3, 33]);
  });
  test('none (one pool) with maxConnections 1, without user binds, or without SMTP AUTH', () => {
    assert.equal(userBindSlots({ maxConnections: 1, smtpAuthQuery: bind }), 0);
    assert.equal(userBindSlots({ maxConnections: 10, smtpAuthQuery: { ...bind, method: 'password-attribute' } }), 0);
    assert.equal(userBindSlots({ maxConnections: 10, smtpAuthQuery: null }), 0);
  });
});

describe('Directory against a real slapd', () => {
  let slapd: Slapd;
  const directories: Directory[] = [];
  const proxies: TcpProxy[] = [];

  before(async () => {
    // Stored password schemes for the password-attribute method, made by the real tools.
    const [crypt6, crypt1, ssha512] = await Promise.all([
      execFileAsync('openssl', ['passwd', '-6', 'greg-pw']).then((r) => `{CRYPT}${r.stdout.trim()}`),
      execFileAsync('openssl', ['passwd', '-1', 'hank-pw']).then((r) => `{CRYPT}${r.stdout.trim()}`),
      execFileAsync('/usr/sbin/slappasswd', ['-o', 'module-load=pw-sha2.so', '-h', '{SSHA512}', '-s', 'ivan-pw']).then((r) => r.stdout.trim()),
    ]);
    const people = [
      ...PEOPLE,
      { uid: 'greg', password: crypt6 },
      { uid: 'hank', password: crypt1 },
      { uid: 'ivan', password: ssha512 },
    ];
    slapd = await startSlapd({ ldif: peopleLdif(people), tls: true });
  });

  after(async () => {
    await Promise.all(directories.map((d) => d.close()));
    await Promise.all(proxies.map((p) => p.stop()));
    await slapd.stop();
  });

  function profile(overrides: Partial<LdapProfile> = {}): LdapProfile {
    return { ...ldapProfile({ slapd }, { certificate: true, smtpAuth: true }), ...overrides };
  }

  function directory(overrides: Partial<LdapProfile> = {}, queries?: QueryInfo[]): Directory {
    const d = new Directory(profile(overrides), queries ? { onQuery: (q) => queries.push(q) } : {});
    directories.push(d);
    return d;
  }

  async function proxy(): Promise<TcpProxy> {
    const p = await new TcpProxy(slapd.port).start();
    proxies.push(p);
    return p;
  }

  function withQuery(query: string, method: 'bind' | 'password-attribute' = 'bind'): Partial<LdapProfile> {
    return { smtpAuthQuery: { name: 'smtpauth', query, method, passwordAttribute: 'userPassword', allowQuery: ALLOW_QUERY, userIdAttribute: 'uid' } };
  }

  describe('SMTP AUTH, method bind', () => {
    test('right password authenticates as the entry found', async () => {
      const queries: QueryInfo[] = [];
      const r = await directory({}, queries).authenticate('alice', 'alice-pw');
      assert.deepEqual(r, { outcome: 'authenticated', dn: personDn('alice'), userId: 'alice', filter: '(uid=alice)' });
      assert.deepEqual(
        queries.map((q) => [q.kind, q.ok]),
        [['search', true], ['bind', true]],
      );
    });

    test('a password stored as {SSHA} works through the bind', async () => {
      assert.equal((await directory().authenticate('bob', 'bob-pw')).outcome, 'authenticated');
    });

    test('non-ASCII user names are escaped and still match', async () => {
      const r = await directory().authenticate('jürgen', 'jürgen-pw');
      assert.equal(r.outcome, 'authenticated');
      assert.equal(r.userId, 'jürgen');
      assert.equal(r.filter, '(uid=j\\c3\\bcrgen)');
    });

    test('wrong password → invalid-credentials', async () => {
      const r = await directory().authenticate('alice', 'wrong');
      assert.equal(r.outcome, 'invalid-credentials');
      assert.equal(r.dn, personDn('alice'));
      assert.match(r.detail ?? '', /invalidCredentials/);
    });

    test('an entry without a password never authenticates', async () => {
      assert.equal((await directory().authenticate('nopass', 'anything')).outcome, 'invalid-credentials');
    });

    test('unknown user → unknown-user', async () => {
      const r = await directory().authenticate('nobody', 'whatever');
      assert.deepEqual(r, { outcome: 'unknown-user', dn: null, userId: null, filter: '(uid=nobody)' });
    });

    test('an empty user name is unknown without a query', async () => {
      const queries: QueryInfo[] = [];
      const r = await directory({}, queries).authenticate('', 'alice-pw');
      assert.equal(r.outcome, 'unknown-user');
      assert.equal(queries.length, 0);
    });

    test('two matching entries → ambiguous, never authenticated', async () => {
      const d = directory(withQuery('(|(uid={u})(mail={u}))'));
      const r = await d.authenticate('alice', 'alice-pw');
      assert.equal(r.outcome, 'ambiguous');
      assert.equal(r.dn, null);
    });

    test('the userId is the entry uid, e.g. when logging in by mail address', async () => {
      const r = await directory(withQuery('(mail={u})')).authenticate('alice@example.com', 'alice-pw');
      assert.equal(r.outcome, 'authenticated');
      assert.equal(r.userId, 'alice');
    });

    test('empty or whitespace-only passwords never reach the directory', async () => {
      const p = await proxy();
      const queries: QueryInfo[] = [];
      const real = directory({ hosts: [p.url] }, queries);
      // An unreachable directory would answer directory-unavailable if it were asked.
      const unreachable = directory({ hosts: [DEAD_HOST] }, queries);
      for (const password of ['', ' ', '  \t', '\n']) {
        for (const d of [real, unreachable]) {
          const r = await d.authenticate('alice', password);
          assert.equal(r.outcome, 'empty-password');
          assert.equal(r.filter, null);
        }
      }
      assert.equal(p.total, 0, 'no connection was opened');
      assert.equal(queries.length, 0, 'no query was sent');
      // Leading/trailing spaces around a real password are part of it, not "empty".
      assert.equal((await real.authenticate('alice', ' alice-pw')).outcome, 'invalid-credentials');
    });

    test('hostile user names are unknown users and never authenticate', async () => {
      const d = directory();
      const byMail = directory(withQuery('(|(uid={u})(mail={u}))'));
      for (const name of HOSTILE_NAMES) {
        for (const password of ['alice-pw', 'twin-pw', 'x']) {
          const r = await d.authenticate(name, password);
          assert.equal(r.outcome, 'unknown-user', `${JSON.stringify(name)} → ${r.outcome}`);
          const r2 = await byMail.authenticate(name, password);
          assert.equal(r2.outcome, 'unknown-user', `${JSON.stringify(name)} (mail query) → ${r2.outcome}`);
        }
      }
    });

    test('user binds reuse pooled connections within maxConnections; searches always run as the service identity', async () => {
      const p = await proxy();
      // (userPassword=*) matches only for an identity allowed to search userPassword: the rootdn
      // (the profile's bind), or the entry itself. Bound as bob, alice's entry would not match.
      const rootOnly = { name: 'smtpauth', query: '(uid={u})', method: 'bind' as const, passwordAttribute: 'userPassword', allowQuery: '(&(uid={u})(userPassword=*))', userIdAttribute: 'uid' };
      const d = directory({ hosts: [p.url], maxConnections: 1, smtpAuthQuery: rootOnly });
      for (let i = 0; i < 3; i++) {
        assert.equal((await d.authenticate('bob', 'bob-pw')).outcome, 'authenticated');
        assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed', 'the search ran re-bound as the service, not as bob');
      }
      assert.equal((await d.authenticate('carol', 'wrong')).outcome, 'invalid-credentials');
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      assert.equal(p.total, 1, 'one connection for everything (maxConnections 1)');
      const wide = directory({ hosts: [p.url], maxConnections: 2 });
      p.resetCounters();
      for (let i = 0; i < 5; i++) assert.equal((await wide.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.equal(p.total, 2, 'one service and one user-bind connection, kept open and reused');
    });

    test('the userId is the one stored in the directory, not the spelling given', async () => {
      // Directory matching rules ignore case and surrounding spaces: the identity is the entry's.
      const r = await directory().authenticate(' ALICE ', 'alice-pw');
      assert.equal(r.outcome, 'authenticated');
      assert.equal(r.userId, 'alice');
    });
  });

  describe('SMTP AUTH, method password-attribute', () => {
    test('verifies plain, {SSHA}, {SSHA512} and {CRYPT} stored values', async () => {
      const d = directory(withQuery('(uid={u})', 'password-attribute'));
      for (const [user, password] of [['alice', 'alice-pw'], ['bob', 'bob-pw'], ['greg', 'greg-pw'], ['hank', 'hank-pw'], ['ivan', 'ivan-pw']]) {
        const ok = await d.authenticate(user as string, password as string);
        assert.equal(ok.outcome, 'authenticated', user);
        assert.equal(ok.userId, user);
        const bad = await d.authenticate(user as string, `${password}x`);
        assert.equal(bad.outcome, 'invalid-credentials', user);
      }
    });

    test('unknown, ambiguous, no password, empty password', async () => {
      const d = directory(withQuery('(|(uid={u})(mail={u}))', 'password-attribute'));
      assert.equal((await d.authenticate('nobody', 'x')).outcome, 'unknown-user');
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'ambiguous');
      assert.equal((await d.authenticate('nopass', 'x')).outcome, 'invalid-credentials');
      assert.equal((await d.authenticate('bob', '')).outcome, 'empty-password');
    });

    test('hostile user names never authenticate', async () => {
      const d = directory(withQuery('(uid={u})', 'password-attribute'));
      for (const name of HOSTILE_NAMES) {
        assert.equal((await d.authenticate(name, 'alice-pw')).outcome, 'unknown-user', JSON.stringify(name));
      }
    });

    test('the stored password is never cached', async () => {
      const d = directory({ cacheTtlSeconds: 300, ...withQuery('(uid={u})', 'password-attribute') });
      assert.equal((await d.authenticate('mutable', 'mutable-pw')).outcome, 'authenticated');
      await slapd.modify(`dn: ${personDn('mutable')}\nchangetype: modify\nreplace: userPassword\nuserPassword: changed-pw\n`);
      assert.equal((await d.authenticate('mutable', 'mutable-pw')).outcome, 'invalid-credentials');
      assert.equal((await d.authenticate('mutable', 'changed-pw')).outcome, 'authenticated');
      await slapd.modify(`dn: ${personDn('mutable')}\nchangetype: modify\nreplace: userPassword\nuserPassword: mutable-pw\n`);
    });
  });

  describe('allowQuery', () => {
    const now = new Date();

    test('no card → allowed', async () => {
      const r = await directory().checkAllowed('alice', now);
      assert.equal(r.outcome, 'allowed');
      assert.match(r.filter ?? '', /^\(&\(uid=alice\)\(\|\(!\(caccn=\*\)\)\(cacexempt=\*\)\(cacemergency>=\d{14}\.0Z\)\)\)$/);
    });

    test('card holder → not-allowed', async () => {
      assert.equal((await directory().checkAllowed('bob', now)).outcome, 'not-allowed');
    });

    test('exempt card holder → allowed', async () => {
      assert.equal((await directory().checkAllowed('carol', now)).outcome, 'allowed');
    });

    test('emergency window in the future → allowed; once it has passed → not-allowed', async () => {
      const d = directory();
      assert.equal((await d.checkAllowed('dave', now)).outcome, 'allowed');
      assert.equal((await d.checkAllowed('dave', new Date(now.getTime() + 2 * DAY))).outcome, 'not-allowed');
    });

    test('emergency window in the past → not-allowed', async () => {
      assert.equal((await directory().checkAllowed('erin', now)).outcome, 'not-allowed');
    });

    test('unknown and hostile user names are not allowed', async () => {
      const d = directory();
      assert.equal((await d.checkAllowed('nobody', now)).outcome, 'not-allowed');
      for (const name of HOSTILE_NAMES) {
        assert.equal((await d.checkAllowed(name, now)).outcome, 'not-allowed', JSON.stringify(name));
      }
    });

    test('a profile without allowQuery allows nobody', async () => {
      const d = directory(withQuery('(uid={u})'));
      const noAllow = directory({ smtpAuthQuery: { name: 's', query: '(uid={u})', method: 'bind', passwordAttribute: 'userPassword', allowQuery: null, userIdAttribute: 'uid' } });
      assert.equal((await d.checkAllowed('alice', now)).outcome, 'allowed');
      const r = await noAllow.checkAllowed('alice', now);
      assert.equal(r.outcome, 'not-allowed');
      assert.match(r.detail ?? '', /no allowQuery/);
    });
  });

  describe('certificate lookup', () => {
    test('one entry → its userIdAttribute', async () => {
      const r = await directory().lookupCertificate({ cn: 'SMITH.BOB.1234567890', sn: '0A1B' });
      assert.deepEqual(r, { outcome: 'one', dn: personDn('bob'), userId: 'bob', filter: '(&(caccn=SMITH.BOB.1234567890)(cacserial=0A1B))' });
    });

    test('non-ASCII certificate names match', async () => {
      const r = await directory().lookupCertificate({ cn: '日本 太郎', sn: '7F00' });
      assert.equal(r.outcome, 'one');
      assert.equal(r.userId, 'jürgen');
    });

    test('no entry → none', async () => {
      assert.equal((await directory().lookupCertificate({ cn: 'SMITH.BOB.1234567890', sn: '0A1C' })).outcome, 'none');
    });

    test('several entries → many', async () => {
      const r = await directory().lookupCertificate({ cn: 'TWIN', sn: 'FF01' });
      assert.equal(r.outcome, 'many');
      assert.equal(r.userId, null);
    });

    test('a missing field → missing-field, without asking the directory', async () => {
      const queries: QueryInfo[] = [];
      const d = directory({}, queries);
      const unreachable = directory({ hosts: [DEAD_HOST] }, queries);
      for (const values of [{ cn: 'TWIN' }, { cn: 'TWIN', sn: null }, { cn: '', sn: 'FF01' }, {}]) {
        assert.deepEqual(await d.lookupCertificate(values), {
          outcome: 'missing-field',
          dn: null,
          userId: null,
          filter: null,
          detail: 'the certificate lacks a field the query uses',
        });
        assert.equal((await unreachable.lookupCertificate(values)).outcome, 'missing-field');
      }
      assert.equal(queries.length, 0);
    });

    test('wildcards in certificate fields are literal', async () => {
      const d = directory();
      assert.equal((await d.lookupCertificate({ cn: '*', sn: '*' })).outcome, 'none');
      assert.equal((await d.lookupCertificate({ cn: 'TWIN)(uid=twin1', sn: 'FF01' })).outcome, 'none');
      assert.equal((await d.lookupCertificate({ cn: 'SMITH*', sn: '0A1B' })).outcome, 'none');
    });

    test('a NUL in a certificate field never matches (NUL-prefix certificates)', async () => {
      const queries: QueryInfo[] = [];
      const d = directory({ certificateQuery: { name: 'cac', query: '(mail={e})', userIdAttribute: 'uid' } }, queries);
      assert.equal((await d.lookupCertificate({ e: 'alice@example.com' })).outcome, 'one');
      const r = await d.lookupCertificate({ e: 'alice@example.com\0.evil.example' });
      assert.equal(r.outcome, 'none');
      assert.equal(queries.length, 1);
    });

    test('another userIdAttribute; an entry without it is no match', async () => {
      const d = directory({ certificateQuery: { name: 'cac', query: '(|(uid={u})(caccn={cn}))', userIdAttribute: 'mail' } });
      const r = await d.lookupCertificate({ cn: 'SMITH.BOB.1234567890' });
      // {u} has no value here: the whole query fails to match.
      assert.equal(r.outcome, 'missing-field');
      const byMail = directory({ certificateQuery: { name: 'cac', query: '(uid={cn})', userIdAttribute: 'mail' } });
      assert.deepEqual(await byMail.lookupCertificate({ cn: 'alice' }), {
        outcome: 'one',
        dn: personDn('alice'),
        userId: 'alice@example.com',
        filter: '(uid=alice)',
      });
      const noMail = await byMail.lookupCertificate({ cn: 'bob' });
      assert.equal(noMail.outcome, 'none');
      assert.equal(noMail.dn, personDn('bob'));
      assert.match(noMail.detail ?? '', /no mail/);
    });

    test('a profile without certificateQuery matches nothing', async () => {
      assert.equal((await directory({ certificateQuery: null }).lookupCertificate({ cn: 'TWIN', sn: 'FF01' })).outcome, 'none');
    });
  });

  describe('availability', () => {
    test('failover: the first host is down, the second answers', async () => {
      const d = directory({ hosts: [DEAD_HOST, slapd.url] });
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.equal((await d.authenticate('alice', 'wrong')).outcome, 'invalid-credentials');
      assert.equal((await d.checkAllowed('bob', new Date())).outcome, 'not-allowed');
      assert.equal((await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' })).outcome, 'many');
    });

    test('failover uses the hosts in order', async () => {
      const first = await proxy();
      const second = await proxy();
      const d = directory({ hosts: [first.url, second.url] });
      for (let i = 0; i < 3; i++) assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.equal(second.total, 0);
      assert.equal(first.total, 2, 'a service and a user-bind connection, both reused');
    });

    test('load-balance spreads new connections over the hosts and skips a dead one', async () => {
      const a = await proxy();
      const b = await proxy();
      const d = directory({ hosts: [a.url, DEAD_HOST, b.url], connection: 'load-balance', maxConnections: 12 });
      // Concurrent calls need new connections: each new one goes to the next host.
      const results = await Promise.all(Array.from({ length: 6 }, () => d.authenticate('alice', 'alice-pw')));
      assert.deepEqual(new Set(results.map((r) => r.outcome)), new Set(['authenticated']));
      assert.ok(a.total >= 2 && b.total >= 2, `a ${a.total} b ${b.total}`);
    });

    test('unreachable directory → directory-unavailable, quickly', async () => {
      const d = directory({ hosts: [DEAD_HOST], timeoutMs: 1000 });
      const started = Date.now();
      const r = await d.authenticate('alice', 'alice-pw');
      assert.equal(r.outcome, 'directory-unavailable');
      assert.match(r.detail ?? '', /no LDAP host reachable/);
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'directory-unavailable');
      assert.equal((await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' })).outcome, 'directory-unavailable');
      assert.ok(Date.now() - started < 1000, `took ${Date.now() - started} ms`);
    });

    test('a directory that accepts but never answers → directory-unavailable within timeoutMs', async () => {
      const p = await proxy();
      p.mode = 'silent';
      const queries: QueryInfo[] = [];
      const d = directory({ hosts: [p.url], timeoutMs: 300 }, queries);
      for (const call of [() => d.authenticate('alice', 'alice-pw'), () => d.checkAllowed('alice', new Date()), () => d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' })]) {
        const started = Date.now();
        const r = await call();
        const took = Date.now() - started;
        assert.equal(r.outcome, 'directory-unavailable');
        assert.ok(took >= 250 && took < 1000, `took ${took} ms`);
      }
      assert.ok(queries.length > 0 && queries.every((q) => !q.ok));
    });

    test('a directory that stopped → directory-unavailable, and never invalid-credentials', async () => {
      const own = await startSlapd({ ldif: personLdif({ uid: 'alice', password: 'alice-pw' }) });
      const d = directory({ hosts: [own.url], baseDn: own.baseDn, bind: { dn: own.rootDn, password: own.rootPassword }, cacheTtlSeconds: 0 });
      try {
        assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
        assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      } finally {
        await own.stop();
      }
      for (const password of ['alice-pw', 'wrong']) {
        assert.equal((await d.authenticate('alice', password)).outcome, 'directory-unavailable');
      }
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'directory-unavailable');
      assert.equal((await d.lookupCertificate({ cn: 'x', sn: 'y' })).outcome, 'directory-unavailable');
    });

    test('pooled connections dropped by the server are replaced transparently', async () => {
      const p = await proxy();
      const d = directory({ hosts: [p.url], maxConnections: 2 });
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      p.dropAll();
      await settle(20);
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
    });

    test('a pooled connection that dies under a query is retried once on a fresh one', async () => {
      const p = await proxy();
      const queries: QueryInfo[] = [];
      const d = directory({ hosts: [p.url], maxConnections: 1 }, queries);
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      // Dropped in the same tick: the client still believes the connection is alive and sends the query on it.
      p.dropAll();
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      assert.deepEqual(
        queries.map((q) => q.ok),
        [true, false, true],
      );
      assert.equal(p.total, 2);
    });

    test('a refused service bind → directory-unavailable', async () => {
      const d = directory({ bind: { dn: slapd.rootDn, password: 'wrong' } });
      const r = await d.authenticate('alice', 'alice-pw');
      assert.equal(r.outcome, 'directory-unavailable');
      assert.match(r.detail ?? '', /service bind failed/);
    });

    test('a bind DN without a password is never sent (fail closed)', async () => {
      const p = await proxy();
      const d = directory({ hosts: [p.url], bind: { dn: slapd.rootDn, password: null } });
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'directory-unavailable');
      assert.equal(p.total, 0);
    });

    test('a wrong base DN or an invalid query → directory-unavailable', async () => {
      assert.equal((await directory({ baseDn: 'dc=nowhere,dc=com' }).authenticate('alice', 'alice-pw')).outcome, 'directory-unavailable');
      const r = await directory(withQuery('(uid={u}')).authenticate('alice', 'alice-pw');
      assert.equal(r.outcome, 'directory-unavailable');
      assert.match(r.detail ?? '', /invalid LDAP filter/);
    });

    test('StartTLS with the directory CA works; without it the directory is unavailable', async () => {
      const p = await proxy();
      const d = directory({ hosts: [p.url], startTls: true, caPem: slapd.caPem ?? null });
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.equal((await d.checkAllowed('bob', new Date())).outcome, 'not-allowed');
      const untrusted = directory({ hosts: [slapd.url], startTls: true, caPem: null });
      const r = await untrusted.authenticate('alice', 'alice-pw');
      assert.equal(r.outcome, 'directory-unavailable');
      assert.match(r.detail ?? '', /StartTLS failed/);
    });

    test('ldaps:// with the directory CA works; without it the directory is unavailable', async () => {
      assert.ok(slapd.ldapsUrl);
      const d = directory({ hosts: [slapd.ldapsUrl], caPem: slapd.caPem ?? null });
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.equal((await d.lookupCertificate({ cn: 'SMITH.BOB.1234567890', sn: '0A1B' })).outcome, 'one');
      const untrusted = directory({ hosts: [slapd.ldapsUrl], caPem: null });
      assert.equal((await untrusted.authenticate('alice', 'alice-pw')).outcome, 'directory-unavailable');
    });

    test('after close() every call is directory-unavailable', async () => {
      const d = directory();
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      await d.close();
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'directory-unavailable');
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'directory-unavailable');
    });
  });

  describe('connection pool', () => {
    test('never more than maxConnections service connections', async () => {
      const p = await proxy();
      p.delayMs = 20;
      // Without user binds every connection serves searches.
      const d = directory({ hosts: [p.url], maxConnections: 2, ...withQuery('(uid={u})', 'password-attribute') });
      const users = ['alice', 'bob', 'carol', 'dave', 'erin'];
      const results = await Promise.all(Array.from({ length: 30 }, (_v, i) => d.checkAllowed(users[i % users.length] as string, new Date())));
      assert.deepEqual(
        results.slice(0, 5).map((r) => r.outcome),
        ['allowed', 'not-allowed', 'allowed', 'allowed', 'not-allowed'],
      );
      assert.equal(results.filter((r) => r.outcome === 'allowed').length, 18);
      assert.equal(p.maxOpen, 2);
      assert.equal(p.total, 2);
    });

    /** 64 SMTP sessions at once, 30 times each: a login (a service search, then a user bind), the client's next command, the allowance search (service): far more callers than connections. Answers the binds. */
    const logins = async (d: Directory, queries: QueryInfo[]): Promise<number> => {
      const pause = () => new Promise((r) => setTimeout(r, 2));
      const outcomes = new Map<string, number>();
      const count = (outcome: string) => outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      await Promise.all(Array.from({ length: 64 }, async () => {
        for (let i = 0; i < 30; i++) {
          count((await d.authenticate('bob', 'bob-pw')).outcome);
          await pause();
          count((await d.checkAllowed('alice', new Date())).outcome);
          await pause();
        }
      }));
      assert.deepEqual(Object.fromEntries(outcomes), { authenticated: 1920, allowed: 1920 });
      return queries.filter((q) => q.kind === 'bind').length;
    };

    test('under load: one bind per login, user binds on connections of their own, never more than maxConnections in all', async () => {
      const p = await proxy();
      const queries: QueryInfo[] = [];
      const binds = await logins(directory({ hosts: [p.url], maxConnections: 4, timeoutMs: 20_000 }, queries), queries);
      assert.equal(binds, 1920, 'no service re-binds (a service connection binds once, when it is opened: not a query)');
      assert.ok(p.maxOpen <= 4, `${p.maxOpen} connections open at once`);
      assert.equal(p.total, 4, 'three service connections and one for user binds, kept open and reused');
    });

    test('one connection for both (maxConnections 1): it goes to a waiter bound as it is, about one bind per login, everyone served', async () => {
      const p = await proxy();
      const queries: QueryInfo[] = [];
      const binds = await logins(directory({ hosts: [p.url], maxConnections: 1, timeoutMs: 30_000 }, queries), queries);
      // Handed over in FIFO order, about half the logins also cost a service re-bind (1.5 binds each); here about 1.1.
      assert.ok(binds / 1920 < 1.3, `${(binds / 1920).toFixed(2)} binds per login`);
      assert.equal(p.total, 1);
    });

    test('callers wait in a queue within timeoutMs, which bounds waiting and searching together', async () => {
      const p = await proxy();
      const d = directory({ hosts: [p.url], maxConnections: 1, timeoutMs: 700 });
      // Open the single connection first, then make every answer take 250 ms.
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'allowed');
      p.delayMs = 250;
      const [first, second, third] = await Promise.all([
        d.checkAllowed('alice', new Date()),
        d.checkAllowed('bob', new Date()),
        d.checkAllowed('carol', new Date()),
      ]);
      assert.equal(first.outcome, 'allowed');
      assert.equal(second.outcome, 'not-allowed', 'waited 250 ms, searched 250 ms: 500 ms < 700 ms');
      assert.equal(third.outcome, 'directory-unavailable', 'would have waited 500 ms and searched 250 ms: over 700 ms');
      assert.match(third.detail ?? '', /no free LDAP connection within timeoutMs|no answer within timeoutMs/);
      assert.equal(p.total, 1);
    });
  });

  describe('cache', () => {
    test('a change is invisible within the TTL, visible with TTL 0', async () => {
      const queries: QueryInfo[] = [];
      const cached = directory({ cacheTtlSeconds: 300 }, queries);
      const uncached = directory({ cacheTtlSeconds: 0 });
      const before = await cached.lookupCertificate({ cn: 'MUTABLE', sn: '01' });
      assert.equal(before.outcome, 'one');
      assert.equal((await uncached.lookupCertificate({ cn: 'MUTABLE', sn: '01' })).outcome, 'one');
      await slapd.modify(`dn: ${personDn('mutable')}\nchangetype: modify\nreplace: cacserial\ncacserial: 02\n`);
      try {
        assert.deepEqual(await cached.lookupCertificate({ cn: 'MUTABLE', sn: '01' }), before);
        assert.equal(queries.filter((q) => q.kind === 'search').length, 1, 'answered from the cache');
        assert.equal((await uncached.lookupCertificate({ cn: 'MUTABLE', sn: '01' })).outcome, 'none');
        assert.equal((await uncached.lookupCertificate({ cn: 'MUTABLE', sn: '02' })).outcome, 'one');
      } finally {
        await slapd.modify(`dn: ${personDn('mutable')}\nchangetype: modify\nreplace: cacserial\ncacserial: 01\n`);
      }
    });

    test('entries expire after the TTL', async () => {
      const queries: QueryInfo[] = [];
      const d = directory({ cacheTtlSeconds: 0.2 }, queries);
      await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' });
      await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' });
      assert.equal(queries.length, 1);
      await settle(250);
      await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' });
      assert.equal(queries.length, 2);
    });

    test('errors are never cached', async () => {
      const p = await proxy();
      const d = directory({ hosts: [p.url], cacheTtlSeconds: 300, timeoutMs: 500 });
      p.mode = 'refuse';
      assert.equal((await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' })).outcome, 'directory-unavailable');
      p.mode = 'forward';
      assert.equal((await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' })).outcome, 'many');
    });

    test('bind results are never cached', async () => {
      const queries: QueryInfo[] = [];
      const d = directory({ cacheTtlSeconds: 300 }, queries);
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.equal((await d.authenticate('alice', 'wrong')).outcome, 'invalid-credentials');
      assert.equal((await d.authenticate('alice', 'alice-pw')).outcome, 'authenticated');
      assert.deepEqual(
        queries.map((q) => q.kind),
        ['search', 'bind', 'bind', 'bind'],
      );
    });
  });

  test('a structurally unusable profile answers directory-unavailable, never throws', async () => {
    const cases: Array<[Partial<LdapProfile>, RegExp]> = [
      [{ hosts: [] }, /no hosts/],
      [{ hosts: ['http://127.0.0.1'] }, /not an ldap/],
      [{ hosts: ['not a url'] }, /invalid host URL/],
      [{ maxConnections: 0 }, /maxConnections/],
      [{ timeoutMs: 0 }, /timeoutMs/],
    ];
    for (const [overrides, reason] of cases) {
      const d = directory(overrides);
      const r = await d.authenticate('alice', 'alice-pw');
      assert.equal(r.outcome, 'directory-unavailable');
      assert.match(r.detail ?? '', reason);
      assert.equal((await d.checkAllowed('alice', new Date())).outcome, 'directory-unavailable');
      assert.equal((await d.lookupCertificate({ cn: 'TWIN', sn: 'FF01' })).outcome, 'directory-unavailable');
      // Empty passwords are still answered without any directory.
      assert.equal((await d.authenticate('alice', '')).outcome, 'empty-password');
    }
  });
});
