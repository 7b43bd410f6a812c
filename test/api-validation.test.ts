// Every validation rule of a configuration write: a request that breaks exactly that rule
// gets 400 with the offending field in `message`, and nothing changes (the version stays).
// A few near misses check that the rules are not stricter than they should be.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPki, type Issued, type Pki } from './helpers/pki.ts';
import { bodies, startApi, type ApiHarness } from './helpers/api.ts';

interface Case {
  title: string;
  method: 'POST' | 'PUT';
  url: string;
  body: () => unknown;
  /** Must appear in the error message (and in `details` for configuration rules). */
  field: string;
  /** Also expected in the message. */
  says?: RegExp;
}

describe('configuration validation', () => {
  let api: ApiHarness;
  let pki: Pki;
  let server: Issued;
  let otherServer: Issued;
  let exported: Record<string, unknown[]>;

  const { ldapProfile, ldapAuthProfile, certificateAuthProfile, policy, listener, crlSource } = bodies;
  const tls = (overrides: Record<string, unknown> = {}) => ({
    certificatePem: server.certPem,
    privateKeyPem: server.keyPem,
    clientCaPem: pki.intermediate.certPem,
    ...overrides,
  });

  before(async () => {
    [api, pki] = await Promise.all([startApi(), createPki()]);
    [server, otherServer] = await Promise.all([pki.server({ cn: 'gateway.example.com' }), pki.server({ cn: 'other.example.com' })]);
    const setup: [string, unknown][] = [
      ['/v1/ldap-profiles', ldapProfile('corp')],
      ['/v1/ldap-profiles', ldapProfile('certonly', { smtpAuthQuery: null })],
      ['/v1/ldap-profiles', ldapProfile('authonly', { certificateQuery: null, smtpAuthQuery: { name: 'a', query: '(uid={u})' } })],
      ['/v1/smtp-auth-profiles', ldapAuthProfile('ldap-auth', 'corp')],
      ['/v1/smtp-auth-profiles', certificateAuthProfile('cac', 'corp')],
      ['/v1/mail-flow-policies', policy('PLAIN')],
      ['/v1/mail-flow-policies', policy('TLS', { tls: 'required' })],
      ['/v1/mail-flow-policies', policy('VERIFY', { tls: 'preferred', verifyClientCertificate: true })],
      ['/v1/listeners', listener('base', 2901)],
    ];
    for (const [url, body] of setup) assert.equal((await api.call('POST', url, body)).status, 201, `${url} ${JSON.stringify(body)}`);
    exported = (await api.call('GET', '/v1/config')).body;
  });
  after(async () => {
    await Promise.all([api.close(), pki.cleanup()]);
  });

  const withoutVersion = () => {
    const { version: _version, ...config } = exported;
    return structuredClone(config);
  };

  const CASES: Case[] = [
    // ---- names and references
    {
      title: 'names are unique per kind (configuration import)',
      method: 'PUT',
      url: '/v1/config',
      body: () => {
        const c = withoutVersion();
        c.mailFlowPolicies!.push(policy('PLAIN', { action: 'reject' }));
        return c;
      },
      field: '/mailFlowPolicies/PLAIN/name',
      says: /duplicate/,
    },
    { title: 'an auth profile needs an existing LDAP profile', method: 'POST', url: '/v1/smtp-auth-profiles', body: () => ldapAuthProfile('a1', 'nope'), field: '/smtpAuthProfiles/a1/ldapProfile' },
    {
      title: 'a fallback profile must exist',
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => certificateAuthProfile('a2', 'corp', { fallbackProfile: 'nope' }),
      field: '/smtpAuthProfiles/a2/fallbackProfile',
      says: /does not exist/,
    },
    {
      title: 'a fallback profile must be of type ldap',
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => certificateAuthProfile('a3', 'corp', { fallbackProfile: 'cac' }),
      field: '/smtpAuthProfiles/a3/fallbackProfile',
      says: /type ldap/,
    },
    {
      title: 'allowSmtpAuthWithoutCertificate needs a fallback profile',
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => certificateAuthProfile('a4', 'corp', { allowSmtpAuthWithoutCertificate: true }),
      field: '/smtpAuthProfiles/a4/fallbackProfile',
    },
    {
      title: "a certificate profile's LDAP profile needs a certificateQuery",
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => certificateAuthProfile('a5', 'authonly'),
      field: '/smtpAuthProfiles/a5/ldapProfile',
      says: /certificateQuery/,
    },
    {
      title: "an ldap profile's LDAP profile needs an smtpAuthQuery",
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => ldapAuthProfile('a6', 'certonly'),
      field: '/smtpAuthProfiles/a6/ldapProfile',
      says: /smtpAuthQuery/,
    },
    {
      title: 'checkWithLdap needs an allowQuery',
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => ldapAuthProfile('a7', 'authonly', { checkWithLdap: true }),
      field: '/smtpAuthProfiles/a7/checkWithLdap',
      says: /allowQuery/,
    },
    {
      title: 'removing a query a profile relies on is refused',
      method: 'PUT',
      url: '/v1/ldap-profiles/corp',
      body: () => ldapProfile('corp', { certificateQuery: null }),
      field: '/smtpAuthProfiles/cac/ldapProfile',
      says: /certificateQuery/,
    },
    { title: "a listener's auth profile must exist", method: 'POST', url: '/v1/listeners', body: () => listener('l1', 2911, { smtpAuthProfile: 'nope' }), field: '/listeners/l1/smtpAuthProfile' },
    { title: "a listener's default policy must exist", method: 'POST', url: '/v1/listeners', body: () => listener('l2', 2912, { defaultPolicy: 'nope' }), field: '/listeners/l2/defaultPolicy' },
    {
      title: "a sender group's policy must exist",
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('l3', 2913, { senderGroups: [{ name: 'G', senders: ['10.0.0.0/8'], policy: 'nope' }] }),
      field: '/listeners/l3/senderGroups/0/policy',
    },
    {
      title: 'sender group names are unique within a listener',
      method: 'POST',
      url: '/v1/listeners',
      body: () =>
        listener('l4', 2914, {
          senderGroups: [
            { name: 'G', senders: ['10.0.0.0/8'], policy: 'PLAIN' },
            { name: 'G', senders: ['::1'], policy: 'PLAIN' },
          ],
        }),
      field: '/listeners/l4/senderGroups/1/name',
    },
    // ---- LDAP query templates
    {
      title: 'a certificate query must be a valid filter',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q1', { certificateQuery: { name: 'c', query: '(caccn={cn}' } }),
      field: '/ldapProfiles/q1/certificateQuery/query',
      says: /invalid LDAP filter/,
    },
    {
      title: 'an SMTP auth query must be a valid filter',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q2', { smtpAuthQuery: { name: 's', query: 'uid={u}' } }),
      field: '/ldapProfiles/q2/smtpAuthQuery/query',
    },
    {
      title: 'an allow query must be a valid filter',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q3', { smtpAuthQuery: { name: 's', query: '(uid={u})', allowQuery: '(&(uid={u})' } }),
      field: '/ldapProfiles/q3/smtpAuthQuery/allowQuery',
    },
    {
      title: 'an unknown token is refused',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q4', { certificateQuery: { name: 'c', query: '(caccn={commonName})' } }),
      field: '/ldapProfiles/q4/certificateQuery/query',
      says: /unknown token \{commonName\}/,
    },
    {
      title: 'a certificate query cannot use {u}',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q5', { certificateQuery: { name: 'c', query: '(&(caccn={cn})(uid={u}))' } }),
      field: '/ldapProfiles/q5/certificateQuery/query',
      says: /\{u\} cannot be used in a certificate query/,
    },
    {
      title: 'an SMTP auth query cannot use certificate tokens',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q6', { smtpAuthQuery: { name: 's', query: '(|(uid={u})(cn={cn}))' } }),
      field: '/ldapProfiles/q6/smtpAuthQuery/query',
      says: /\{cn\} cannot be used/,
    },
    {
      title: 'an allow query cannot use certificate tokens',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('q7', { smtpAuthQuery: { name: 's', query: '(uid={u})', allowQuery: '(&(uid={u})(cacserial={sn}))' } }),
      field: '/ldapProfiles/q7/smtpAuthQuery/allowQuery',
      says: /\{sn\} cannot be used/,
    },
    // ---- policies
    {
      title: 'verifyClientCertificate needs TLS',
      method: 'POST',
      url: '/v1/mail-flow-policies',
      body: () => policy('p1', { verifyClientCertificate: true }),
      field: '/mailFlowPolicies/p1/verifyClientCertificate',
    },
    {
      title: 'smtpAuthRequiresTls needs TLS',
      method: 'POST',
      url: '/v1/mail-flow-policies',
      body: () => policy('p2', { tls: 'off', smtpAuthRequiresTls: true }),
      field: '/mailFlowPolicies/p2/smtpAuthRequiresTls',
    },
    {
      title: 'a policy update that turns TLS off under verifyClientCertificate is refused',
      method: 'PUT',
      url: '/v1/mail-flow-policies/VERIFY',
      body: () => policy('VERIFY', { tls: 'off', verifyClientCertificate: true }),
      field: '/mailFlowPolicies/VERIFY/verifyClientCertificate',
    },
    // ---- PEM
    {
      title: 'the listener certificate must parse',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('t1', 2921, { defaultPolicy: 'TLS', tls: tls({ certificatePem: '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n' }) }),
      field: '/listeners/t1/tls/certificatePem',
    },
    {
      title: 'the listener private key must parse',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('t2', 2922, { defaultPolicy: 'TLS', tls: tls({ privateKeyPem: 'garbage' }) }),
      field: '/listeners/t2/tls/privateKeyPem',
    },
    {
      title: 'the listener private key must match its certificate',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('t3', 2923, { defaultPolicy: 'TLS', tls: tls({ privateKeyPem: otherServer.keyPem }) }),
      field: '/listeners/t3/tls/privateKeyPem',
      says: /does not match/,
    },
    {
      title: 'a listener certificate needs a private key',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('t4', 2924, { defaultPolicy: 'TLS', tls: { certificatePem: server.certPem } }),
      field: '/listeners/t4/tls/privateKeyPem',
    },
    {
      title: 'the client CA must parse',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('t5', 2925, { defaultPolicy: 'TLS', tls: tls({ clientCaPem: 'not a certificate' }) }),
      field: '/listeners/t5/tls/clientCaPem',
    },
    {
      title: 'the next hop CA must parse',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('t6', 2926, { nextHop: { host: '127.0.0.1', caPem: 'nope' } }),
      field: '/listeners/t6/nextHop/caPem',
    },
    { title: 'the LDAP CA must parse', method: 'POST', url: '/v1/ldap-profiles', body: () => ldapProfile('c1', { caPem: 'nope' }), field: '/ldapProfiles/c1/caPem' },
    { title: 'the trusted CRL CA must parse', method: 'PUT', url: '/v1/crl-settings', body: () => ({ trustedCaPem: 'nope' }), field: '/crlSettings/trustedCaPem' },
    { title: 'the OCSP responder CA must parse', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ responderCaPem: 'nope' }), field: '/ocspSettings/responderCaPem' },
    { title: 'the OCSP responder URL must be http:', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ responderUrl: 'https://ocsp.example.mil/' }), field: 'responderUrl' },
    { title: 'the OCSP responder URL must parse', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ responderUrl: 'http://exa mple/' }), field: '/ocspSettings/responderUrl' },
    { title: 'the OCSP timeout has a floor', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ timeoutMs: 10 }), field: 'timeoutMs' },
    { title: 'the OCSP timeout has a ceiling', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ timeoutMs: 600_000 }), field: 'timeoutMs' },
    { title: 'the OCSP cache time cannot be negative', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ maxCacheSeconds: -1 }), field: 'maxCacheSeconds' },
    { title: 'onUnavailable is one of three', method: 'PUT', url: '/v1/ocsp-settings', body: () => ({ onUnavailable: 'accept' }), field: 'onUnavailable' },
    // ---- what a listener needs for its policies
    {
      title: 'a listener whose policy uses TLS needs tls',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('n1', 2931, { defaultPolicy: 'TLS' }),
      field: '/listeners/n1/tls',
      says: /TLS/,
    },
    {
      title: 'an implicit-TLS listener needs tls',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('n2', 2932, { implicitTls: true }),
      field: '/listeners/n2/tls',
      says: /implicitTls/,
    },
    {
      title: "a sender group's TLS policy needs tls as well",
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('n3', 2933, { senderGroups: [{ name: 'G', senders: ['127.0.0.0/8'], policy: 'TLS' }] }),
      field: '/listeners/n3/tls',
    },
    {
      title: 'verifyClientCertificate needs a client CA',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('n4', 2934, { defaultPolicy: 'VERIFY', tls: tls({ clientCaPem: null }) }),
      field: '/listeners/n4/tls/clientCaPem',
      says: /VERIFY/,
    },
    {
      title: 'a certificate auth profile needs a client CA',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('n5', 2935, { defaultPolicy: 'TLS', smtpAuthProfile: 'cac', tls: tls({ clientCaPem: null }) }),
      field: '/listeners/n5/tls/clientCaPem',
      says: /cac/,
    },
    // ---- addresses
    {
      title: 'sender CIDRs must be valid',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a1', 2941, { senderGroups: [{ name: 'G', senders: ['10.0.0.0/8', '10.0.0.1/33'], policy: 'PLAIN' }] }),
      field: '/listeners/a1/senderGroups/0/senders/1',
    },
    {
      title: 'sender CIDRs have no host bits',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a2', 2942, { senderGroups: [{ name: 'G', senders: ['192.168.1.1/16'], policy: 'PLAIN' }] }),
      field: '/listeners/a2/senderGroups/0/senders/0',
      says: /did you mean 192\.168\.0\.0\/16/,
    },
    {
      title: 'trusted proxies are CIDRs',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a6', 2944, { proxyProtocol: { trustedProxies: ['10.0.0.0/8', 'balancer.example.com'] } }),
      field: '/listeners/a6/proxyProtocol/trustedProxies/1',
      says: /not an IPv4 or IPv6 CIDR/,
    },
    {
      title: 'trusted proxy CIDRs have no host bits',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a7', 2945, { proxyProtocol: { trustedProxies: ['10.1.2.3/8'] } }),
      field: '/listeners/a7/proxyProtocol/trustedProxies/0',
      says: /did you mean 10\.0\.0\.0\/8/,
    },
    {
      title: 'schema: proxyProtocol names at least one trusted proxy',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a8', 2946, { proxyProtocol: { trustedProxies: [] } }),
      field: 'body/proxyProtocol/trustedProxies',
    },
    {
      title: 'schema: proxyProtocol has no other property',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a9', 2947, { proxyProtocol: { trustedProxies: ['10.0.0.0/8'], version: 2 } }),
      field: 'body/proxyProtocol/version',
    },
    { title: 'a listener address is an IP address', method: 'POST', url: '/v1/listeners', body: () => listener('a3', 2943, { address: 'localhost' }), field: '/listeners/a3/address' },
    {
      title: 'two enabled listeners cannot share address and port',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a4', 2901),
      field: '/listeners/a4/port',
      says: /listener "base"/,
    },
    {
      title: 'a wildcard address overlaps every address of its family',
      method: 'POST',
      url: '/v1/listeners',
      body: () => listener('a5', 2901, { address: '0.0.0.0' }),
      field: '/listeners/a5/port',
    },
    // ---- CRL sources and LDAP hosts
    {
      title: 'a cron schedule must parse',
      method: 'POST',
      url: '/v1/crl-sources',
      body: () => crlSource('s1', { schedule: { cron: '0 */6 * * * * * *' } }),
      field: '/crlSources/s1/schedule/cron',
      says: /invalid cron/,
    },
    {
      title: 'a cron schedule may not fire more than once a minute',
      method: 'POST',
      url: '/v1/crl-sources',
      body: () => crlSource('s2', { schedule: { cron: '*/5 * * * * *' } }),
      field: '/crlSources/s2/schedule/cron',
    },
    {
      title: 'an LDAP host port is 1-65535',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('h1', { hosts: ['ldap://127.0.0.1:389', 'ldap://127.0.0.1:99999'] }),
      field: '/ldapProfiles/h1/hosts/1',
    },
    {
      title: 'StartTLS is not combined with ldaps://',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('h2', { hosts: ['ldaps://127.0.0.1:636'], startTls: true }),
      field: '/ldapProfiles/h2/hosts/0',
    },
    // ---- schema (Ajv)
    { title: 'schema: port range', method: 'POST', url: '/v1/listeners', body: () => listener('s1', 70000), field: 'body/port', says: /must be <= 65535/ },
    { title: 'schema: unknown property', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('s2', { colour: 'red' }), field: 'body/colour', says: /not a known property/ },
    { title: 'schema: name pattern', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('no spaces allowed'), field: 'body/name' },
    {
      title: 'schema: required property',
      method: 'POST',
      url: '/v1/listeners',
      body: () => ({ ...listener('s3', 2951), hostname: undefined }),
      field: 'body/hostname',
      says: /is required/,
    },
    { title: 'schema: enumerations', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('s4', { action: 'bounce' }), field: 'body/action' },
    {
      title: 'schema: nested unknown property',
      method: 'POST',
      url: '/v1/ldap-profiles',
      body: () => ldapProfile('s5', { bind: { dn: 'cn=admin', pasword: 'x' } }),
      field: 'body/bind/pasword',
    },
    {
      title: 'schema: discriminated union names the member field',
      method: 'POST',
      url: '/v1/smtp-auth-profiles',
      body: () => ({ name: 's6', type: 'certificate' }),
      field: 'body/ldapProfile',
      says: /is required/,
    },
    {
      title: 'schema: CRL schedule minimum',
      method: 'POST',
      url: '/v1/crl-sources',
      body: () => crlSource('s7', { schedule: { everySeconds: 10 } }),
      field: 'body/schedule/everySeconds',
      says: />= 60/,
    },
    // ---- limits of §2.4 and §2.5 (null = no limit only where SPEC says so)
    { title: 'schema: maxBadCommands is at least 1', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('l1', { maxBadCommands: 0 }), field: 'body/maxBadCommands' },
    { title: 'schema: maxMessagesPerConnection is an integer', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('l2', { maxMessagesPerConnection: 2.5 }), field: 'body/maxMessagesPerConnection' },
    { title: 'schema: maxConnectionsPerClient is a number or null', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('l3', { maxConnectionsPerClient: '50' }), field: 'body/maxConnectionsPerClient' },
    { title: 'schema: maxAuthFailuresPerConnection is at least 1', method: 'POST', url: '/v1/mail-flow-policies', body: () => policy('l4', { maxAuthFailuresPerConnection: -1 }), field: 'body/maxAuthFailuresPerConnection' },
    {
      title: 'schema: a throttle window is at least 1 s',
      method: 'POST',
      url: '/v1/mail-flow-policies',
      body: () => policy('l5', { authFailureThrottle: { perClient: { maxFailures: 10, windowSeconds: 0 }, perUser: null } }),
      field: 'body/authFailureThrottle/perClient/windowSeconds',
    },
    {
      title: 'schema: a throttle limit needs maxFailures',
      method: 'POST',
      url: '/v1/mail-flow-policies',
      body: () => policy('l6', { authFailureThrottle: { perClient: null, perUser: { windowSeconds: 60 } } }),
      field: 'body/authFailureThrottle/perUser',
    },
    {
      title: 'schema: the throttle knows no other key',
      method: 'POST',
      url: '/v1/mail-flow-policies',
      body: () => policy('l7', { authFailureThrottle: { perClient: null, perUser: null, perDomain: null } }),
      field: 'body/authFailureThrottle',
    },
    {
      title: 'configuration import: a bad throttle limit is named',
      method: 'PUT',
      url: '/v1/config',
      body: () => {
        const c = withoutVersion();
        (c.mailFlowPolicies![0] as Record<string, unknown>).authFailureThrottle = { perClient: { maxFailures: 0, windowSeconds: 60 }, perUser: null };
        return c;
      },
      field: 'body/mailFlowPolicies/0/authFailureThrottle/perClient/maxFailures',
    },
    { title: 'schema: maxConnections has no "no limit"', method: 'POST', url: '/v1/listeners', body: () => listener('l8', 2981, { maxConnections: null }), field: 'body/maxConnections' },
    { title: 'schema: maxConnections is at least 1', method: 'POST', url: '/v1/listeners', body: () => listener('l9', 2982, { maxConnections: 0 }), field: 'body/maxConnections' },
    { title: 'schema: idleTimeoutSeconds has no "never"', method: 'POST', url: '/v1/listeners', body: () => listener('l10', 2983, { idleTimeoutSeconds: null }), field: 'body/idleTimeoutSeconds' },
    { title: 'schema: idleTimeoutSeconds is at most an hour', method: 'POST', url: '/v1/listeners', body: () => listener('l11', 2984, { idleTimeoutSeconds: 86_400 }), field: 'body/idleTimeoutSeconds' },
    { title: 'schema: not JSON at all', method: 'PUT', url: '/v1/config', body: () => [1, 2, 3], field: 'body', says: /must be object/ },
  ];

  for (const c of CASES) {
    test(`400: ${c.title}`, async () => {
      const before = await api.version();
      const res = await api.call(c.method, c.url, c.body());
      assert.equal(res.status, 400, res.text);
      assert.equal(res.body.statusCode, 400);
      assert.equal(res.body.error, 'Bad Request');
      assert.ok(res.body.message.includes(c.field), `message names ${c.field}: ${res.body.message}`);
      if (c.says) assert.match(res.body.message, c.says);
      if (c.field.startsWith('/')) {
        assert.ok(
          res.body.details.some((d: { field: string }) => d.field === c.field),
          `details: ${JSON.stringify(res.body.details)}`,
        );
      }
      assert.equal(await api.version(), before, 'nothing changed');
    });
  }

  test('near misses are accepted', async () => {
    const ok: [string, string, unknown][] = [
      ['POST', '/v1/crl-sources', crlSource('file-crl', { primaryUrl: 'file:///var/lib/certgate/ca.crl', schedule: { cron: '0 */6 * * *' } })],
      ['POST', '/v1/listeners', listener('disabled-twin', 2901, { enabled: false })],
      ['POST', '/v1/listeners', listener('v6', 2901, { address: '::1' })],
      [
        'POST',
        '/v1/listeners',
        listener('tls', 2961, {
          defaultPolicy: 'VERIFY',
          smtpAuthProfile: 'cac',
          tls: tls(),
          senderGroups: [{ name: 'LOCAL', senders: ['127.0.0.0/8', '::1/128', '::ffff:10.0.0.0/104', '192.0.2.7'], policy: 'TLS' }],
        }),
      ],
      ['POST', '/v1/listeners', listener('implicit', 2962, { implicitTls: true, tls: tls({ clientCaPem: null }) })],
      ['POST', '/v1/listeners', listener('behind-balancer', 2963, { proxyProtocol: { trustedProxies: ['127.0.0.1', '10.0.0.0/8', 'fd00::/8'] } })],
      ['POST', '/v1/smtp-auth-profiles', certificateAuthProfile('cac-or-password', 'corp', { allowSmtpAuthWithoutCertificate: true, fallbackProfile: 'ldap-auth' })],
      [
        'POST',
        '/v1/mail-flow-policies',
        policy('unlimited', {
          maxMessagesPerConnection: null, maxConnectionsPerClient: null, maxAuthFailuresPerConnection: null, maxBadCommands: null,
          authFailureThrottle: { perClient: null, perUser: { maxFailures: 5, windowSeconds: 900 } },
        }),
      ],
      ['POST', '/v1/listeners', listener('limits', 2985, { maxConnections: 1, idleTimeoutSeconds: 1 })],
      ['POST', '/v1/ldap-profiles', ldapProfile('ad', { certificateQuery: { name: 'upn', query: '(userPrincipalName={upn})', userIdAttribute: 'sAMAccountName' } })],
    ];
    for (const [method, url, body] of ok) {
      const res = await api.call(method, url, body);
      assert.equal(res.status, 201, `${url}: ${res.text}`);
    }
    const ocsp = await api.call('PUT', '/v1/ocsp-settings', { responderUrl: 'http://[::1]:8080/ocsp?ca=59', responderCaPem: pki.root.certPem, timeoutMs: 100, maxCacheSeconds: 0 });
    assert.equal(ocsp.status, 200, ocsp.text);
  });
});
