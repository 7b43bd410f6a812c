// certgate against real directories other than OpenLDAP (SPEC §2.1, §2.2, §2.7, §3 rule 5):
// a Samba Active Directory domain controller and a 389 Directory Server (the open-source
// Oracle / Red Hat Directory Server), each started once for this file on loopback in a
// private directory (test/helpers/samba-ad.ts, test/helpers/dirsrv.ts), both provisioned in
// parallel with the rest of the system (API, a worker, Redis). Checked through the API's
// test route and through real SMTP sessions (swaks) relayed by the worker.
//
// A directory that cannot start fails its tests with the reason; nothing is skipped.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Client } from 'ldapts';
import { startSambaAd, type SambaAd } from './helpers/samba-ad.ts';
import { startDirsrv, type Dirsrv } from './helpers/dirsrv.ts';
import { startSystem, type System } from './helpers/system.ts';
import { swaks } from './helpers/smtp-clients.ts';
import { freePort } from './helpers/ports.ts';
import type { Issued } from './helpers/pki.ts';
import { certificateFacts } from '../shared/pki/certificate.ts';
import { certificateTokenValues } from '../shared/directory/tokens.ts';

const DS_SCHEMA = fileURLToPath(new URL('../deploy/ldap/cac-389ds.ldif', import.meta.url));
const DAY = 86_400_000;

interface TestResult {
  matched: boolean; dn: string | null; userId: string | null; authenticated: boolean | null; allowed: boolean | null;
  filter: string | null; outcome: string; allowFilter: string | null; error: string | null;
}

interface SessionEvent { listener: string; command: string | null; reply: string | null; detail: string | null; user: string | null; outcome: string }

let sys: System;
let ad: SambaAd | null = null;
let ds: Dirsrv | null = null;
let adFailure: unknown = null;
let dsFailure: unknown = null;
let serverTls: { certificatePem: string; privateKeyPem: string; clientCaPem: string | null };
const ports: Record<string, number> = {};

// ------------------------------------------------------------------ fixtures

/** Samba AD users and groups, written offline with samba-tool before the DC starts (RECIPES.md §1). */
async function adUsers(tool: SambaAd['tool']): Promise<void> {
  await tool('user', 'create', 'certgate-svc', 'Svc-Passw0rd!');
  await tool('user', 'create', 'asmith', 'Passw0rd-asmith', '--given-name=Alice', '--surname=Smith', '--mail-address=alice.smith@samdom.example.com');
  await tool('user', 'create', 'jdoe', 'Passw0rd-jdoe', '--given-name=John', '--surname=Doe');
  await tool('user', 'create', 'jane', 'Passw0rd-jane', '--given-name=Jane', '--surname=Roe');
  await tool('user', 'rename', 'jane', '--force-new-cn=Roe\\, Jane');
  await tool('user', 'create', 'bob', 'Passw0rd-bob', '--given-name=Bob', '--surname=Other');
  await tool('user', 'create', 'dave', 'Passw0rd-dave', '--given-name=Dave', '--surname=Window');
  await tool('user', 'create', 'erin', 'Passw0rd-erin', '--given-name=Erin', '--surname=Expired');
  await tool('user', 'create', 'cdisabled', 'Passw0rd-cdisabled');
  await tool('user', 'disable', 'cdisabled');
  await tool('user', 'create', 'dmust', 'Passw0rd-dmust', '--must-change-at-next-login');
  // AD's lockout policy: after 5 wrong passwords in 30 minutes, the account is locked for 30 minutes.
  await tool('domain', 'passwordsettings', 'set', '--account-lockout-threshold=5', '--account-lockout-duration=30', '--reset-account-lockout-after=30');
  await tool('user', 'create', 'lockme', 'Passw0rd-lockme');
  await tool('group', 'add', 'smtp-users');
  await tool('group', 'addmembers', 'smtp-users', 'asmith,jane,dave,erin');
  await tool('group', 'add', 'all-mail');
  await tool('group', 'addmembers', 'all-mail', 'smtp-users');
}

const AD_USERS = 'CN=Users,DC=samdom,DC=example,DC=com';
const AD_PERSON = '(&(objectCategory=person)(objectClass=user)(|(sAMAccountName={u})(userPrincipalName={u})))';

function adProfile(name: string, o: Record<string, unknown> = {}) {
  const a = ad as SambaAd;
  return {
    name, hosts: [a.ldapsUrl], connection: 'failover', baseDn: a.baseDn,
    bind: { dn: `certgate-svc@${a.dnsDomain}`, password: 'Svc-Passw0rd!' }, startTls: false, caPem: a.caPem,
    timeoutMs: 5000, cacheTtlSeconds: 0, maxConnections: 4,
    certificateQuery: { name: 'cn', query: '(&(objectCategory=person)(objectClass=user)(cn={cn}))', userIdAttribute: 'sAMAccountName' },
    smtpAuthQuery: {
      name: 'ad', query: AD_PERSON, method: 'bind', passwordAttribute: 'userPassword', userIdAttribute: 'sAMAccountName',
      // An emergency window in msTSExpireDate (a GeneralizedTime every user object allows): none, or not yet over.
      allowQuery: '(&(objectCategory=person)(|(sAMAccountName={u})(userPrincipalName={u}))(|(!(msTSExpireDate=*))(msTSExpireDate>={t})))',
    },
    ...o,
  };
}

const DS_PEOPLE = 'ou=people,dc=example,dc=com';
const DS_SVC = 'uid=svc,ou=Services,dc=example,dc=com';

function dsProfile(name: string, o: Record<string, unknown> = {}) {
  const d = ds as Dirsrv;
  return {
    name, hosts: [d.ldapsUrl], connection: 'failover', baseDn: d.baseDn,
    bind: { dn: DS_SVC, password: 'Svc-Passw0rd!' }, startTls: false, caPem: d.caPem,
    timeoutMs: 5000, cacheTtlSeconds: 0, maxConnections: 4,
    certificateQuery: { name: 'cac', query: '(&(caccn={cn})(cacserial={sn}))', userIdAttribute: 'uid' },
    smtpAuthQuery: {
      name: 'pw', query: '(&(objectClass=inetOrgPerson)(uid={u}))', method: 'password-attribute', passwordAttribute: 'userPassword', userIdAttribute: 'uid',
      allowQuery: '(&(uid={u})(|(!(caccn=*))(cacexempt=TRUE)(cacemergency>={t})))',
    },
    ...o,
  };
}

/** 389-ds people, each with a password hashed by the server's own pwdhash (Directory Manager may add pre-hashed values). */
async function dsPeople(d: Dirsrv, card: Issued): Promise<string> {
  const person = (uid: string, password: string, extra: string[] = []): string => [
    `dn: uid=${uid},${DS_PEOPLE}`, 'changetype: add', 'objectClass: inetOrgPerson', 'objectClass: cacPerson', 'objectClass: certgateTestLogin',
    `uid: ${uid}`, `cn: ${uid}`, `sn: ${uid}`, `userPassword: ${password}`, ...extra,
  ].join('\n');
  const h = (scheme: string, pw: string): Promise<string> => d.pwdhash(scheme, pw);
  const sha1 = await h('PBKDF2-SHA1', 'short-pw');
  const cn = certificateFacts(card.x509).subjectCn;
  return [
    ['dn: ou=people,dc=example,dc=com', 'changetype: add', 'objectClass: organizationalUnit', 'ou: people'].join('\n'),
    ['dn: ou=groups,dc=example,dc=com', 'changetype: add', 'objectClass: organizationalUnit', 'ou: groups'].join('\n'),
    person('pbkdf2', await h('PBKDF2-SHA512', 'pbkdf2-pw')),
    person('pbkdf2c', await h('PBKDF2_SHA256', 'pbkdf2c-pw')),
    person('short', sha1.replace('{PBKDF2-SHA1}', '{PBKDF2}')),
    person('ssha', await h('SSHA', 'ssha-pw')),
    person('locked', await h('SSHA', 'locked-pw'), ['nsAccountLock: true']),
    person('pwlocked', await h('SSHA', 'pwlocked-pw'), ['pwdAccountLockedTime: 20200101000000Z']),
    person('disabled', await h('SSHA', 'disabled-pw'), ['loginDisabled: TRUE']),
    person('gost', await h('GOST_YESCRYPT', 'gost-pw')),
    person('card', await h('SSHA', 'card-pw'), [`caccn: ${cn}`, `cacserial: ${card.serial}`]),
    person('dave', await h('SSHA', 'dave-pw'), ['caccn: DAVE.CARD.1', 'cacserial: 0D', `cacemergency: ${new Date(Date.now() + DAY).toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`]),
    person('erin', await h('SSHA', 'erin-pw'), ['caccn: ERIN.CARD.1', 'cacserial: 0E', 'cacemergency: 20200101000000Z']),
    ['dn: cn=smtp-users,ou=groups,dc=example,dc=com', 'changetype: add', 'objectClass: groupOfNames', 'cn: smtp-users',
      `member: uid=pbkdf2,${DS_PEOPLE}`, `member: uid=ssha,${DS_PEOPLE}`].join('\n'),
  ].join('\n\n');
}

// ------------------------------------------------------------------ helpers

const run = (profile: string, body: unknown) => sys.api.call<TestResult & { message?: string }>('POST', `/v1/ldap-profiles/${profile}/test`, body);
const auth = (profile: string, username: string, password: string) => run(profile, { query: 'smtpAuth', username, password });
const cert = (profile: string, c: Issued) => run(profile, { query: 'certificate', certificatePem: c.certPem });

function smtp(listener: string, user: string | null, password: string, extra: string[] = []) {
  const a = user === null ? [] : ['--auth', 'PLAIN', '--auth-user', user, '--auth-password', password];
  return swaks(['--server', `127.0.0.1:${ports[listener]}`, '--tls', '--from', 'sender@example.com', '--to', 'rcpt@example.com', ...a, ...extra]);
}

async function eventsSince(listener: string, since: string): Promise<SessionEvent[]> {
  const { items } = await sys.api.ok<{ items: SessionEvent[] }>('GET', `/v1/events?listener=${listener}&since=${encodeURIComponent(since)}&limit=50`);
  return items;
}

async function until<T>(what: string, probe: () => Promise<T | null | undefined | false>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The raw message the sink got last, once it arrived. */
async function relayedMessage(count: number): Promise<string> {
  await sys.sink.waitFor(count);
  return sys.sink.messages.at(-1)!.raw.toString();
}

async function addListener(name: string, authProfile: string): Promise<void> {
  ports[name] = await freePort();
  await sys.api.ok('POST', '/v1/listeners', {
    name, address: '127.0.0.1', port: ports[name], implicitTls: false, hostname: 'gateway.example.com', tls: serverTls,
    smtpAuthProfile: authProfile, senderGroups: [], defaultPolicy: 'SUBMIT', acceptedDomains: ['example.com'],
    nextHop: { host: '127.0.0.1', port: sys.sink.port, tls: 'none', caPem: null }, enabled: true,
  });
}

// ------------------------------------------------------------------ set-up

const certs: Record<string, Issued> = {};

before(async () => {
  const [s, a, d] = await Promise.allSettled([startSystem({ workers: 1 }), startSambaAd({ setup: adUsers }), startDirsrv()]);
  if (a.status === 'fulfilled') ad = a.value;
  else adFailure = a.reason;
  if (d.status === 'fulfilled') ds = d.value;
  else dsFailure = d.reason;
  if (s.status === 'rejected') throw s.reason;
  sys = s.value;
  const pki = sys.pki;
  [certs.jdoe, certs.jdoeOther, certs.card, certs.server] = await Promise.all([
    pki.client({ cn: 'John Doe', serial: '7F0A1B2C' }),
    // Same subject CN, another serial: the cn query matches it, the strong mapping does not.
    pki.client({ cn: 'John Doe', serial: '7F0A1B2D' }),
    pki.client({ cn: 'CARD.HOLDER.1234567890' }),
    pki.server({ cn: 'gateway.example.com', dns: ['localhost'], ip: ['127.0.0.1'] }),
  ]);
  serverTls = { certificatePem: certs.server!.certPem, privateKeyPem: certs.server!.keyPem, clientCaPem: pki.root.certPem };
  await sys.api.ok('POST', '/v1/mail-flow-policies', {
    name: 'SUBMIT', action: 'relay', tls: 'required', verifyClientCertificate: false, requireSmtpAuth: true, smtpAuthRequiresTls: true, maxMessageBytes: 100_000, maxRecipients: 5,
  });
});

after(async () => {
  await Promise.all([sys?.stop(), ad?.stop(), ds?.stop()]);
});

// ------------------------------------------------------------------ Active Directory

describe('Active Directory (Samba AD DC)', () => {
  before(async () => {
    if (!ad) throw new Error(`Samba AD did not start: ${adFailure instanceof Error ? adFailure.message : String(adFailure)}`);
    const t = certificateTokenValues(certificateFacts(certs.jdoe!.x509));
    // Attributes samba-tool does not set, as Administrator over TLS (RECIPES.md §1).
    await ad.modify([
      `dn: CN=Erin Expired,${AD_USERS}`, 'changetype: modify', 'replace: msTSExpireDate', 'msTSExpireDate: 20200101000000.0Z', '',
      `dn: CN=Dave Window,${AD_USERS}`, 'changetype: modify', 'replace: msTSExpireDate', 'msTSExpireDate: 20991231000000.0Z', '',
      `dn: CN=John Doe,${AD_USERS}`, 'changetype: modify', 'add: altSecurityIdentities', `altSecurityIdentities: X509:<I>${t.ir}<SR>${t.sr}`,
    ].join('\n'));
    const profiles = [
      adProfile('ad'),
      adProfile('ad-starttls', { hosts: [ad.ldapUrl], startTls: true }),
      adProfile('ad-plain', { hosts: [ad.ldapUrl] }),
      adProfile('ad-untrusted', { caPem: null }),
      adProfile('ad-gc', { hosts: [ad.gcTlsUrl], baseDn: '' }),
      adProfile('ad-gc-starttls', { hosts: [ad.gcUrl], startTls: true, baseDn: '' }),
      adProfile('ad-root-empty-base', { baseDn: '' }),
      adProfile('ad-upn', { smtpAuthQuery: { ...adProfile('x').smtpAuthQuery, userIdAttribute: 'userPrincipalName', allowQuery: null } }),
      adProfile('ad-guid', { smtpAuthQuery: { ...adProfile('x').smtpAuthQuery, userIdAttribute: 'objectGUID' } }),
      adProfile('ad-sid', { smtpAuthQuery: { ...adProfile('x').smtpAuthQuery, userIdAttribute: 'objectSid' } }),
      adProfile('ad-group', { smtpAuthQuery: { ...adProfile('x').smtpAuthQuery, allowQuery: `(&(objectCategory=person)(sAMAccountName={u})(memberOf=CN=smtp-users,${AD_USERS}))` } }),
      adProfile('ad-nested', {
        smtpAuthQuery: { ...adProfile('x').smtpAuthQuery, allowQuery: `(&(objectCategory=person)(sAMAccountName={u})(memberOf:1.2.840.113556.1.4.1941:=CN=all-mail,${AD_USERS}))` },
      }),
      adProfile('ad-strong', { certificateQuery: { name: 'strong', query: '(altSecurityIdentities=X509:<I>{ir}<SR>{sr})', userIdAttribute: 'sAMAccountName' } }),
    ];
    for (const p of profiles) await sys.api.ok('POST', '/v1/ldap-profiles', p);
    for (const [name, ldap] of [['ad-auth', 'ad'], ['ad-upn-auth', 'ad-upn'], ['ad-plain-auth', 'ad-plain']]) {
      await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name, type: 'ldap', ldapProfile: ldap, checkWithLdap: ldap === 'ad', onNotAllowed: 'reject' });
    }
    await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name: 'ad-cert', type: 'certificate', ldapProfile: 'ad-strong', allowSmtpAuthWithoutCertificate: false, fallbackProfile: null });
    await addListener('ad', 'ad-auth');
    await addListener('ad-upn', 'ad-upn-auth');
    await addListener('ad-plain', 'ad-plain-auth');
    await addListener('ad-cert', 'ad-cert');
    await sys.settled();
  });

  test('SMTP AUTH by bind relays; the user is the canonical sAMAccountName whatever form was typed', async () => {
    for (const typed of ['asmith', 'ASMITH', 'asmith@samdom.example.com', 'ASmith@SAMDOM.EXAMPLE.COM']) {
      const count = sys.sink.messages.length + 1;
      const r = await smtp('ad', typed, 'Passw0rd-asmith');
      assert.deepEqual(r.replyTo('AUTH'), { code: 235, text: '2.7.0 Authentication successful' }, r.transcript);
      assert.match(await relayedMessage(count), /\(authenticated as asmith by smtp-auth\);/, typed);
      const t = await auth('ad', typed, 'Passw0rd-asmith');
      assert.deepEqual([t.body.authenticated, t.body.userId, t.body.dn], [true, 'asmith', `CN=Alice Smith,${AD_USERS}`], typed);
    }
    // A cn with an escaped comma is just a DN to bind with.
    assert.equal((await auth('ad', 'jane', 'Passw0rd-jane')).body.dn, `CN=Roe\\, Jane,${AD_USERS}`);
    assert.equal((await auth('ad', 'jane', 'Passw0rd-jane')).body.authenticated, true);
  });

  test('Received keeps the @ of a userPrincipalName user id', async () => {
    const count = sys.sink.messages.length + 1;
    const r = await smtp('ad-upn', 'ASMITH', 'Passw0rd-asmith');
    assert.equal(r.replyTo('AUTH')?.code, 235, r.transcript);
    assert.match(await relayedMessage(count), /\(authenticated as asmith@samdom\.example\.com by smtp-auth\);/);
  });

  test('wrong, empty and disabled: 535 5.7.8; the directory’s reason in the events and the test route', async () => {
    const since = new Date().toISOString();
    for (const [user, password] of [['asmith', 'wrong-Passw0rd'], ['cdisabled', 'Passw0rd-cdisabled'], ['dmust', 'Passw0rd-dmust'], ['nobody', 'x']]) {
      const r = await smtp('ad', user, password);
      assert.equal(r.replyTo('AUTH')?.code, 535, `${user}: ${r.transcript}`);
      assert.match(r.replyTo('AUTH')?.text ?? '', /^5\.7\.8 /);
    }
    const [empty] = await Promise.all([auth('ad', 'asmith', '')]);
    assert.deepEqual([empty.body.outcome, empty.body.authenticated], ['empty-password', false]);
    const wrong = await auth('ad', 'asmith', 'wrong-Passw0rd');
    assert.equal(wrong.body.outcome, 'invalid-credentials');
    assert.match(wrong.body.error ?? '', /invalidCredentials .*data 52e/);
    const disabled = await auth('ad', 'cdisabled', 'Passw0rd-cdisabled');
    assert.match(disabled.body.error ?? '', /invalidCredentials .*data 533/, 'AD: account disabled');
    const must = await auth('ad', 'dmust', 'Passw0rd-dmust');
    assert.match(must.body.error ?? '', /invalidCredentials .*data 773/, 'AD: must change password');
    const events = await until('the AUTH events', async () => {
      const e = (await eventsSince('ad', since)).filter((x) => x.command === 'AUTH');
      return e.length >= 4 ? e : null;
    });
    assert.ok(events.some((e) => e.user === 'cdisabled' && /data 533/.test(e.detail ?? '')), JSON.stringify(events));
  });

  test('AD’s lockout policy: after 5 wrong passwords the right one gets 535 too, with AD’s data 775', async () => {
    for (let i = 0; i < 5; i++) assert.equal((await auth('ad', 'lockme', `wrong-${i}`)).body.outcome, 'invalid-credentials');
    const locked = await auth('ad', 'lockme', 'Passw0rd-lockme');
    assert.deepEqual([locked.body.matched, locked.body.authenticated], [true, false]);
    assert.match(locked.body.error ?? '', /invalidCredentials .*data 775/);
    assert.equal((await smtp('ad', 'lockme', 'Passw0rd-lockme')).replyTo('AUTH')?.code, 535);
  });

  test('certificate query by cn and by the altSecurityIdentities strong mapping', async () => {
    const byCn = await cert('ad', certs.jdoe!);
    assert.deepEqual([byCn.body.outcome, byCn.body.userId], ['one', 'jdoe']);
    const strong = await cert('ad-strong', certs.jdoe!);
    assert.deepEqual([strong.body.outcome, strong.body.userId], ['one', 'jdoe'], JSON.stringify(strong.body));
    assert.match(strong.body.filter ?? '', /^\(altSecurityIdentities=X509:<I>C=US,O=certgate test,CN=[^<]+<SR>2C1B0A7F\)$/);
    // Same subject, another serial: the cn query would take it for jdoe, the strong mapping does not.
    assert.equal((await cert('ad', certs.jdoeOther!)).body.outcome, 'one');
    assert.equal((await cert('ad-strong', certs.jdoeOther!)).body.outcome, 'none');
    // Through a worker: the mapped card authenticates the session, the other one does not.
    const count = sys.sink.messages.length + 1;
    const ok = await swaks(['--server', `127.0.0.1:${ports['ad-cert']}`, '--tls', '--tls-cert', certs.jdoe!.certPath, '--tls-key', certs.jdoe!.keyPath,
      '--from', 'jdoe@example.com', '--to', 'rcpt@example.com']);
    assert.equal(ok.replyTo('MAIL')?.code, 250, ok.transcript);
    assert.match(await relayedMessage(count), /\(authenticated as jdoe by certificate\);/);
    const other = await swaks(['--server', `127.0.0.1:${ports['ad-cert']}`, '--tls', '--tls-cert', certs.jdoeOther!.certPath, '--tls-key', certs.jdoeOther!.keyPath,
      '--from', 'jdoe@example.com', '--to', 'rcpt@example.com']);
    assert.equal(other.replyTo('MAIL')?.code, 530, other.transcript);
  });

  test('allowQuery with {t} as YYYYMMDDHHMMSS.0Z: a window that ended in 2020 is over on Samba too', async () => {
    const erin = await auth('ad', 'erin', 'Passw0rd-erin');
    assert.deepEqual([erin.body.authenticated, erin.body.allowed], [true, false], JSON.stringify(erin.body));
    assert.match(erin.body.allowFilter ?? '', /\(msTSExpireDate>=\d{14}\.0Z\)/);
    assert.deepEqual([(await auth('ad', 'dave', 'Passw0rd-dave')).body.allowed, (await auth('ad', 'asmith', 'Passw0rd-asmith')).body.allowed], [true, true]);
    const r = await smtp('ad', 'erin', 'Passw0rd-erin');
    assert.equal(r.replyTo('AUTH')?.code, 535, r.transcript);
  });

  test('allowQuery with group membership: memberOf, and nested groups with AD’s matching rule', async () => {
    assert.deepEqual([(await auth('ad-group', 'asmith', 'Passw0rd-asmith')).body.allowed, (await auth('ad-group', 'bob', 'Passw0rd-bob')).body.allowed], [true, false]);
    assert.deepEqual([(await auth('ad-nested', 'jane', 'Passw0rd-jane')).body.allowed, (await auth('ad-nested', 'bob', 'Passw0rd-bob')).body.allowed], [true, false]);
  });

  test('ldaps:// and StartTLS with caPem; without the CA, or over plain ldap://, the directory’s reason reaches error, detail and the warn log', async () => {
    assert.equal((await auth('ad', 'asmith', 'Passw0rd-asmith')).body.authenticated, true);
    assert.equal((await auth('ad-starttls', 'asmith', 'Passw0rd-asmith')).body.authenticated, true);
    const untrusted = await auth('ad-untrusted', 'asmith', 'Passw0rd-asmith');
    assert.equal(untrusted.body.outcome, 'directory-unavailable');
    assert.match(untrusted.body.error ?? '', /self[- ]signed|unable to verify|certificate/i);
    const plain = await auth('ad-plain', 'asmith', 'Passw0rd-asmith');
    assert.equal(plain.body.outcome, 'directory-unavailable');
    assert.match(plain.body.error ?? '', /Transport encryption required/);
    const since = new Date().toISOString();
    const r = await smtp('ad-plain', 'asmith', 'Passw0rd-asmith');
    assert.deepEqual([r.replyTo('AUTH')?.code, r.replyTo('AUTH')?.text.slice(0, 6)], [454, '4.7.0 '], r.transcript);
    const events = await until('the AUTH event', async () => (await eventsSince('ad-plain', since)).find((e) => e.command === 'AUTH'));
    assert.match(events.detail ?? '', /Transport encryption required/);
    await until('the warn log line', async () =>
      sys.workers[0]!.output().split('\n').some((l) => l.includes('"level":40') && l.includes('"ldapProfile":"ad-plain"') && l.includes('Transport encryption required')));
  });

  test('objectGUID and objectSid as user ids: the GUID form and S-1-5-21-..., as samba-tool shows them', async () => {
    const shown = await (ad as SambaAd).tool('user', 'show', 'asmith', '--attributes=objectGUID,objectSid');
    const guid = /^objectGUID: (\S+)$/m.exec(shown)?.[1];
    const sid = /^objectSid: (\S+)$/m.exec(shown)?.[1];
    assert.ok(guid && sid, shown);
    assert.equal((await auth('ad-guid', 'asmith', 'Passw0rd-asmith')).body.userId, guid);
    assert.equal((await auth('ad-sid', 'ASMITH', 'Passw0rd-asmith')).body.userId, sid);
    assert.match(sid, /^S-1-5-21-\d+-\d+-\d+-\d+$/);
    const other = (await auth('ad-guid', 'jane', 'Passw0rd-jane')).body.userId;
    assert.match(other ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.notEqual(other, guid);
  });

  test('empty baseDn: a Global Catalog search on 3269 (ldaps) and 3268 (StartTLS); on 636 AD refuses it', async () => {
    for (const profile of ['ad-gc', 'ad-gc-starttls']) {
      const r = await auth(profile, 'asmith@samdom.example.com', 'Passw0rd-asmith');
      assert.deepEqual([r.body.authenticated, r.body.userId], [true, 'asmith'], `${profile}: ${JSON.stringify(r.body)}`);
      assert.equal((await cert(profile, certs.jdoe!)).body.userId, 'jdoe');
    }
    const refused = await auth('ad-root-empty-base', 'asmith', 'Passw0rd-asmith');
    assert.equal(refused.body.outcome, 'directory-unavailable');
    assert.match(refused.body.error ?? '', /search failed/);
  });

  test('the search references AD returns at the domain root are not chased', async () => {
    // What the directory sends for the query the profile runs: entries and continuation references.
    const a = ad as SambaAd;
    const client = new Client({ url: a.ldapsUrl, tlsOptions: { ca: a.caPem } });
    try {
      await client.bind(`certgate-svc@${a.dnsDomain}`, 'Svc-Passw0rd!');
      const r = await client.search(a.baseDn, { scope: 'sub', filter: '(sAMAccountName=asmith)', attributes: ['1.1'] });
      assert.ok(r.searchReferences.length > 0, 'Samba sends references for a domain-root search');
    } finally {
      await client.unbind();
    }
    assert.equal((await auth('ad', 'asmith', 'Passw0rd-asmith')).body.matched, true);
  });
});

// ------------------------------------------------------------------ 389 Directory Server

describe('389 Directory Server', () => {
  before(async () => {
    if (!ds) throw new Error(`389-ds did not start: ${dsFailure instanceof Error ? dsFailure.message : String(dsFailure)}`);
    // The schema certgate ships, as an administrator would load it.
    await ds.modify(await readFile(DS_SCHEMA, 'utf8'));
    // eDirectory's loginDisabled and OpenLDAP ppolicy's pwdAccountLockedTime do not exist on 389-ds 2.3
    // (its own lockout is enforced by its binds): test-only attributes of those names and syntaxes.
    await ds.modify([
      'dn: cn=schema', 'changetype: modify', 'add: attributeTypes',
      "attributeTypes: ( 1.3.6.1.4.1.99999.9.1 NAME 'loginDisabled' EQUALITY booleanMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.7 SINGLE-VALUE X-ORIGIN 'certgate test' )",
      "attributeTypes: ( 1.3.6.1.4.1.99999.9.3 NAME 'pwdAccountLockedTime' EQUALITY generalizedTimeMatch ORDERING generalizedTimeOrderingMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.24 SINGLE-VALUE X-ORIGIN 'certgate test' )",
      '-', 'add: objectClasses',
      "objectClasses: ( 1.3.6.1.4.1.99999.9.2 NAME 'certgateTestLogin' SUP top AUXILIARY MAY ( loginDisabled $ pwdAccountLockedTime ) X-ORIGIN 'certgate test' )",
    ].join('\n'));
    await ds.modify([
      'dn: ou=Services,dc=example,dc=com', 'changetype: add', 'objectClass: organizationalUnit', 'ou: Services', '',
      `dn: ${DS_SVC}`, 'changetype: add', 'objectClass: account', 'objectClass: simpleSecurityObject', 'uid: svc', 'userPassword: Svc-Passw0rd!', '',
      // The service account reads what the queries need: the password attribute and the lock attributes (operational ones by name).
      'dn: dc=example,dc=com', 'changetype: modify', 'add: aci',
      `aci: (targetattr="*||nsAccountLock||pwdAccountLockedTime||entryUUID||nsUniqueId")(version 3.0; acl "certgate svc"; allow (read,search,compare) userdn="ldap:///${DS_SVC}";)`,
    ].join('\n'));
    await ds.modify(await dsPeople(ds, certs.card!));
    const profiles = [
      dsProfile('ds'),
      dsProfile('ds-bind', { smtpAuthQuery: { ...dsProfile('x').smtpAuthQuery, method: 'bind' } }),
      dsProfile('ds-starttls', { hosts: [ds.ldapUrl], startTls: true }),
      dsProfile('ds-untrusted', { caPem: null }),
      dsProfile('ds-group', { smtpAuthQuery: { ...dsProfile('x').smtpAuthQuery, allowQuery: '(&(uid={u})(memberOf=cn=smtp-users,ou=groups,dc=example,dc=com))' } }),
      dsProfile('ds-entryuuid', { smtpAuthQuery: { ...dsProfile('x').smtpAuthQuery, userIdAttribute: 'entryUUID' } }),
    ];
    for (const p of profiles) await sys.api.ok('POST', '/v1/ldap-profiles', p);
    await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name: 'ds-auth', type: 'ldap', ldapProfile: 'ds', checkWithLdap: false, onNotAllowed: 'reject' });
    await sys.api.ok('POST', '/v1/smtp-auth-profiles', { name: 'ds-bind-auth', type: 'ldap', ldapProfile: 'ds-bind', checkWithLdap: false, onNotAllowed: 'reject' });
    await addListener('ds', 'ds-auth');
    await addListener('ds-bind', 'ds-bind-auth');
    await sys.settled();
  });

  test('password-attribute verifies 389-ds’s own {PBKDF2-SHA512}, {PBKDF2_SHA256}, {PBKDF2} and {SSHA} values', async () => {
    for (const [user, password] of [['pbkdf2', 'pbkdf2-pw'], ['pbkdf2c', 'pbkdf2c-pw'], ['short', 'short-pw'], ['ssha', 'ssha-pw']]) {
      const r = await auth('ds', user, password);
      assert.deepEqual([r.body.authenticated, r.body.userId, r.body.error], [true, user, null], `${user}: ${JSON.stringify(r.body)}`);
      assert.equal((await auth('ds', user, `${password}x`)).body.authenticated, false, user);
    }
    const count = sys.sink.messages.length + 1;
    const r = await smtp('ds', 'PBKDF2', 'pbkdf2-pw');
    assert.equal(r.replyTo('AUTH')?.code, 235, r.transcript);
    assert.match(await relayedMessage(count), /\(authenticated as pbkdf2 by smtp-auth\);/, 'the uid as stored, not as typed');
  });

  test('password-attribute refuses locked and disabled entries with the right password: nsAccountLock, pwdAccountLockedTime, loginDisabled', async () => {
    const since = new Date().toISOString();
    for (const [user, attribute] of [['locked', 'nsAccountLock: true'], ['pwlocked', 'pwdAccountLockedTime: 20200101000000Z'], ['disabled', 'loginDisabled: TRUE']]) {
      const t = await auth('ds', user, `${user}-pw`);
      assert.deepEqual([t.body.matched, t.body.authenticated], [true, false], user);
      assert.match(t.body.error ?? '', new RegExp(`locked or disabled \\(${attribute}\\)`), user);
      const r = await smtp('ds', user, `${user}-pw`);
      assert.equal(r.replyTo('AUTH')?.code, 535, `${user}: ${r.transcript}`);
    }
    const events = await until('the AUTH events', async () => {
      const e = (await eventsSince('ds', since)).filter((x) => x.command === 'AUTH');
      return e.length >= 3 ? e : null;
    });
    assert.ok(events.every((e) => /locked or disabled/.test(e.detail ?? '')), JSON.stringify(events));
  });

  test('bind: right password 235, wrong, empty and locked 535 (the server’s unwillingToPerform in the event)', async () => {
    const since = new Date().toISOString();
    assert.equal((await smtp('ds-bind', 'ssha', 'ssha-pw')).replyTo('AUTH')?.code, 235);
    for (const [user, password] of [['ssha', 'wrong'], ['locked', 'locked-pw']]) {
      assert.equal((await smtp('ds-bind', user, password)).replyTo('AUTH')?.code, 535, user);
    }
    assert.equal((await auth('ds-bind', 'ssha', '')).body.outcome, 'empty-password');
    const locked = await auth('ds-bind', 'locked', 'locked-pw');
    assert.match(locked.body.error ?? '', /unwillingToPerform/);
    const events = await until('the AUTH events', async () => {
      const e = (await eventsSince('ds-bind', since)).filter((x) => x.command === 'AUTH');
      return e.length >= 3 ? e : null;
    });
    assert.ok(events.some((e) => e.user === 'locked' && /unwillingToPerform/.test(e.detail ?? '')), JSON.stringify(events));
  });

  test('a stored scheme certgate cannot verify: 535, and the event says which', async () => {
    const t = await auth('ds', 'gost', 'gost-pw');
    assert.equal(t.body.authenticated, false);
    assert.match(t.body.error ?? '', /\{GOST_YESCRYPT\}/);
    const since = new Date().toISOString();
    assert.equal((await smtp('ds', 'gost', 'gost-pw')).replyTo('AUTH')?.code, 535);
    const event = await until('the AUTH event', async () => (await eventsSince('ds', since)).find((e) => e.command === 'AUTH'));
    assert.match(event.detail ?? '', /scheme certgate cannot verify: \{GOST_YESCRYPT\}/);
  });

  test('fixtures do not drift: binds did not re-hash stored values (upgrade hashing off)', async () => {
    const client = new Client({ url: (ds as Dirsrv).ldapUrl });
    try {
      await client.bind((ds as Dirsrv).rootDn, (ds as Dirsrv).rootPassword);
      const { searchEntries } = await client.search(`uid=ssha,${DS_PEOPLE}`, { scope: 'base', attributes: ['userPassword'] });
      assert.match(String(searchEntries[0]?.userPassword), /^\{SSHA\}/);
    } finally {
      await client.unbind();
    }
  });

  test('certificate query with the CAC schema of deploy/ldap', async () => {
    const r = await cert('ds', certs.card!);
    assert.deepEqual([r.body.outcome, r.body.userId], ['one', 'card'], JSON.stringify(r.body));
  });

  test('allowQuery with {t} and with group membership (memberOf)', async () => {
    const [dave, erin, ssha] = await Promise.all([auth('ds', 'dave', 'dave-pw'), auth('ds', 'erin', 'erin-pw'), auth('ds', 'ssha', 'ssha-pw')]);
    assert.deepEqual([dave.body.allowed, erin.body.allowed, ssha.body.allowed], [true, false, true]);
    const log = await (ds as Dirsrv).accessLog();
    assert.match(log, /filter="\(&\(uid=erin\)\(\|\(!\(caccn=\*\)\)\(cacexempt=TRUE\)\(cacemergency>=\d{14}\.0Z\)\)\)"/, 'the {t} form the server got');
    assert.deepEqual([(await auth('ds-group', 'pbkdf2', 'pbkdf2-pw')).body.allowed, (await auth('ds-group', 'pbkdf2c', 'pbkdf2c-pw')).body.allowed], [true, false]);
  });

  test('ldaps:// and StartTLS with caPem; without the CA the reason reaches error', async () => {
    assert.equal((await auth('ds', 'ssha', 'ssha-pw')).body.authenticated, true);
    assert.equal((await auth('ds-starttls', 'ssha', 'ssha-pw')).body.authenticated, true);
    const untrusted = await auth('ds-untrusted', 'ssha', 'ssha-pw');
    assert.equal(untrusted.body.outcome, 'directory-unavailable');
    assert.match(untrusted.body.error ?? '', /self[- ]signed|unable to verify|certificate/i);
  });

  test('canonical user ids: the stored uid, or an operational attribute asked for by name (entryUUID)', async () => {
    assert.equal((await auth('ds', 'SSHA', 'ssha-pw')).body.userId, 'ssha');
    assert.match((await auth('ds-entryuuid', 'ssha', 'ssha-pw')).body.userId ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  });
});
