// The configuration model of SPEC §2: one TypeBox schema per resource, the single source
// of the TypeScript types, of request validation and of the OpenAPI document.
//
// Fields with a documented default are `required` in the schema *and* carry `default`:
// Fastify's Ajv runs with `useDefaults`, which fills a missing property before `required`
// is checked, so clients may omit them while every stored object is complete.
import { Type, type Static } from 'typebox';

export const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';
export const Name = Type.String({ pattern: NAME_PATTERN, description: 'Resource name' });

const Pem = (description: string) => Type.String({ minLength: 1, maxLength: 1_000_000, description });
const NullablePem = (description: string) => Type.Union([Pem(description), Type.Null()], { default: null });
/** Write-only secret: omitted in a PUT keeps the stored value, `null` clears it. */
const Secret = (description: string) =>
  Type.Optional(Type.Union([Type.String({ minLength: 1, maxLength: 1_000_000 }), Type.Null()], { description, writeOnly: true }));
/** Read-only companion of a secret in API responses: whether one is stored. Never stored itself. */
const SecretSet = (description: string) => Type.Optional(Type.Boolean({ description, readOnly: true }));

// ---------------------------------------------------------------- §2.1 LDAP profiles
export const CertificateQuery = Type.Object(
  {
    name: Name,
    query: Type.String({ minLength: 3, maxLength: 4096, description: 'RFC 4515 filter with {cn} {sn} {s} {i} {e} {upn} {fp} {ir} {sr} {ski} {t} tokens' }),
    userIdAttribute: Type.String({ pattern: '^[A-Za-z][A-Za-z0-9-]{0,63}$', default: 'uid' }),
  },
  { additionalProperties: false },
);

export const SmtpAuthQuery = Type.Object(
  {
    name: Name,
    query: Type.String({ minLength: 3, maxLength: 4096, description: 'RFC 4515 filter with {u} {t} tokens' }),
    method: Type.Union([Type.Literal('bind'), Type.Literal('password-attribute')], { default: 'bind' }),
    passwordAttribute: Type.String({ pattern: '^[A-Za-z][A-Za-z0-9-]{0,63}$', default: 'userPassword' }),
    allowQuery: Type.Union([Type.String({ minLength: 3, maxLength: 4096 }), Type.Null()], { default: null }),
    userIdAttribute: Type.String({
      pattern: '^[A-Za-z][A-Za-z0-9-]{0,63}$',
      default: 'uid',
      description: 'The authenticated user is this attribute of the entry found, whatever form of the name the client typed (Active Directory: sAMAccountName)',
    }),
  },
  { additionalProperties: false },
);

export const LdapBind = Type.Object(
  {
    dn: Type.String({ minLength: 1, maxLength: 1024 }),
    password: Secret('Bind password (write-only)'),
    passwordSet: SecretSet('Whether a bind password is stored (read-only)'),
  },
  { additionalProperties: false },
);

export const LdapProfile = Type.Object(
  {
    name: Name,
    hosts: Type.Array(Type.String({ pattern: '^ldaps?://[^\\s/]+(:[0-9]{1,5})?/?$' }), { minItems: 1, maxItems: 16 }),
    connection: Type.Union([Type.Literal('failover'), Type.Literal('load-balance')], { default: 'failover' }),
    baseDn: Type.String({ maxLength: 1024, description: 'Search base; empty for an Active Directory Global Catalog search (ports 3268/3269)' }),
    bind: Type.Union([LdapBind, Type.Null()], { default: null }),
    startTls: Type.Boolean({ default: false }),
    caPem: NullablePem('CA certificates (PEM) trusted for ldaps:// and StartTLS'),
    timeoutMs: Type.Integer({ minimum: 100, maximum: 60_000, default: 5000 }),
    cacheTtlSeconds: Type.Integer({ minimum: 0, maximum: 86_400, default: 0 }),
    maxConnections: Type.Integer({ minimum: 1, maximum: 100, default: 10 }),
    certificateQuery: Type.Union([CertificateQuery, Type.Null()], { default: null }),
    smtpAuthQuery: Type.Union([SmtpAuthQuery, Type.Null()], { default: null }),
  },
  { $id: 'LdapProfile', additionalProperties: false },
);
export type LdapProfile = Static<typeof LdapProfile>;

// ---------------------------------------------------------------- §2.3 SMTP authentication profiles
export const SmtpReply = Type.Object(
  {
    code: Type.Integer({ minimum: 400, maximum: 599 }),
    text: Type.String({ minLength: 1, maxLength: 400, pattern: '^[^\\r\\n]*$' }),
  },
  { additionalProperties: false },
);
export type SmtpReply = Static<typeof SmtpReply>;

export const LdapAuthProfile = Type.Object(
  {
    name: Name,
    type: Type.Literal('ldap'),
    ldapProfile: Name,
    checkWithLdap: Type.Boolean({ default: false }),
    onNotAllowed: Type.Union([Type.Literal('reject'), Type.Literal('allow-and-log')], { default: 'reject' }),
    notAllowedResponse: Type.Union([SmtpReply], { default: { code: 535, text: '5.7.8 Authentication credentials invalid' } }),
  },
  { $id: 'LdapAuthProfile', additionalProperties: false },
);
export type LdapAuthProfile = Static<typeof LdapAuthProfile>;

export const CertificateAuthProfile = Type.Object(
  {
    name: Name,
    type: Type.Literal('certificate'),
    ldapProfile: Name,
    allowSmtpAuthWithoutCertificate: Type.Boolean({ default: false }),
    fallbackProfile: Type.Union([Name, Type.Null()], { default: null }),
  },
  { $id: 'CertificateAuthProfile', additionalProperties: false },
);
export type CertificateAuthProfile = Static<typeof CertificateAuthProfile>;

export const SmtpAuthProfile = Type.Union([LdapAuthProfile, CertificateAuthProfile], { $id: 'SmtpAuthProfile' });
export type SmtpAuthProfile = Static<typeof SmtpAuthProfile>;

// ---------------------------------------------------------------- §2.4 mail flow policies
/** A limit of §2.4: a positive integer, or `null` for no limit. */
const Limit = (maximum: number, fallback: number, description: string) =>
  Type.Union([Type.Integer({ minimum: 1, maximum }), Type.Null()], { default: fallback, description: `${description} (null: no limit)` });

export const ThrottleLimit = Type.Object(
  {
    maxFailures: Type.Integer({ minimum: 1, maximum: 1_000_000, description: 'Failed AUTH commands allowed in the window' }),
    windowSeconds: Type.Integer({ minimum: 1, maximum: 604_800, description: 'Length of the sliding window' }),
  },
  { additionalProperties: false },
);
export type ThrottleLimit = Static<typeof ThrottleLimit>;

export const AuthFailureThrottle = Type.Object(
  {
    perClient: Type.Union([ThrottleLimit, Type.Null()], { default: { maxFailures: 100, windowSeconds: 600 }, description: 'Per client address (IPv6: per /64); null: off' }),
    perUser: Type.Union([ThrottleLimit, Type.Null()], { default: null, description: 'Per user name as given to AUTH (case-folded); null: off' }),
  },
  { additionalProperties: false, description: 'Failed AUTH commands counted across every worker (in Redis); over a limit, AUTH gets 454 4.7.0 without asking the directory' },
);
export type AuthFailureThrottle = Static<typeof AuthFailureThrottle>;
/** The defaults of SPEC §2.4's limits (also what code building a policy by hand starts from). */
export const DEFAULT_POLICY_LIMITS = {
  maxMessagesPerConnection: 100,
  maxConnectionsPerClient: 100,
  maxAuthFailuresPerConnection: 3,
  maxBadCommands: 10,
  authFailureThrottle: { perClient: { maxFailures: 100, windowSeconds: 600 }, perUser: null } as AuthFailureThrottle,
} as const;

export const MailFlowPolicy = Type.Object(
  {
    name: Name,
    action: Type.Union([Type.Literal('relay'), Type.Literal('accept'), Type.Literal('reject')]),
    tls: Type.Union([Type.Literal('off'), Type.Literal('preferred'), Type.Literal('required')], { default: 'off' }),
    verifyClientCertificate: Type.Boolean({ default: false }),
    requireSmtpAuth: Type.Boolean({ default: false }),
    smtpAuthRequiresTls: Type.Boolean({ default: false }),
    maxMessageBytes: Type.Integer({ minimum: 1024, maximum: 1_073_741_824, default: 26_214_400 }),
    maxRecipients: Type.Integer({ minimum: 1, maximum: 100_000, default: 100 }),
    maxMessagesPerConnection: Limit(1_000_000, DEFAULT_POLICY_LIMITS.maxMessagesPerConnection, 'Messages per connection; the next MAIL FROM gets 452 4.5.3'),
    maxConnectionsPerClient: Limit(1_000_000, DEFAULT_POLICY_LIMITS.maxConnectionsPerClient, 'Concurrent connections from one client address to one worker process; the next gets 421 4.7.0'),
    maxAuthFailuresPerConnection: Limit(1_000, DEFAULT_POLICY_LIMITS.maxAuthFailuresPerConnection, 'Failed AUTH commands in one session before 421 4.7.0 and close'),
    maxBadCommands: Limit(1_000, DEFAULT_POLICY_LIMITS.maxBadCommands, 'Unknown or out-of-sequence commands in one session before 421 4.7.0 and close'),
    authFailureThrottle: Type.Union([AuthFailureThrottle], { default: DEFAULT_POLICY_LIMITS.authFailureThrottle }),
  },
  { $id: 'MailFlowPolicy', additionalProperties: false },
);
export type MailFlowPolicy = Static<typeof MailFlowPolicy>;

// ---------------------------------------------------------------- §2.5 listeners
export const ListenerTls = Type.Object(
  {
    certificatePem: Pem('Server certificate chain (PEM)'),
    privateKeyPem: Secret('Server private key (PEM, write-only)'),
    privateKeySet: SecretSet('Whether a private key is stored (read-only)'),
    clientCaPem: NullablePem('CA certificates (PEM) that client certificates must chain to'),
  },
  { additionalProperties: false },
);

export const SenderGroup = Type.Object(
  {
    name: Name,
    senders: Type.Array(Type.String({ minLength: 2, maxLength: 64, description: 'IPv4 or IPv6 CIDR' }), { minItems: 1, maxItems: 1000 }),
    policy: Name,
  },
  { additionalProperties: false },
);

export const NextHop = Type.Object(
  {
    host: Type.String({ minLength: 1, maxLength: 253 }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 25 }),
    tls: Type.Union([Type.Literal('none'), Type.Literal('opportunistic'), Type.Literal('required')], { default: 'opportunistic' }),
    caPem: NullablePem('CA certificates (PEM) trusted for the next hop; null: the system store'),
  },
  { additionalProperties: false },
);

export const ProxyProtocol = Type.Object(
  {
    trustedProxies: Type.Array(
      Type.String({ minLength: 2, maxLength: 64, description: 'IPv4 or IPv6 CIDR of a load balancer allowed to connect and send the header' }),
      { minItems: 1, maxItems: 1000 },
    ),
  },
  {
    additionalProperties: false,
    description: 'Every connection must come from a trusted proxy and begin with a PROXY protocol header (v1 or v2); its address is the client address',
  },
);

export const Listener = Type.Object(
  {
    name: Name,
    address: Type.String({ minLength: 2, maxLength: 64, description: 'IPv4 or IPv6 address to listen on' }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    implicitTls: Type.Boolean({ default: false }),
    hostname: Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.-]+$' }),
    tls: Type.Union([ListenerTls, Type.Null()], { default: null }),
    smtpAuthProfile: Type.Union([Name, Type.Null()], { default: null }),
    senderGroups: Type.Array(SenderGroup, { maxItems: 100, default: [] }),
    defaultPolicy: Name,
    acceptedDomains: Type.Array(Type.String({ minLength: 1, maxLength: 253, pattern: '^[A-Za-z0-9.-]+$' }), { maxItems: 10_000, default: [] }),
    nextHop: NextHop,
    proxyProtocol: Type.Union([ProxyProtocol, Type.Null()], { default: null }),
    maxConnections: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1000, description: 'Open connections per worker process; the next gets 421 4.3.2 (checked before any TLS handshake)' }),
    idleTimeoutSeconds: Type.Integer({
      minimum: 1, maximum: 3600, default: 300,
      description: 'A session that completes no command for this long (inside DATA: sends nothing) gets 421 4.4.2 and is closed',
    }),
    enabled: Type.Boolean({ default: true }),
  },
  { $id: 'Listener', additionalProperties: false },
);
export type Listener = Static<typeof Listener>;

// ---------------------------------------------------------------- §2.6 CRL sources and settings
export const CrlSchedule = Type.Union([
  Type.Object({ everySeconds: Type.Integer({ minimum: 60, maximum: 31_536_000 }) }, { additionalProperties: false }),
  Type.Object({ cron: Type.String({ minLength: 9, maxLength: 128 }) }, { additionalProperties: false }),
]);

const CrlUrl = Type.String({ pattern: '^(https?|file):', maxLength: 2048 });

export const CrlSource = Type.Object(
  {
    name: Name,
    fileType: Type.Union([Type.Literal('asn1'), Type.Literal('pem')], { default: 'asn1' }),
    primaryUrl: CrlUrl,
    secondaryUrl: Type.Union([CrlUrl, Type.Null()], { default: null }),
    schedule: Type.Union([CrlSchedule], { default: { everySeconds: 3600 } }),
    enabled: Type.Boolean({ default: true }),
  },
  { $id: 'CrlSource', additionalProperties: false },
);
export type CrlSource = Static<typeof CrlSource>;

export const CrlStatus = Type.Object(
  {
    lastAttemptAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    lastError: Type.Union([Type.String(), Type.Null()]),
    lastSuccessAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    url: Type.Union([Type.String(), Type.Null()]),
    issuer: Type.Union([Type.String(), Type.Null()]),
    thisUpdate: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    nextUpdate: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    crlNumber: Type.Union([Type.String({ description: 'decimal' }), Type.Null()]),
    revokedCount: Type.Union([Type.Integer(), Type.Null()]),
    sha256: Type.Union([Type.String(), Type.Null()]),
    bytes: Type.Union([Type.Integer(), Type.Null()]),
  },
  { $id: 'CrlStatus' },
);
export type CrlStatus = Static<typeof CrlStatus>;

export const CrlSettings = Type.Object(
  {
    inboundSmtpTls: Type.Boolean({ default: true }),
    outboundSmtpTls: Type.Boolean({ default: false }),
    webInterface: Type.Boolean({ default: false }),
    trustedCaPem: NullablePem('Extra CA certificates (PEM) trusted to sign CRLs'),
    onExpiredCrl: Type.Union([Type.Literal('reject'), Type.Literal('accept-and-log')], { default: 'reject' }),
  },
  { $id: 'CrlSettings', additionalProperties: false },
);
export type CrlSettings = Static<typeof CrlSettings>;
export const DEFAULT_CRL_SETTINGS: CrlSettings = {
  inboundSmtpTls: true,
  outboundSmtpTls: false,
  webInterface: false,
  trustedCaPem: null,
  onExpiredCrl: 'reject',
};

// ---------------------------------------------------------------- §2.6b OCSP settings
export const OcspSettings = Type.Object(
  {
    inboundSmtpTls: Type.Boolean({ default: false, description: 'Client certificates of SMTP sessions are checked by OCSP' }),
    outboundSmtpTls: Type.Boolean({ default: false, description: "The next hop's server certificate is checked by OCSP" }),
    webInterface: Type.Boolean({ default: false, description: 'Client certificates presented to the API (mutual TLS) are checked by OCSP' }),
    responderUrl: Type.Union([Type.String({ pattern: '^http://', maxLength: 2048 }), Type.Null()], {
      default: null,
      description: "The responder asked for every certificate (http: only); null: the certificate's Authority Information Access OCSP URL",
    }),
    responderCaPem: NullablePem('Certificates (PEM) trusted to sign OCSP responses besides the issuer and its delegated responders: responder certificates themselves, or CAs their OCSPSigning certificates chain to'),
    timeoutMs: Type.Integer({ minimum: 100, maximum: 30_000, default: 3000, description: 'Longest a check waits for OCSP (cache, other workers and responder together)' }),
    maxCacheSeconds: Type.Integer({ minimum: 0, maximum: 604_800, default: 3600, description: 'Longest an answer is cached after its thisUpdate (a revoked one stays until its nextUpdate)' }),
    onUnavailable: Type.Union([Type.Literal('use-crl'), Type.Literal('reject'), Type.Literal('accept-and-log')], {
      default: 'use-crl',
      description: 'What an unknown status, no valid answer, a timeout or no responder URL leads to',
    }),
    sendNonce: Type.Boolean({ default: false, description: 'Send a nonce and accept only answers that echo it' }),
  },
  { $id: 'OcspSettings', additionalProperties: false },
);
export type OcspSettings = Static<typeof OcspSettings>;
export const DEFAULT_OCSP_SETTINGS: OcspSettings = {
  inboundSmtpTls: false,
  outboundSmtpTls: false,
  webInterface: false,
  responderUrl: null,
  responderCaPem: null,
  timeoutMs: 3000,
  maxCacheSeconds: 3600,
  onUnavailable: 'use-crl',
  sendNonce: false,
};

// ---------------------------------------------------------------- the whole configuration
export const Config = Type.Object(
  {
    ldapProfiles: Type.Array(LdapProfile, { default: [] }),
    smtpAuthProfiles: Type.Array(SmtpAuthProfile, { default: [] }),
    mailFlowPolicies: Type.Array(MailFlowPolicy, { default: [] }),
    listeners: Type.Array(Listener, { default: [] }),
    crlSources: Type.Array(CrlSource, { default: [] }),
    crlSettings: Type.Union([CrlSettings], { default: DEFAULT_CRL_SETTINGS }),
    ocspSettings: Type.Union([OcspSettings], { default: DEFAULT_OCSP_SETTINGS }),
  },
  { $id: 'Config', additionalProperties: false },
);
export type Config = Static<typeof Config>;
/** A configuration as stored: the data plus the version that wrote it. */
export type VersionedConfig = Config & { version: number };

export const EMPTY_CONFIG: Config = {
  ldapProfiles: [],
  smtpAuthProfiles: [],
  mailFlowPolicies: [],
  listeners: [],
  crlSources: [],
  crlSettings: DEFAULT_CRL_SETTINGS,
  ocspSettings: DEFAULT_OCSP_SETTINGS,
};

// ---------------------------------------------------------------- §2.7 events and workers
export const AuthMethod = Type.Union([Type.Literal('certificate'), Type.Literal('smtp-auth'), Type.Literal('none')]);
export const Outcome = Type.Union([Type.Literal('accepted'), Type.Literal('rejected'), Type.Literal('allowed-not-permitted')]);

export const SessionEvent = Type.Object(
  {
    id: Type.String({ description: 'Redis stream id' }),
    time: Type.String({ format: 'date-time' }),
    worker: Type.String(),
    listener: Type.String(),
    sessionId: Type.String(),
    clientAddress: Type.String(),
    tlsVersion: Type.Union([Type.String(), Type.Null()]),
    certificate: Type.Union([
      Type.Object({ subject: Type.String(), serial: Type.String(), issuer: Type.String() }),
      Type.Null(),
    ]),
    method: AuthMethod,
    user: Type.Union([Type.String(), Type.Null()]),
    outcome: Outcome,
    reason: Type.String(),
    detail: Type.Union([Type.String(), Type.Null()], { description: 'More about the reason, e.g. that a certificate was not revocation-checked' }),
    command: Type.Union([Type.String(), Type.Null()], { description: 'SMTP command the event answers (CONNECT, STARTTLS, AUTH, MAIL, RCPT, DATA)' }),
    reply: Type.Union([Type.String(), Type.Null()]),
    envelope: Type.Union([
      Type.Object({ from: Type.String(), recipientCount: Type.Integer(), size: Type.Integer() }),
      Type.Null(),
    ]),
  },
  { $id: 'SessionEvent' },
);
export type SessionEvent = Static<typeof SessionEvent>;
/** What a worker hands to the event recorder (the stream assigns the id). */
export type NewSessionEvent = Omit<SessionEvent, 'id'>;

export const WorkerStatus = Type.Object(
  {
    id: Type.String(),
    listeners: Type.Array(Type.Object({ name: Type.String(), address: Type.String(), port: Type.Integer() })),
    configVersion: Type.Integer(),
    crls: Type.Array(Type.Object({ source: Type.String(), issuer: Type.String(), crlNumber: Type.Union([Type.String(), Type.Null()]), revokedCount: Type.Integer() })),
    sessions: Type.Integer({ description: 'SMTP sessions open now' }),
    lastSeen: Type.String({ format: 'date-time' }),
    processes: Type.Integer({ minimum: 1, description: 'Processes of this worker (WORKER_PROCESSES) that report to it now' }),
    listenerErrors: Type.Array(
      Type.Object({ name: Type.String(), address: Type.String(), port: Type.Integer(), error: Type.String({ description: 'Why it cannot be bound, e.g. "listen EADDRINUSE: address already in use 127.0.0.1:25"' }) }),
      { description: 'Enabled listeners the worker cannot bind (it tries again every 5 s)' },
    ),
    configError: Type.Union([Type.String(), Type.Null()], {
      description: 'Why the stored configuration is not the one this worker runs (an empty store, an older version, an unreadable document); null when it is',
    }),
  },
  { $id: 'WorkerStatus' },
);
export type WorkerStatus = Static<typeof WorkerStatus>;
