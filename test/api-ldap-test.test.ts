// POST /v1/ldap-profiles/{name}/test against a real slapd: both queries, escaping shown in
// the filter that ran, the certificate's token values, and clear 4xx for bad requests.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { peopleLdif } from './helpers/people.ts';
import { startSystem, type System } from './helpers/system.ts';
import type { Issued } from './helpers/pki.ts';
import { cardHolder, ldapProfile, people } from './fixtures/deployments.ts';

let sys: System;
let jdoe: Issued;
let injection: Issued;

interface Result {
  matched: boolean; dn: string | null; userId: string | null; authenticated: boolean | null; allowed: boolean | null;
  durationMs: number; filter: string | null; outcome: string; tokens: Record<string, string | null> | null; allowFilter: string | null;
}

const run = (body: unknown, profile = 'corp') => sys.api.call<Result & { message?: string }>('POST', `/v1/ldap-profiles/${profile}/test`, body);

before(async () => {
  sys = await startSystem({ workers: 0 });
  jdoe = await sys.pki.client({ cn: 'LAST.FIRST.1234567890', serial: '0A1B' });
  injection = await sys.pki.client({ cn: '*)(uid=*))(|(uid=*' });
  await sys.slapd.add(peopleLdif([...people(), cardHolder('jdoe', jdoe)]));
  await sys.api.ok('POST', '/v1/ldap-profiles', ldapProfile(sys, { certificate: true, smtpAuth: true }));
  await sys.api.ok('POST', '/v1/ldap-profiles', { ...ldapProfile(sys, { certificate: false, smtpAuth: true }), name: 'auth-only' });
});

after(async () => {
  await sys?.stop();
});

describe('POST /v1/ldap-profiles/{name}/test', () => {
  test('smtpAuth: right password of an allowed user', async () => {
    const r = await run({ query: 'smtpAuth', username: 'alice', password: 'alice-pw' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.matched, true);
    assert.equal(r.body.authenticated, true);
    assert.equal(r.body.allowed, true);
    assert.equal(r.body.userId, 'alice');
    assert.equal(r.body.dn, 'uid=alice,ou=people,dc=example,dc=com');
    assert.equal(r.body.filter, '(uid=alice)');
    assert.match(r.body.allowFilter ?? '', /^\(&\(uid=alice\)\(\|\(!\(caccn=\*\)\)\(cacexempt=\*\)\(cacemergency>=\d{14}\.0Z\)\)\)$/);
    assert.equal(typeof r.body.durationMs, 'number');
  });

  test('smtpAuth: a card holder is authenticated but not allowed; a wrong password is not authenticated', async () => {
    const bob = await run({ query: 'smtpAuth', username: 'bob', password: 'bob-pw' });
    assert.deepEqual([bob.body.authenticated, bob.body.allowed], [true, false]);
    const wrong = await run({ query: 'smtpAuth', username: 'alice', password: 'nope' });
    assert.deepEqual([wrong.body.matched, wrong.body.authenticated, wrong.body.outcome], [true, false, 'invalid-credentials']);
  });

  test('smtpAuth: a hostile user name is escaped in the filter and matches no one', async () => {
    const r = await run({ query: 'smtpAuth', username: '*)(uid=*', password: 'x' });
    assert.equal(r.status, 200);
    assert.equal(r.body.filter, '(uid=\\2a\\29\\28uid=\\2a)');
    assert.deepEqual([r.body.matched, r.body.authenticated], [false, false]);
  });

  test('certificate: the token values, the escaped filter, the match and the user id', async () => {
    const r = await run({ query: 'certificate', certificatePem: jdoe.certPem });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.tokens?.cn, 'LAST.FIRST.1234567890');
    assert.equal(r.body.tokens?.sn, '0A1B');
    assert.equal(r.body.tokens?.upn, '1234567890@mil');
    assert.equal(r.body.tokens?.e, 'first.last@example.mil');
    assert.match(r.body.tokens?.s ?? '', /^CN=LAST\.FIRST\.1234567890,OU=PKI,O=certgate test,C=US$/);
    assert.match(r.body.tokens?.fp ?? '', /^[0-9A-F]{64}$/);
    assert.equal(r.body.filter, '(&(caccn=LAST.FIRST.1234567890)(cacserial=0A1B))');
    assert.deepEqual([r.body.matched, r.body.userId, r.body.authenticated, r.body.allowed], [true, 'jdoe', null, null]);
  });

  test('certificate: a CN with filter syntax is escaped and authenticates no one', async () => {
    const r = await run({ query: 'certificate', certificatePem: injection.certPem });
    assert.equal(r.body.filter?.startsWith('(&(caccn=\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a)'), true, r.body.filter ?? '');
    assert.equal(r.body.matched, false);
  });

  test('bad requests: unknown profile 404, missing query 400, malformed PEM 400 naming the field', async () => {
    assert.equal((await run({ query: 'smtpAuth', username: 'a', password: 'b' }, 'nope')).status, 404);
    const noQuery = await run({ query: 'certificate', certificatePem: jdoe.certPem }, 'auth-only');
    assert.equal(noQuery.status, 400);
    assert.match(noQuery.body.message ?? '', /certificateQuery/);
    const badPem = await run({ query: 'certificate', certificatePem: 'not a certificate' });
    assert.equal(badPem.status, 400);
    assert.match(badPem.body.message ?? '', /certificatePem/);
    const badBody = await run({ query: 'nonsense' });
    assert.equal(badBody.status, 400);
  });
});
