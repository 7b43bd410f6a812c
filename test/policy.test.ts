// Unit tests of shared/policy/rules.ts (and the sender groups of shared/policy/sender-groups.ts), the pure SMTP session rules of SPEC §3 (with §2.3–§2.5).
//
// Every rule is tested by generating the combinations of its inputs in loops and comparing
// the answer with an oracle written from the SPEC text (the `expected*` functions below),
// not from the implementation. Each assertion message names the combination it checks.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  REPLIES,
  afterHandshake,
  authCommand,
  externalContinuation,
  authMechanisms,
  authOutcome,
  connectReply,
  ehloFeatures,
  mailFromReply,
  offersStartTls,
  rcptToReply,
  receivedProtocol,
  requestsClientCertificate,
  sizeExceeded,
  smtpAuthProfile,
  startTlsCommandReply,
  startTlsGate,
  type AllowanceCheck,
  type AuthCommandDecision,
  type AuthSetup,
  type CertificateCheck,
  type CredentialCheck,
  type DirectoryMatch,
  type Reply,
  type SessionState,
  type SessionUser,
} from '../shared/policy/rules.ts';
import { DEFAULT_POLICY_LIMITS, type CertificateAuthProfile, type LdapAuthProfile, type Listener, type MailFlowPolicy, type SmtpReply } from '../shared/config/schemas.ts';
import { compileSenderGroups, selectPolicyName as selectCompiled } from '../shared/policy/sender-groups.ts';

/** §2.5 through the compiled sender groups, as a listener runtime uses them. */
function selectPolicyName(listener: Pick<Listener, 'senderGroups' | 'defaultPolicy'>, address: string): string {
  return selectCompiled(compileSenderGroups(listener.senderGroups), listener.defaultPolicy, address);
}

// ================================================================ fixtures

const MAX_BYTES = 10_485_760;
const MAX_RCPT = 5;
const USER_ID = 'jdoe';
const OTHER_ID = 'alice';

function policy(overrides: Partial<MailFlowPolicy> = {}): MailFlowPolicy {
  return {
    name: 'RELAYED',
    action: 'relay',
    tls: 'preferred',
    verifyClientCertificate: false,
    requireSmtpAuth: false,
    smtpAuthRequiresTls: false,
    maxMessageBytes: MAX_BYTES,
    maxRecipients: MAX_RCPT,
    ...DEFAULT_POLICY_LIMITS,
    ...overrides,
  };
}

const DEFAULT_NOT_ALLOWED: SmtpReply = { code: 535, text: '5.7.8 Authentication credentials invalid' };
const CUSTOM_NOT_ALLOWED: SmtpReply = { code: 525, text: 'Dear user, please use your CAC to send email.' };

function ldapProfile(overrides: Partial<LdapAuthProfile> = {}): LdapAuthProfile {
  return {
    name: 'ldap-auth',
    type: 'ldap',
    ldapProfile: 'corp',
    checkWithLdap: true,
    onNotAllowed: 'reject',
    notAllowedResponse: DEFAULT_NOT_ALLOWED,
    ...overrides,
  };
}

function certificateProfile(overrides: Partial<CertificateAuthProfile> = {}): CertificateAuthProfile {
  return {
    name: 'cac-auth',
    type: 'certificate',
    ldapProfile: 'corp',
    allowSmtpAuthWithoutCertificate: false,
    fallbackProfile: null,
    ...overrides,
  };
}

const LDAP = ldapProfile();
const FALLBACK = ldapProfile({ name: 'ldap-fallback', onNotAllowed: 'reject', notAllowedResponse: CUSTOM_NOT_ALLOWED });

/** The auth setups a listener can have, by a readable name. */
const AUTH_SETUPS = {
  none: { type: 'none' },
  ldap: { type: 'ldap', profile: LDAP },
  'certificate(no fallback)': { type: 'certificate', profile: certificateProfile(), fallback: null },
  'certificate(fallback configured, allowSmtpAuthWithoutCertificate=false)': {
    type: 'certificate',
    profile: certificateProfile({ fallbackProfile: FALLBACK.name }),
    fallback: FALLBACK,
  },
  'certificate(allowSmtpAuthWithoutCertificate + fallback)': {
    type: 'certificate',
    profile: certificateProfile({ allowSmtpAuthWithoutCertificate: true, fallbackProfile: FALLBACK.name }),
    fallback: FALLBACK,
  },
} satisfies Record<string, AuthSetup>;
type AuthSetupName = keyof typeof AUTH_SETUPS;
const AUTH_SETUP_NAMES = Object.keys(AUTH_SETUPS) as AuthSetupName[];

const USERS = {
  none: null,
  certificate: { id: USER_ID, method: 'certificate' },
  'smtp-auth': { id: USER_ID, method: 'smtp-auth' },
} satisfies Record<string, SessionUser | null>;
type UserName = keyof typeof USERS;
const USER_NAMES = Object.keys(USERS) as UserName[];

function state(overrides: Partial<SessionState> = {}): SessionState {
  return { policy: policy(), auth: AUTH_SETUPS.ldap, tlsConfigured: true, secure: false, user: null, ...overrides };
}

const TLS_MODES = ['off', 'preferred', 'required'] as const;
const BOOLS = [false, true] as const;
const ACTIONS = ['relay', 'accept', 'reject'] as const;

function b64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

/** A combination as `key=value key=value`, for assertion messages and test names. */
function label(combo: Record<string, unknown>): string {
  return Object.entries(combo)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
}

/** Every combination of the given value lists. */
function product<T extends Record<string, readonly unknown[]>>(axes: T): Array<{ [K in keyof T]: T[K][number] }> {
  let out: Array<Record<string, unknown>> = [{}];
  for (const [key, values] of Object.entries(axes)) {
    out = out.flatMap((partial) => values.map((v) => ({ ...partial, [key]: v })));
  }
  return out as Array<{ [K in keyof T]: T[K][number] }>;
}

// ================================================================ expected replies (SPEC §3)

/** A reply as the SPEC names it: the code, the enhanced status code, and the exact text when the SPEC gives it. */
interface Expected { code: number; status: string; text?: string }

const X = {
  startTlsFirst: { code: 530, status: '5.7.0', text: '5.7.0 Must issue a STARTTLS command first' },
  authRequired: { code: 530, status: '5.7.0', text: '5.7.0 Authentication required' },
  rejectedAtConnect: { code: 554, status: '5.7.1' },
  certificateRefused: { code: 554, status: '5.7.1' },
  encryptionRequired: { code: 538, status: '5.7.11' },
  badSequence: { code: 503, status: '5.5.1' },
  unknownMechanism: { code: 504, status: '5.5.4' },
  authSucceeded: { code: 235, status: '2.7.0' },
  authFailed: { code: 535, status: '5.7.8' },
  tempFailure: { code: 454, status: '4.7.0' },
  relayDenied: { code: 550, status: '5.7.1' },
  tooManyRecipients: { code: 452, status: '4.5.3' },
  tooBig: { code: 552, status: '5.3.4' },
  startTlsNotAvailable: { code: 502, status: '5.5.1' },
  cannotDecode: { code: 501, status: '5.5.2' },
} satisfies Record<string, Expected>;

function fromReply(r: SmtpReply): Expected {
  return { code: r.code, status: r.text.split(' ')[0], text: r.text };
}

function assertReply(actual: Reply | null, expected: Expected | null, what: string): void {
  if (expected === null) {
    assert.equal(actual, null, `${what}: expected no objection (null), got ${actual ? `${actual.code} ${actual.text}` : 'null'}`);
    return;
  }
  assert.ok(actual, `${what}: expected ${expected.code} ${expected.text ?? expected.status}, got null`);
  assert.equal(actual.code, expected.code, `${what}: reply code (got "${actual.code} ${actual.text}")`);
  if (expected.text !== undefined) {
    assert.equal(actual.text, expected.text, `${what}: reply text`);
  } else {
    assert.match(actual.text, new RegExp(`^${expected.status.replace(/\./g, '\\.')} \\S`), `${what}: enhanced status ${expected.status} and a text (got "${actual.code} ${actual.text}")`);
  }
}

/** Every reply constant is a well-formed SMTP reply: 3-digit code, enhanced status matching its class. */
describe('REPLIES', () => {
  for (const [name, r] of Object.entries(REPLIES)) {
    test(`${name} is well formed`, () => {
      assert.ok(r.code >= 200 && r.code <= 599, `${name}: code ${r.code}`);
      assert.match(r.text, /^[245]\.\d{1,3}\.\d{1,3} \S/, `${name}: text "${r.text}"`);
      assert.equal(r.text[0], String(r.code)[0], `${name}: enhanced status class matches the code class`);
      assert.doesNotMatch(r.text, /[\r\n]/, `${name}: single line`);
    });
  }
});

// ================================================================ §2.5 selectPolicyName

describe('selectPolicyName (§2.5: sender groups in order by CIDR, first match wins, else default)', () => {
  const listener: Pick<Listener, 'senderGroups' | 'defaultPolicy'> = {
    defaultPolicy: 'DEFAULT',
    senderGroups: [
      { name: 'LOCAL', senders: ['127.0.0.0/8', '::1/128'], policy: 'LOCAL_POLICY' },
      { name: 'V6NET', senders: ['2001:db8:1::/48'], policy: 'V6_POLICY' },
      { name: 'WIDE', senders: ['10.0.0.0/8'], policy: 'FIRST' },
      { name: 'NARROW', senders: ['10.1.0.0/16', '192.0.2.0/24'], policy: 'SECOND' },
      { name: 'MAPPED', senders: ['::ffff:198.51.100.0/120'], policy: 'MAPPED_POLICY' },
      { name: 'LINKLOCAL', senders: ['fe80::/10'], policy: 'LINK_POLICY' },
      { name: 'HOST', senders: ['203.0.113.9'], policy: 'HOST_POLICY' },
    ],
  };
  const cases: Array<[address: string, policyName: string]> = [
    ['127.0.0.1', 'LOCAL_POLICY'],
    ['127.255.255.254', 'LOCAL_POLICY'],
    ['::ffff:127.0.0.1', 'LOCAL_POLICY'], // IPv4-mapped IPv6 (dual-stack socket) matches 127.0.0.0/8
    ['::FFFF:127.0.0.1', 'LOCAL_POLICY'],
    ['::ffff:7f00:1', 'LOCAL_POLICY'], // the same address in hex groups
    ['::1', 'LOCAL_POLICY'],
    ['0:0:0:0:0:0:0:1', 'LOCAL_POLICY'],
    ['128.0.0.1', 'DEFAULT'],
    ['2001:db8:1::25', 'V6_POLICY'],
    ['2001:db8:1:ffff:ffff:ffff:ffff:ffff', 'V6_POLICY'],
    ['2001:DB8:1::25', 'V6_POLICY'],
    ['2001:db8:2::1', 'DEFAULT'],
    ['10.1.2.3', 'FIRST'], // in both WIDE and NARROW: the first group wins
    ['::ffff:10.1.2.3', 'FIRST'],
    ['10.255.0.1', 'FIRST'],
    ['192.0.2.7', 'SECOND'],
    ['::ffff:192.0.2.7', 'SECOND'],
    ['192.0.3.7', 'DEFAULT'],
    ['198.51.100.20', 'MAPPED_POLICY'], // an IPv4 client matches an IPv4-mapped IPv6 CIDR
    ['198.51.101.20', 'DEFAULT'],
    ['fe80::1%eth0', 'LINK_POLICY'],
    ['fe80::abcd', 'LINK_POLICY'],
    ['203.0.113.9', 'HOST_POLICY'], // a bare address is a single host
    ['203.0.113.10', 'DEFAULT'],
    ['::', 'DEFAULT'],
    ['not-an-address', 'DEFAULT'],
    ['', 'DEFAULT'],
  ];
  for (const [address, expected] of cases) {
    test(`client ${JSON.stringify(address)} → ${expected}`, () => {
      assert.equal(selectPolicyName(listener, address), expected, `selectPolicyName(${JSON.stringify(address)})`);
    });
  }

  test('order matters: with NARROW before WIDE, 10.1.2.3 gets SECOND and 10.2.0.1 still FIRST', () => {
    const groups = listener.senderGroups;
    const reordered = { ...listener, senderGroups: [groups[3], groups[2]] };
    assert.equal(selectPolicyName(reordered, '10.1.2.3'), 'SECOND');
    assert.equal(selectPolicyName(reordered, '10.2.0.1'), 'FIRST');
  });

  test('no sender groups → defaultPolicy for every address', () => {
    for (const [address] of cases) {
      assert.equal(selectPolicyName({ defaultPolicy: 'ONLY', senderGroups: [] }, address), 'ONLY', `address ${address}`);
    }
  });

  test('0.0.0.0/0 and ::/0 match every client of their family (IPv4-mapped included)', () => {
    const all = { defaultPolicy: 'DEFAULT', senderGroups: [{ name: 'ALL4', senders: ['0.0.0.0/0'], policy: 'ALL4' }, { name: 'ALL6', senders: ['::/0'], policy: 'ALL6' }] };
    assert.equal(selectPolicyName(all, '192.0.2.1'), 'ALL4');
    assert.equal(selectPolicyName(all, '::ffff:192.0.2.1'), 'ALL4');
    assert.equal(selectPolicyName(all, '2001:db8::1'), 'ALL6');
  });

  test('an unparsable CIDR in a group never matches (and does not stop later groups)', () => {
    const bad = { defaultPolicy: 'DEFAULT', senderGroups: [{ name: 'BAD', senders: ['garbage', '10.0.0.1/8'], policy: 'BAD' }, { name: 'GOOD', senders: ['10.0.0.0/8'], policy: 'GOOD' }] };
    assert.equal(selectPolicyName(bad, '10.0.0.1'), 'GOOD');
  });
});

// ================================================================ rule 1

describe('rule 1: connectReply (action reject → 554 5.7.1 at connect)', () => {
  for (const combo of product({ action: ACTIONS, tls: TLS_MODES, requireSmtpAuth: BOOLS })) {
    test(label(combo), () => {
      const expected = combo.action === 'reject' ? X.rejectedAtConnect : null;
      assertReply(connectReply(policy(combo)), expected, `connectReply(${label(combo)})`);
    });
  }
});

// ================================================================ rule 2

/** SPEC rule 2: STARTTLS is offered with tls preferred/required, when the listener can do TLS and the session is not TLS yet. */
function expectedOffersStartTls(c: { tls: string; tlsConfigured: boolean; secure: boolean }): boolean {
  return c.tls !== 'off' && c.tlsConfigured && !c.secure;
}

describe('rule 2: STARTTLS offer and requirement', () => {
  const combos = product({ tls: TLS_MODES, tlsConfigured: BOOLS, secure: BOOLS });

  for (const combo of combos) {
    test(`offersStartTls / ehloFeatures.startTls / startTlsCommandReply / startTlsGate: ${label(combo)}`, () => {
      const s = state({ policy: policy({ tls: combo.tls }), tlsConfigured: combo.tlsConfigured, secure: combo.secure });
      const offered = expectedOffersStartTls(combo);
      assert.equal(offersStartTls(s), offered, `offersStartTls(${label(combo)})`);
      assert.equal(ehloFeatures(s).startTls, offered, `ehloFeatures(${label(combo)}).startTls`);
      // Not offered and not TLS yet → not available; already TLS → smtp-server's own "TLS already active".
      const startTlsExpected = !offered && !combo.secure ? X.startTlsNotAvailable : null;
      assertReply(startTlsCommandReply(s), startTlsExpected, `startTlsCommandReply(${label(combo)})`);
      const gateExpected = combo.tls === 'required' && !combo.secure ? X.startTlsFirst : null;
      assertReply(startTlsGate(s), gateExpected, `startTlsGate(${label(combo)})`);
    });
  }

  // tls: required before TLS: MAIL, RCPT, AUTH all get exactly the 530, and it wins over everything else.
  const gated = product({
    auth: AUTH_SETUP_NAMES,
    smtpAuthRequiresTls: BOOLS,
    requireSmtpAuth: BOOLS,
    action: ['relay', 'accept'] as const,
    tlsConfigured: BOOLS,
  });
  for (const combo of gated) {
    test(`tls=required, not yet TLS → 530 STARTTLS first for MAIL/RCPT/AUTH: ${label(combo)}`, () => {
      const s = state({
        policy: policy({ tls: 'required', smtpAuthRequiresTls: combo.smtpAuthRequiresTls, requireSmtpAuth: combo.requireSmtpAuth, action: combo.action }),
        auth: AUTH_SETUPS[combo.auth],
        tlsConfigured: combo.tlsConfigured,
        secure: false,
      });
      const what = label(combo);
      // wins over rule 6 (530 Authentication required) and the SIZE check
      assertReply(mailFromReply(s, null), X.startTlsFirst, `MAIL FROM, ${what}`);
      assertReply(mailFromReply(s, MAX_BYTES + 1), X.startTlsFirst, `MAIL FROM SIZE over the limit, ${what}`);
      // wins over rule 7
      assertReply(rcptToReply(s, 'user@example.com', ['example.com'], 0), X.startTlsFirst, `RCPT TO accepted domain, ${what}`);
      assertReply(rcptToReply(s, 'user@elsewhere.test', ['example.com'], 0), X.startTlsFirst, `RCPT TO foreign domain, ${what}`);
      assertReply(rcptToReply(s, 'user@example.com', ['example.com'], MAX_RCPT), X.startTlsFirst, `RCPT TO over maxRecipients, ${what}`);
      // wins over rule 5's 538, over "AUTH not enabled" and over an unknown mechanism
      for (const mech of ['PLAIN', 'LOGIN', 'EXTERNAL', 'CRAM-MD5']) {
        const d = authCommand(s, mech, undefined);
        assert.equal(d.action, 'reply', `AUTH ${mech}, ${what}: a reply, not a SASL exchange`);
        if (d.action === 'reply') assertReply(d.reply, X.startTlsFirst, `AUTH ${mech}, ${what}`);
      }
      // and AUTH is not advertised before TLS
      assert.deepEqual(authMechanisms(s), [], `EHLO AUTH mechanisms, ${what}`);
    });
  }
});

// ================================================================ rules 3 and 4: afterHandshake

/** SPEC rule 3: the handshake asks for a certificate with verifyClientCertificate or a certificate auth profile. */
function expectedRequestsCertificate(verify: boolean, auth: AuthSetup): boolean {
  return verify || auth.type === 'certificate';
}

describe('rule 3: requestsClientCertificate', () => {
  for (const combo of product({ verifyClientCertificate: BOOLS, auth: AUTH_SETUP_NAMES, tls: ['preferred', 'required'] as const })) {
    test(label(combo), () => {
      const auth = AUTH_SETUPS[combo.auth];
      assert.equal(
        requestsClientCertificate(policy({ verifyClientCertificate: combo.verifyClientCertificate, tls: combo.tls }), auth),
        expectedRequestsCertificate(combo.verifyClientCertificate, auth),
        `requestsClientCertificate(${label(combo)})`,
      );
    });
  }
});

const INVALID_REASONS = ['expired', 'not-yet-valid', 'untrusted-issuer', 'bad-key-usage', 'bad-signature', 'revoked', 'crl-expired', 'revocation-unavailable', 'malformed'] as const;

const DIRECTORY_ANSWERS: Record<string, DirectoryMatch | null> = {
  one: { kind: 'one', userId: USER_ID },
  none: { kind: 'none' },
  many: { kind: 'many' },
  'missing-field': { kind: 'missing-field' },
  unavailable: { kind: 'unavailable' },
  null: null,
};

const CERTIFICATE_CHECKS: Record<string, CertificateCheck> = {
  'not-requested': { kind: 'not-requested' },
  absent: { kind: 'absent' },
  ...Object.fromEntries(INVALID_REASONS.map((reason) => [`invalid(${reason})`, { kind: 'invalid', reason } as const])),
  ...Object.fromEntries(Object.entries(DIRECTORY_ANSWERS).map(([name, directory]) => [`valid(directory=${name})`, { kind: 'valid', directory } as const])),
};

/** Words the refusal text must contain, so that the client (and the admin reading the log) learns why. */
const REFUSAL_WORDS: Record<string, RegExp> = {
  'no-certificate': /certificate/i,
  expired: /expired/i,
  'not-yet-valid': /not yet valid/i,
  'untrusted-issuer': /trusted|issuer|CA/,
  'bad-key-usage': /client auth|key usage/i,
  'bad-signature': /signature/i,
  revoked: /revoked/i,
  'crl-expired': /revocation|CRL/i,
  'revocation-unavailable': /revocation status .* unavailable/i,
  malformed: /malformed/i,
  'not-in-directory': /directory|listed/i,
  'ambiguous-directory-match': /more than one|ambiguous/i,
  'certificate-field-missing': /field/i,
};

interface ExpectedHandshake { refuse: Expected | null; userId: string | null; reason: string }

/** SPEC rules 3 and 4 (with §2.3's certificate profile). */
function expectedAfterHandshake(verify: boolean, tls: 'preferred' | 'required', auth: AuthSetup, cert: CertificateCheck): ExpectedHandshake {
  const goOn = (reason: string): ExpectedHandshake => ({ refuse: null, userId: null, reason });
  const refused = (reason: string, r: Expected = X.certificateRefused): ExpectedHandshake => ({ refuse: r, userId: null, reason });
  switch (cert.kind) {
    case 'not-requested':
      return goOn('no-certificate-requested');
    case 'absent':
      // refused with verify and tls required; with verify and tls preferred the session goes on
      return verify && tls === 'required' ? refused('no-certificate') : goOn('no-certificate');
    case 'invalid':
      // verify and an invalid certificate → refused whatever tls says
      return verify ? refused(cert.reason) : goOn(cert.reason);
    case 'valid': {
      // rule 4 applies to a certificate profile running its certificate query
      if (auth.type !== 'certificate' || cert.directory === null) return goOn('certificate-valid');
      const d = cert.directory;
      if (d.kind === 'one') return { refuse: null, userId: d.userId, reason: 'certificate-authenticated' };
      const reason = { none: 'not-in-directory', many: 'ambiguous-directory-match', 'missing-field': 'certificate-field-missing', unavailable: 'directory-unavailable' }[d.kind];
      if (!verify) return goOn(reason);
      // directory unreachable is a temporary failure, not a verdict on the certificate
      return d.kind === 'unavailable' ? refused(reason, X.tempFailure) : refused(reason);
    }
  }
}

describe('rules 3 and 4: afterHandshake', () => {
  const combos = product({
    tls: ['preferred', 'required'] as const,
    verifyClientCertificate: BOOLS,
    auth: AUTH_SETUP_NAMES,
    certificate: Object.keys(CERTIFICATE_CHECKS),
    requireSmtpAuth: BOOLS,
  }).filter((c) => {
    // Only what a handshake can report: a certificate is reported only when one was asked for.
    const requested = expectedRequestsCertificate(c.verifyClientCertificate, AUTH_SETUPS[c.auth]);
    return (c.certificate === 'not-requested') !== requested;
  });

  for (const combo of combos) {
    test(label(combo), () => {
      const auth = AUTH_SETUPS[combo.auth];
      const cert = CERTIFICATE_CHECKS[combo.certificate];
      const s = state({
        policy: policy({ tls: combo.tls, verifyClientCertificate: combo.verifyClientCertificate, requireSmtpAuth: combo.requireSmtpAuth }),
        auth,
        secure: true,
        user: null,
      });
      const what = `afterHandshake(${label(combo)})`;
      const expected = expectedAfterHandshake(combo.verifyClientCertificate, combo.tls, auth, cert);
      const actual = afterHandshake(s, cert);
      assertReply(actual.refuse, expected.refuse, `${what} refuse`);
      if (actual.refuse && expected.refuse?.code === 554) {
        const words = REFUSAL_WORDS[expected.reason];
        assert.ok(words, `${what}: test knows the words for ${expected.reason}`);
        assert.match(actual.refuse.text, words, `${what}: the 554 text says why (${expected.reason})`);
      }
      assert.deepEqual(actual.user, expected.userId === null ? null : { id: expected.userId, method: 'certificate' }, `${what} user`);
      assert.equal(actual.reason, expected.reason, `${what} reason`);
    });
  }

  test('an unknown invalid-certificate reason under verify still refuses with 554 5.7.1 naming it', () => {
    const d = afterHandshake(state({ policy: policy({ verifyClientCertificate: true }), secure: true }), { kind: 'invalid', reason: 'weird-new-failure' });
    assertReply(d.refuse, X.certificateRefused, 'invalid(weird-new-failure)');
    assert.match(d.refuse?.text ?? '', /weird-new-failure/);
    assert.equal(d.reason, 'weird-new-failure');
  });

  test('distinct refusal reasons get distinct 554 texts', () => {
    const s = state({ policy: policy({ verifyClientCertificate: true, tls: 'required' }), auth: AUTH_SETUPS['certificate(no fallback)'], secure: true });
    const checks: CertificateCheck[] = [
      { kind: 'absent' },
      ...INVALID_REASONS.map((reason) => ({ kind: 'invalid', reason }) as const),
      { kind: 'valid', directory: { kind: 'none' } },
      { kind: 'valid', directory: { kind: 'many' } },
      { kind: 'valid', directory: { kind: 'missing-field' } },
    ];
    const texts = checks.map((c) => afterHandshake(s, c).refuse?.text);
    assert.equal(new Set(texts).size, texts.length, `texts: ${JSON.stringify(texts)}`);
  });
});

// ================================================================ rules 4 and 5: AUTH advertisement

/** SPEC rule 5 / §2.3: the LDAP profile SMTP AUTH runs through, or null when AUTH is not available. */
function expectedSmtpAuthProfile(auth: AuthSetup, user: SessionUser | null): LdapAuthProfile | null {
  if (auth.type === 'ldap') return auth.profile;
  if (auth.type === 'certificate' && auth.profile.allowSmtpAuthWithoutCertificate && user?.method !== 'certificate') return auth.fallback;
  return null;
}

/** SPEC rules 4 and 5: the mechanisms EHLO advertises. */
function expectedMechanisms(c: { tls: string; smtpAuthRequiresTls: boolean; secure: boolean }, auth: AuthSetup, user: SessionUser | null): string[] {
  if (user?.method === 'certificate') return ['EXTERNAL']; // rule 4
  if (user) return []; // already authenticated by SMTP AUTH
  if (!expectedSmtpAuthProfile(auth, user)) return [];
  // AUTH before TLS would be refused (rule 2's 530 or rule 5's 538): not advertised
  if (!c.secure && (c.tls === 'required' || c.smtpAuthRequiresTls)) return [];
  return ['PLAIN', 'LOGIN'];
}

/**
 * The session states that can occur: `smtpAuthRequiresTls` needs tls on (§2.4), a certificate
 * user needs TLS and a certificate profile, an smtp-auth user needs SMTP AUTH to have been
 * possible (profile available, and TLS when it is required).
 */
function sessionStates() {
  return product({
    tls: TLS_MODES,
    smtpAuthRequiresTls: BOOLS,
    secure: BOOLS,
    auth: AUTH_SETUP_NAMES,
    user: USER_NAMES,
  }).filter((c) => {
    if (c.tls === 'off' && c.smtpAuthRequiresTls) return false;
    const auth = AUTH_SETUPS[c.auth];
    if (c.user === 'certificate') return c.secure && auth.type === 'certificate';
    if (c.user === 'smtp-auth') {
      return expectedSmtpAuthProfile(auth, null) !== null && (c.secure || (c.tls !== 'required' && !c.smtpAuthRequiresTls));
    }
    return true;
  });
}

function toState(c: ReturnType<typeof sessionStates>[number]): SessionState {
  return state({
    policy: policy({ tls: c.tls, smtpAuthRequiresTls: c.smtpAuthRequiresTls }),
    auth: AUTH_SETUPS[c.auth],
    tlsConfigured: true,
    secure: c.secure,
    user: USERS[c.user],
  });
}

describe('rules 4 and 5: smtpAuthProfile, authMechanisms, ehloFeatures', () => {
  for (const combo of sessionStates()) {
    test(label(combo), () => {
      const s = toState(combo);
      const what = label(combo);
      const auth = AUTH_SETUPS[combo.auth];
      const user = USERS[combo.user];
      assert.equal(smtpAuthProfile(s), expectedSmtpAuthProfile(auth, user), `smtpAuthProfile(${what})`);
      const mechanisms = expectedMechanisms(combo, auth, user);
      assert.deepEqual(authMechanisms(s), mechanisms, `authMechanisms(${what})`);
      assert.deepEqual(
        ehloFeatures(s),
        { startTls: expectedOffersStartTls({ tls: combo.tls, tlsConfigured: true, secure: combo.secure }), auth: mechanisms, size: MAX_BYTES },
        `ehloFeatures(${what})`,
      );
      // EXTERNAL appears only after a certificate authenticated the session
      assert.equal(authMechanisms(s).includes('EXTERNAL'), combo.user === 'certificate', `EXTERNAL advertised iff certificate user, ${what}`);
    });
  }

  test('ehloFeatures.size is the policy maxMessageBytes', () => {
    for (const size of [1024, 26_214_400, 1_073_741_824]) {
      assert.equal(ehloFeatures(state({ policy: policy({ maxMessageBytes: size }) })).size, size, `maxMessageBytes=${size}`);
    }
  });

  test('a certificate profile with allowSmtpAuthWithoutCertificate but no resolved fallback offers no AUTH', () => {
    const auth: AuthSetup = { type: 'certificate', profile: certificateProfile({ allowSmtpAuthWithoutCertificate: true, fallbackProfile: 'gone' }), fallback: null };
    const s = state({ auth, secure: true });
    assert.equal(smtpAuthProfile(s), null);
    assert.deepEqual(authMechanisms(s), []);
    const d = authCommand(s, 'PLAIN', undefined);
    assert.ok(d.action === 'reply' && d.reply.code === 503, `AUTH PLAIN: ${JSON.stringify(d)}`);
  });
});

// ================================================================ rules 2, 4 and 5: authCommand

const MECHANISMS = ['PLAIN', 'LOGIN', 'EXTERNAL', 'CRAM-MD5', 'plain', 'external'] as const;
const INITIAL_RESPONSES: Record<string, string | undefined> = {
  undefined: undefined,
  '=': '=',
  'b64(user id)': b64(USER_ID),
  'b64(other id)': b64(OTHER_ID),
  'b64(user id, no padding)': b64(USER_ID).replace(/=+$/, ''),
  'b64(USER ID upper case)': b64(USER_ID.toUpperCase()),
  garbage: 'not base64!',
  'garbage(only padding)': '====',
};

type ExpectedAuth = { action: 'reply'; reply: Expected } | { action: 'sasl'; profile: LdapAuthProfile } | { action: 'challenge' };

/** SPEC rules 2, 4 and 5 for `AUTH <mechanism> [initial-response]`. */
function expectedAuthCommand(c: ReturnType<typeof sessionStates>[number], mechanism: string, irName: string): ExpectedAuth {
  const r = (reply: Expected): ExpectedAuth => ({ action: 'reply', reply });
  const auth = AUTH_SETUPS[c.auth];
  const user = USERS[c.user];
  const mech = mechanism.toUpperCase();
  if (c.tls === 'required' && !c.secure) return r(X.startTlsFirst); // rule 2, wins over 538
  if (user?.method === 'certificate') {
    // rule 4: AUTH EXTERNAL with an empty or the matching authorization identity → 235; any other AUTH → 503
    if (mech !== 'EXTERNAL') return r(X.badSequence);
    // RFC 4954 §4: without an initial response the server sends an empty 334 challenge
    if (irName === 'undefined') return { action: 'challenge' };
    const matching = ['=', 'b64(user id)', 'b64(user id, no padding)'].includes(irName);
    // RFC 4954 §4: a response that cannot be base64-decoded → 501 5.5.2
    if (irName.startsWith('garbage')) return r(X.cannotDecode);
    return r(matching ? X.authSucceeded : X.authFailed);
  }
  if (user) return r(X.badSequence); // already authenticated (RFC 4954: 503)
  const profile = expectedSmtpAuthProfile(auth, user);
  if (!profile) return r(X.badSequence); // AUTH neither advertised nor accepted
  if (c.smtpAuthRequiresTls && !c.secure) return r(X.encryptionRequired); // rule 5
  if (mech !== 'PLAIN' && mech !== 'LOGIN') return r(X.unknownMechanism);
  return { action: 'sasl', profile };
}

function assertAuthDecision(actual: AuthCommandDecision, expected: ExpectedAuth, what: string): void {
  if (expected.action === 'challenge') {
    assert.equal(actual.action, 'challenge', `${what}: expected a 334 challenge, got ${JSON.stringify(actual)}`);
    return;
  }
  if (expected.action === 'sasl') {
    assert.equal(actual.action, 'sasl', `${what}: expected a SASL exchange, got ${JSON.stringify(actual)}`);
    if (actual.action === 'sasl') assert.equal(actual.profile, expected.profile, `${what}: SASL profile`);
    return;
  }
  assert.equal(actual.action, 'reply', `${what}: expected a reply ${expected.reply.code}, got ${JSON.stringify(actual)}`);
  if (actual.action === 'reply') {
    assertReply(actual.reply, expected.reply, what);
    assert.ok(actual.reason.length > 0, `${what}: a reason for the event`);
  }
}

describe('rules 2, 4 and 5: authCommand (every session state × mechanism × initial response)', () => {
  for (const combo of sessionStates()) {
    test(label(combo), () => {
      const s = toState(combo);
      for (const mechanism of MECHANISMS) {
        for (const [irName, ir] of Object.entries(INITIAL_RESPONSES)) {
          const what = `authCommand(${label(combo)}, mechanism=${mechanism}, initialResponse=${irName})`;
          assertAuthDecision(authCommand(s, mechanism, ir), expectedAuthCommand(combo, mechanism, irName), what);
        }
      }
    });
  }

  test('the tls-required gate names its reason', () => {
    const d = authCommand(state({ policy: policy({ tls: 'required', smtpAuthRequiresTls: true }), secure: false }), 'PLAIN', undefined);
    assert.ok(d.action === 'reply', JSON.stringify(d));
    assert.equal(d.reason, 'tls-required');
  });

  test('AUTH EXTERNAL with a non-ASCII user id in base64 matches that user', () => {
    const s = state({ auth: AUTH_SETUPS['certificate(no fallback)'], secure: true, user: { id: 'jürgen', method: 'certificate' } });
    const ok = authCommand(s, 'EXTERNAL', b64('jürgen'));
    assert.ok(ok.action === 'reply' && ok.reply.code === 235, JSON.stringify(ok));
    const other = authCommand(s, 'EXTERNAL', b64('jurgen'));
    assert.ok(other.action === 'reply' && other.reply.code === 535, JSON.stringify(other));
  });
});

// ================================================================ rule 5 and §2.3: authOutcome

const CREDENTIALS: CredentialCheck[] = ['authenticated', 'invalid-credentials', 'unknown-user', 'empty-password', 'ambiguous', 'directory-unavailable'];
const ALLOWANCES: AllowanceCheck[] = ['allowed', 'not-allowed', 'directory-unavailable', 'not-checked'];
const NOT_ALLOWED_RESPONSES = { 'default(535)': DEFAULT_NOT_ALLOWED, 'custom(525)': CUSTOM_NOT_ALLOWED };

interface ExpectedOutcome { reply: Expected; authenticated: boolean; allowedNotPermitted: boolean; outcome: 'accepted' | 'rejected' | 'allowed-not-permitted' }

/** SPEC rule 5 and §2.3. */
function expectedAuthOutcome(profile: LdapAuthProfile, credentials: CredentialCheck, allowance: AllowanceCheck): ExpectedOutcome {
  const rejected = (reply: Expected): ExpectedOutcome => ({ reply, authenticated: false, allowedNotPermitted: false, outcome: 'rejected' });
  const accepted: ExpectedOutcome = { reply: X.authSucceeded, authenticated: true, allowedNotPermitted: false, outcome: 'accepted' };
  if (credentials === 'directory-unavailable') return rejected(X.tempFailure);
  if (credentials !== 'authenticated') return rejected(X.authFailed); // wrong, unknown user, empty password, ambiguous
  if (!profile.checkWithLdap) return accepted; // no allowance query
  if (allowance === 'allowed') return accepted;
  if (allowance === 'directory-unavailable') return rejected(X.tempFailure);
  // not allowed (and, failing closed, an allowance that was not checked although it should have been)
  if (profile.onNotAllowed === 'allow-and-log') {
    return { reply: X.authSucceeded, authenticated: true, allowedNotPermitted: true, outcome: 'allowed-not-permitted' };
  }
  return rejected(fromReply(profile.notAllowedResponse));
}

describe('rule 5 and §2.3: authOutcome', () => {
  const combos = product({
    credentials: CREDENTIALS,
    allowance: ALLOWANCES,
    checkWithLdap: BOOLS,
    onNotAllowed: ['reject', 'allow-and-log'] as const,
    notAllowedResponse: Object.keys(NOT_ALLOWED_RESPONSES) as Array<keyof typeof NOT_ALLOWED_RESPONSES>,
  });
  for (const combo of combos) {
    test(label(combo), () => {
      const profile = ldapProfile({ checkWithLdap: combo.checkWithLdap, onNotAllowed: combo.onNotAllowed, notAllowedResponse: NOT_ALLOWED_RESPONSES[combo.notAllowedResponse] });
      const what = `authOutcome(${label(combo)})`;
      const expected = expectedAuthOutcome(profile, combo.credentials, combo.allowance);
      const actual = authOutcome(profile, combo.credentials, combo.allowance);
      assertReply(actual.reply, expected.reply, `${what} reply`);
      assert.equal(actual.authenticated, expected.authenticated, `${what} authenticated`);
      assert.equal(actual.allowedNotPermitted, expected.allowedNotPermitted, `${what} allowedNotPermitted`);
      assert.equal(actual.outcome, expected.outcome, `${what} outcome`);
      assert.ok(actual.reason.length > 0, `${what} reason`);
      if (combo.credentials !== 'authenticated' && combo.credentials !== 'directory-unavailable') {
        assert.equal(actual.reason, combo.credentials, `${what}: the reason names the credential failure`);
      }
    });
  }

  test('the custom notAllowedResponse is answered verbatim (deployment C: 525)', () => {
    const out = authOutcome(FALLBACK, 'authenticated', 'not-allowed');
    assert.deepEqual(out.reply, CUSTOM_NOT_ALLOWED);
    assert.equal(out.reason, 'not-allowed-by-allow-query');
  });
});

// ================================================================ rules 2 and 6: MAIL FROM

describe('rules 2 and 6: mailFromReply (STARTTLS gate, requireSmtpAuth, SIZE)', () => {
  const SIZES = { none: null, zero: 0, under: MAX_BYTES - 1, equal: MAX_BYTES, over: MAX_BYTES + 1, 'far over': MAX_BYTES * 10 };
  const combos = product({
    tls: TLS_MODES,
    secure: BOOLS,
    requireSmtpAuth: BOOLS,
    user: USER_NAMES,
    size: Object.keys(SIZES) as Array<keyof typeof SIZES>,
  }).filter((c) => c.user !== 'certificate' || c.secure);
  for (const combo of combos) {
    test(label(combo), () => {
      const s = state({ policy: policy({ tls: combo.tls, requireSmtpAuth: combo.requireSmtpAuth }), secure: combo.secure, user: USERS[combo.user] });
      const declared = SIZES[combo.size];
      let expected: Expected | null = null;
      if (combo.tls === 'required' && !combo.secure) expected = X.startTlsFirst;
      else if (combo.requireSmtpAuth && combo.user === 'none') expected = X.authRequired;
      else if (declared !== null && declared > MAX_BYTES) expected = X.tooBig;
      assertReply(mailFromReply(s, declared), expected, `mailFromReply(${label(combo)})`);
    });
  }
});

// ================================================================ rule 7: RCPT TO

describe('rule 7: rcptToReply', () => {
  const ACCEPTED = ['example.com', 'Mail.Example.ORG'];
  const RECIPIENTS: Record<string, boolean> = {
    'user@example.com': true,
    'user@EXAMPLE.COM': true,
    'User.Name+tag@Example.Com': true,
    'user@example.com.': true, // trailing dot of a fully qualified domain
    'user@EXAMPLE.com.': true,
    'user@mail.example.org': true,
    'user@MAIL.EXAMPLE.ORG.': true,
    '"a@b"@example.com': true, // quoted local part containing @
    'user@sub.example.com': false, // subdomains are not accepted
    'user@example.org': false, // parent of an accepted subdomain
    'user@example.com.evil.test': false,
    'user@notexample.com': false,
    'user@example.co': false,
    'user@example.comm': false,
    '"user@example.com"@evil.test': false,
    'user@evil.test': false,
    user: false, // no @
    postmaster: false,
    'user@': false,
    '@example.com.evil': false,
    'user@[192.0.2.1]': false,
    '': false,
  };
  const COUNTS = { '0': 0, 'max-1': MAX_RCPT - 1, max: MAX_RCPT, 'max+1': MAX_RCPT + 1 };

  const combos = product({
    action: ACTIONS,
    recipient: Object.keys(RECIPIENTS),
    recipientsSoFar: Object.keys(COUNTS) as Array<keyof typeof COUNTS>,
    tls: TLS_MODES,
    secure: BOOLS,
  });
  // one test per action × tls × secure, looping over recipients and counts inside
  const groups = new Map<string, typeof combos>();
  for (const c of combos) {
    const key = label({ action: c.action, tls: c.tls, secure: c.secure });
    groups.set(key, [...(groups.get(key) ?? []), c]);
  }
  for (const [key, list] of groups) {
    test(key, () => {
      for (const combo of list) {
        const s = state({ policy: policy({ action: combo.action, tls: combo.tls }), secure: combo.secure });
        const count = COUNTS[combo.recipientsSoFar];
        let expected: Expected | null = null;
        if (combo.tls === 'required' && !combo.secure) expected = X.startTlsFirst;
        // relay accepts any recipient; reject never reaches RCPT (rule 1 refused it at connect), so only accept checks domains
        else if (combo.action === 'accept' && !RECIPIENTS[combo.recipient]) expected = X.relayDenied;
        else if (count >= MAX_RCPT) expected = X.tooManyRecipients; // the (max+1)th recipient is over maxRecipients
        assertReply(rcptToReply(s, combo.recipient, ACCEPTED, count), expected, `rcptToReply(${label(combo)}, acceptedDomains=${JSON.stringify(ACCEPTED)})`);
      }
    });
  }

  test('accept with no acceptedDomains refuses every recipient; relay with none accepts every one', () => {
    for (const recipient of Object.keys(RECIPIENTS)) {
      assertReply(rcptToReply(state({ policy: policy({ action: 'accept' }) }), recipient, [], 0), X.relayDenied, `accept, [] , ${recipient}`);
      assertReply(rcptToReply(state({ policy: policy({ action: 'relay' }) }), recipient, [], 0), null, `relay, [], ${recipient}`);
    }
  });

  test('maxRecipients = 1: the first recipient is accepted, the second is 452 4.5.3', () => {
    const s = state({ policy: policy({ maxRecipients: 1 }) });
    assertReply(rcptToReply(s, 'a@example.com', [], 0), null, 'first');
    assertReply(rcptToReply(s, 'b@example.com', [], 1), X.tooManyRecipients, 'second');
  });
});

// ================================================================ sizeExceeded and receivedProtocol

describe('sizeExceeded (streamed size against maxMessageBytes)', () => {
  for (const max of [1024, MAX_BYTES]) {
    for (const [name, bytes] of Object.entries({ zero: 0, under: max - 1, equal: max, over: max + 1, 'far over': max * 100 })) {
      test(label({ maxMessageBytes: max, bytes: name }), () => {
        const s = state({ policy: policy({ maxMessageBytes: max }) });
        assertReply(sizeExceeded(s, bytes), bytes > max ? X.tooBig : null, `sizeExceeded(max=${max}, bytes=${bytes})`);
      });
    }
  }
});

describe('receivedProtocol (RFC 3848 keyword)', () => {
  for (const combo of product({ secure: BOOLS, user: USER_NAMES })) {
    test(label(combo), () => {
      const expected = `ESMTP${combo.secure ? 'S' : ''}${combo.user !== 'none' ? 'A' : ''}`;
      assert.equal(receivedProtocol({ secure: combo.secure, user: USERS[combo.user] }), expected, `receivedProtocol(${label(combo)})`);
    });
  }
  test('the four keywords', () => {
    assert.equal(receivedProtocol({ secure: false, user: null }), 'ESMTP');
    assert.equal(receivedProtocol({ secure: true, user: null }), 'ESMTPS');
    assert.equal(receivedProtocol({ secure: false, user: USERS['smtp-auth'] }), 'ESMTPA');
    assert.equal(receivedProtocol({ secure: true, user: USERS.certificate }), 'ESMTPSA');
  });
});

// ================================================================ §4: the three deployments, as sequences of rule calls

describe('§4 deployments walked through the rules', () => {
  test('A. certificate only: tls required + verify + requireSmtpAuth, certificate profile without fallback', () => {
    const p = policy({ tls: 'required', verifyClientCertificate: true, requireSmtpAuth: true });
    const auth = AUTH_SETUPS['certificate(no fallback)'];
    const plain = state({ policy: p, auth });
    assert.deepEqual(ehloFeatures(plain), { startTls: true, auth: [], size: MAX_BYTES });
    assertReply(mailFromReply(plain, null), X.startTlsFirst, 'MAIL before STARTTLS');
    assert.equal(requestsClientCertificate(p, auth), true);
    const tls = state({ policy: p, auth, secure: true });
    const refusals: Array<[string, CertificateCheck]> = [
      ['no certificate', { kind: 'absent' }],
      ['revoked', { kind: 'invalid', reason: 'revoked' }],
      ['expired', { kind: 'invalid', reason: 'expired' }],
      ['foreign CA', { kind: 'invalid', reason: 'untrusted-issuer' }],
      ['unlisted', { kind: 'valid', directory: { kind: 'none' } }],
    ];
    for (const [name, check] of refusals) assertReply(afterHandshake(tls, check).refuse, X.certificateRefused, `A: ${name}`);
    const ok = afterHandshake(tls, { kind: 'valid', directory: { kind: 'one', userId: USER_ID } });
    assert.equal(ok.refuse, null);
    const authed = { ...tls, user: ok.user };
    // SMTP AUTH (PLAIN/LOGIN) never offered; EXTERNAL only reflects the certificate login (rule 4)
    assert.deepEqual(authMechanisms(tls), []);
    assert.deepEqual(authMechanisms(authed), ['EXTERNAL']);
    assertReply(mailFromReply(authed, 1000), null, 'MAIL after certificate login');
    assertReply(rcptToReply(authed, 'anyone@anywhere.test', [], 0), null, 'RCPT relay');
    assert.equal(receivedProtocol(authed), 'ESMTPSA');
  });

  test('B. SMTP AUTH only: tls required + requireSmtpAuth, ldap profile with checkWithLdap', () => {
    for (const onNotAllowed of ['reject', 'allow-and-log'] as const) {
      const profile = ldapProfile({ checkWithLdap: true, onNotAllowed });
      const p = policy({ tls: 'required', requireSmtpAuth: true });
      const auth: AuthSetup = { type: 'ldap', profile };
      assert.equal(requestsClientCertificate(p, auth), false);
      const plain = state({ policy: p, auth });
      assert.deepEqual(authMechanisms(plain), []);
      const tls = state({ policy: p, auth, secure: true });
      assert.equal(afterHandshake(tls, { kind: 'not-requested' }).refuse, null);
      assert.deepEqual(authMechanisms(tls), ['PLAIN', 'LOGIN']);
      assertReply(mailFromReply(tls, null), X.authRequired, 'MAIL before AUTH');
      assert.deepEqual(authCommand(tls, 'PLAIN', b64('\0jdoe\0pw')), { action: 'sasl', profile });
      assertReply(authOutcome(profile, 'authenticated', 'allowed').reply, X.authSucceeded, 'allowed user');
      const notAllowed = authOutcome(profile, 'authenticated', 'not-allowed');
      assert.equal(notAllowed.outcome, onNotAllowed === 'reject' ? 'rejected' : 'allowed-not-permitted', onNotAllowed);
    }
  });

  test('C. certificate or SMTP AUTH: tls preferred + requireSmtpAuth + smtpAuthRequiresTls, no verify', () => {
    const p = policy({ tls: 'preferred', requireSmtpAuth: true, smtpAuthRequiresTls: true, verifyClientCertificate: false });
    const auth = AUTH_SETUPS['certificate(allowSmtpAuthWithoutCertificate + fallback)'];
    const plain = state({ policy: p, auth });
    assert.deepEqual(ehloFeatures(plain), { startTls: true, auth: [], size: MAX_BYTES });
    const before = authCommand(plain, 'PLAIN', undefined);
    assert.ok(before.action === 'reply', JSON.stringify(before));
    assertReply(before.reply, X.encryptionRequired, 'AUTH before TLS');
    const tls = state({ policy: p, auth, secure: true });
    // no card: the session goes on and may use the password
    const noCard = afterHandshake(tls, { kind: 'absent' });
    assert.deepEqual(noCard, { refuse: null, user: null, reason: 'no-certificate' });
    assert.deepEqual(authMechanisms(tls), ['PLAIN', 'LOGIN']);
    assert.deepEqual(authCommand(tls, 'LOGIN', undefined), { action: 'sasl', profile: FALLBACK });
    // card holder trying a password: allowQuery refuses → the custom 525
    assert.deepEqual(authOutcome(FALLBACK, 'authenticated', 'not-allowed').reply, CUSTOM_NOT_ALLOWED);
    // card holder with the card: authenticated by certificate, AUTH PLAIN now 503
    const card = afterHandshake(tls, { kind: 'valid', directory: { kind: 'one', userId: USER_ID } });
    const authed = { ...tls, user: card.user };
    assert.deepEqual(authMechanisms(authed), ['EXTERNAL']);
    const plainAfter = authCommand(authed, 'PLAIN', undefined);
    assert.ok(plainAfter.action === 'reply', JSON.stringify(plainAfter));
    assertReply(plainAfter.reply, X.badSequence, 'AUTH PLAIN after certificate login');
    // an invalid card without verify: the session goes on unauthenticated, password still possible
    assert.equal(afterHandshake(tls, { kind: 'invalid', reason: 'revoked' }).refuse, null);
  });
});

// ================================================================ where shared/policy/rules.ts and the SPEC disagree

describe('accepted domains as an administrator writes them (trailing dot, IDN)', () => {
  // SPEC §3 rule 7: `accept` takes "only acceptedDomains"; §2.5's schema lets an administrator
  // write an accepted domain as a fully qualified name with its trailing dot. Where the SPEC
  // is silent, an administrator expects `example.com.` to accept mail for user@example.com,
  // exactly as the implementation already accepts a recipient domain with a trailing dot.
  test('rcptToReply: an accepted domain configured with a trailing dot ("example.com.") accepts its recipients', () => {
    const s = state({ policy: policy({ action: 'accept' }) });
    for (const [domains, recipient] of [
      [['example.com.'], 'user@example.com'],
      [['Example.COM.'], 'user@EXAMPLE.com.'],
    ] as const) {
      assertReply(rcptToReply(s, recipient, domains, 0), null, `rcptToReply(accept, ${recipient}, acceptedDomains=${JSON.stringify(domains)})`);
    }
  });

  // The gateway advertises SMTPUTF8, so RFC 6531 clients may give an internationalized domain
  // in U-labels; acceptedDomains (schema pattern ^[A-Za-z0-9.-]+$) can only hold A-labels.
  // An administrator who accepts `xn--bcher-kva.example` expects user@bücher.example accepted.
  test('rcptToReply: a U-label recipient domain matches its accepted A-label (IDNA) form', () => {
    const s = state({ policy: policy({ action: 'accept' }) });
    for (const recipient of ['user@bücher.example', 'user@BÜCHER.example']) {
      assertReply(rcptToReply(s, recipient, ['xn--bcher-kva.example'], 0), null, `rcptToReply(accept, ${recipient}, acceptedDomains=["xn--bcher-kva.example"])`);
    }
    assertReply(rcptToReply(s, 'user@bucher.example', ['xn--bcher-kva.example'], 0), X.relayDenied, 'a different domain stays refused');
  });
});

describe('AUTH EXTERNAL without initial response: the answer to the 334 challenge', () => {
  const s = state({ secure: true, user: { id: USER_ID, method: 'certificate' } });
  const cases: Array<[string, number]> = [
    ['', 235], ['=', 235], [b64(USER_ID), 235], [` ${b64(USER_ID)} `, 235], [b64(USER_ID).replace(/=+$/, ''), 235], [b64(OTHER_ID), 535], ['*', 501],
    // msmtp with GNU SASL and no `user`: no answer to the 334, its next command instead
    ['MAIL FROM:<jdoe@example.com>', 501], ['EHLO client.example', 501], ['a', 501], ['ab=c', 501], ['abcde===', 501],
  ];
  for (const [line, code] of cases) {
    test(`answer ${JSON.stringify(line)} → ${code}`, () => {
      const d = externalContinuation(s, line);
      assert.equal(d.action, 'reply', JSON.stringify(d));
      if (d.action === 'reply') assert.equal(d.reply.code, code, JSON.stringify(d));
      if (d.action === 'reply' && code === 501 && line !== '*') assert.equal(d.reply.text, REPLIES.cannotDecode.text);
    });
  }
});

