// Semantic validation of a whole configuration, beyond what the JSON schema can say:
// names are unique, references resolve, query templates are well-formed, PEM parses,
// CIDRs and cron expressions are valid, listeners do not collide. Pure: no I/O.
//
// It always runs on the WHOLE configuration (the config store calls it for every write),
// so a change to one resource that breaks another (removing the certificate query a
// certificate profile relies on) is caught as well.
//
// Field paths are JSON-pointer-like but address named resources by name rather than by
// array index (`/listeners/submission/senderGroups/0/senders/1`): an API client that
// posted one listener knows its name, not where it landed in the stored array.
import { isIP } from 'node:net';
import { CronExpressionParser } from 'cron-parser';
import { Value } from 'typebox/value';
import { checkFilterTemplate } from '../directory/filter.ts';
import { CERTIFICATE_TOKENS, QUERY_TOKENS, SMTP_AUTH_TOKENS, type QueryToken } from '../directory/tokens.ts';
import { parseCidr } from '../policy/sender-groups.ts';
import { keyMatchesCertificate, parsePemCertificates, parsePrivateKeyPem } from '../pki/pem.ts';
import { isHttpUrl } from '../pki/ocsp/request.ts';
import {
  Config,
  type CrlSource,
  type LdapProfile,
  type Listener,
  type MailFlowPolicy,
  type SmtpAuthProfile,
} from './schemas.ts';

export interface ValidationIssue {
  field: string;
  message: string;
}

/** The named collections of a configuration (everything but the CRL and OCSP settings). */
export const COLLECTIONS = ['ldapProfiles', 'smtpAuthProfiles', 'mailFlowPolicies', 'listeners', 'crlSources'] as const;
export type Collection = (typeof COLLECTIONS)[number];

export const COLLECTION_LABELS: Record<Collection, string> = {
  ldapProfiles: 'LDAP profile',
  smtpAuthProfiles: 'SMTP auth profile',
  mailFlowPolicies: 'mail flow policy',
  listeners: 'listener',
  crlSources: 'CRL source',
};

/** Tokens each kind of query may use: `{t}` anywhere, the rest by what the query is about. */

/** Schedules more frequent than this would hammer CRL distribution points (as `everySeconds ≥ 60`). */
const MIN_CRL_INTERVAL_MS = 60_000;

/**
 * Every problem found in `config`, empty when it is usable. Schema violations are
 * reported first; semantic checks run only on a schema-valid configuration because
 * they rely on its shape.
 */
export function validateConfig(config: unknown): ValidationIssue[] {
  if (!Value.Check(Config, config)) {
    // An unknown property is reported twice: as `additionalProperties` on its parent and as
    // the `false` schema it met, which names it; keep the latter.
    return Value.Errors(Config, config)
      .filter((e) => e.keyword !== 'additionalProperties')
      .map((e) => ({ field: namedPath(config, e.instancePath), message: e.keyword === 'boolean' ? 'is not a known property' : e.message }));
  }
  const v = new Validator(config);
  v.run();
  return v.issues;
}

/** Rewrites `/listeners/3/port` as `/listeners/<name of the 4th listener>/port` when it can. */
function namedPath(config: unknown, instancePath: string): string {
  const [, collection, index, ...rest] = instancePath.split('/');
  const items = (config as Record<string, unknown> | null)?.[collection ?? ''];
  const item = Array.isArray(items) ? (items[Number(index)] as { name?: unknown } | undefined) : undefined;
  if (typeof item?.name !== 'string' || item.name === '') return instancePath;
  return ['', collection, item.name, ...rest].join('/');
}

/** Which resources refer to `name` of `collection` ("listener submission", ...): they block its deletion. */
export function findReferences(config: Config, collection: Collection, name: string): string[] {
  const refs: string[] = [];
  const add = (kind: Collection, by: string) => refs.push(`${COLLECTION_LABELS[kind]} ${by}`);
  if (collection === 'ldapProfiles') {
    for (const a of config.smtpAuthProfiles) if (a.ldapProfile === name) add('smtpAuthProfiles', a.name);
  }
  if (collection === 'smtpAuthProfiles') {
    for (const a of config.smtpAuthProfiles) if (a.type === 'certificate' && a.fallbackProfile === name) add('smtpAuthProfiles', a.name);
    for (const l of config.listeners) if (l.smtpAuthProfile === name) add('listeners', l.name);
  }
  if (collection === 'mailFlowPolicies') {
    for (const l of config.listeners) if (policiesOf(l).includes(name)) add('listeners', l.name);
  }
  return refs;
}

/** Names of the policies a listener can apply: its default and those of its sender groups. */
function policiesOf(listener: Listener): string[] {
  return [...new Set([listener.defaultPolicy, ...listener.senderGroups.map((g) => g.policy)])];
}

class Validator {
  readonly issues: ValidationIssue[] = [];
  private readonly ldapProfiles: Map<string, LdapProfile>;
  private readonly authProfiles: Map<string, SmtpAuthProfile>;
  private readonly policies: Map<string, MailFlowPolicy>;

  constructor(private readonly config: Config) {
    this.ldapProfiles = byName(config.ldapProfiles);
    this.authProfiles = byName(config.smtpAuthProfiles);
    this.policies = byName(config.mailFlowPolicies);
  }

  run(): void {
    for (const collection of COLLECTIONS) this.uniqueNames(collection);
    for (const p of this.config.ldapProfiles) this.ldapProfile(p);
    for (const a of this.config.smtpAuthProfiles) this.authProfile(a);
    for (const m of this.config.mailFlowPolicies) this.policy(m);
    for (const l of this.config.listeners) this.listener(l);
    this.listenerAddressesDistinct();
    for (const c of this.config.crlSources) this.crlSource(c);
    this.certificates('/crlSettings/trustedCaPem', this.config.crlSettings.trustedCaPem);
    this.ocspSettings();
  }

  private add(field: string, message: string): void {
    this.issues.push({ field, message });
  }

  private uniqueNames(collection: Collection): void {
    const seen = new Set<string>();
    for (const { name } of this.config[collection]) {
      if (seen.has(name)) this.add(`/${collection}/${name}/name`, `duplicate ${COLLECTION_LABELS[collection]} name "${name}"`);
      seen.add(name);
    }
  }

  // -------------------------------------------------------------- LDAP profiles
  private ldapProfile(p: LdapProfile): void {
    const at = `/ldapProfiles/${p.name}`;
    p.hosts.forEach((host, i) => {
      const port = /:([0-9]+)\/?$/.exec(host)?.[1];
      if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) this.add(`${at}/hosts/${i}`, `port ${port} is out of range 1-65535`);
      if (p.startTls && host.startsWith('ldaps:')) this.add(`${at}/hosts/${i}`, 'startTls cannot be combined with an ldaps:// host (it is TLS already)');
    });
    this.certificates(`${at}/caPem`, p.caPem);
    if (p.certificateQuery) this.query(`${at}/certificateQuery/query`, p.certificateQuery.query, CERTIFICATE_TOKENS, 'a certificate query');
    if (p.smtpAuthQuery) {
      this.query(`${at}/smtpAuthQuery/query`, p.smtpAuthQuery.query, SMTP_AUTH_TOKENS, 'an SMTP auth query');
      if (p.smtpAuthQuery.allowQuery !== null) {
        this.query(`${at}/smtpAuthQuery/allowQuery`, p.smtpAuthQuery.allowQuery, SMTP_AUTH_TOKENS, 'an SMTP auth query');
      }
    }
  }

  private query(field: string, template: string, allowed: readonly QueryToken[], what: string): void {
    const syntax = checkFilterTemplate(template);
    if (syntax !== null) return this.add(field, syntax);
    // Tokens never nest, so `{name}` occurring in the text is exactly a use of that token.
    const misplaced = QUERY_TOKENS.filter((t) => !allowed.includes(t) && template.includes(`{${t}}`));
    if (misplaced.length > 0) {
      this.add(field, `${misplaced.map((t) => `{${t}}`).join(', ')} cannot be used in ${what} (allowed: ${allowed.map((t) => `{${t}}`).join(' ')})`);
    }
  }

  // -------------------------------------------------------------- SMTP auth profiles
  private authProfile(a: SmtpAuthProfile): void {
    const at = `/smtpAuthProfiles/${a.name}`;
    const ldap = this.ldapProfiles.get(a.ldapProfile);
    if (!ldap) {
      this.add(`${at}/ldapProfile`, `LDAP profile "${a.ldapProfile}" does not exist`);
    } else if (a.type === 'ldap') {
      if (!ldap.smtpAuthQuery) this.add(`${at}/ldapProfile`, `LDAP profile "${a.ldapProfile}" has no smtpAuthQuery, which an ldap auth profile needs`);
      else if (a.checkWithLdap && ldap.smtpAuthQuery.allowQuery === null) {
        this.add(`${at}/checkWithLdap`, `LDAP profile "${a.ldapProfile}" has no smtpAuthQuery.allowQuery to check with`);
      }
    } else if (!ldap.certificateQuery) {
      this.add(`${at}/ldapProfile`, `LDAP profile "${a.ldapProfile}" has no certificateQuery, which a certificate auth profile needs`);
    }
    if (a.type !== 'certificate') return;
    if (a.fallbackProfile !== null) {
      const fallback = this.authProfiles.get(a.fallbackProfile);
      if (!fallback) this.add(`${at}/fallbackProfile`, `SMTP auth profile "${a.fallbackProfile}" does not exist`);
      else if (fallback.type !== 'ldap') this.add(`${at}/fallbackProfile`, `SMTP auth profile "${a.fallbackProfile}" is of type ${fallback.type}; a fallback must be of type ldap`);
    } else if (a.allowSmtpAuthWithoutCertificate) {
      this.add(`${at}/fallbackProfile`, 'allowSmtpAuthWithoutCertificate needs a fallbackProfile of type ldap');
    }
  }

  // -------------------------------------------------------------- mail flow policies
  private policy(m: MailFlowPolicy): void {
    if (m.tls !== 'off') return;
    for (const flag of ['verifyClientCertificate', 'smtpAuthRequiresTls'] as const) {
      if (m[flag]) this.add(`/mailFlowPolicies/${m.name}/${flag}`, `${flag} needs tls "preferred" or "required", not "off"`);
    }
  }

  // -------------------------------------------------------------- listeners
  private listener(l: Listener): void {
    const at = `/listeners/${l.name}`;
    if (isIP(l.address) === 0) this.add(`${at}/address`, `"${l.address}" is not an IPv4 or IPv6 address`);

    const authProfile = l.smtpAuthProfile === null ? undefined : this.authProfiles.get(l.smtpAuthProfile);
    if (l.smtpAuthProfile !== null && !authProfile) this.add(`${at}/smtpAuthProfile`, `SMTP auth profile "${l.smtpAuthProfile}" does not exist`);
    if (!this.policies.has(l.defaultPolicy)) this.add(`${at}/defaultPolicy`, `mail flow policy "${l.defaultPolicy}" does not exist`);

    const groupNames = new Set<string>();
    l.senderGroups.forEach((g, i) => {
      if (groupNames.has(g.name)) this.add(`${at}/senderGroups/${i}/name`, `duplicate sender group name "${g.name}"`);
      groupNames.add(g.name);
      if (!this.policies.has(g.policy)) this.add(`${at}/senderGroups/${i}/policy`, `mail flow policy "${g.policy}" does not exist`);
      g.senders.forEach((cidr, j) => {
        try {
          parseCidr(cidr);
        } catch (err) {
          this.add(`${at}/senderGroups/${i}/senders/${j}`, (err as Error).message);
        }
      });
    });

    l.proxyProtocol?.trustedProxies.forEach((cidr, j) => {
      try {
        parseCidr(cidr);
      } catch (err) {
        this.add(`${at}/proxyProtocol/trustedProxies/${j}`, (err as Error).message);
      }
    });

    const policies = policiesOf(l).flatMap((n) => this.policies.get(n) ?? []);
    const tlsPolicy = policies.find((p) => p.tls !== 'off');
    const tlsReason = l.implicitTls ? 'implicitTls' : tlsPolicy && `mail flow policy "${tlsPolicy.name}" (tls: ${tlsPolicy.tls})`;
    const verifying = policies.find((p) => p.verifyClientCertificate);
    const clientCaReason = verifying
      ? `mail flow policy "${verifying.name}" (verifyClientCertificate)`
      : authProfile?.type === 'certificate' && `SMTP auth profile "${authProfile.name}" (type certificate)`;

    if (!l.tls) {
      if (tlsReason) this.add(`${at}/tls`, `a TLS certificate and key are required by ${tlsReason}`);
      else if (clientCaReason) this.add(`${at}/tls`, `TLS with a clientCaPem is required by ${clientCaReason}`);
    } else {
      this.listenerTls(at, l.tls);
      if (clientCaReason && l.tls.clientCaPem === null) this.add(`${at}/tls/clientCaPem`, `a client CA is required by ${clientCaReason}`);
    }
    this.certificates(`${at}/nextHop/caPem`, l.nextHop.caPem);
  }

  private listenerTls(at: string, tls: NonNullable<Listener['tls']>): void {
    const certificateOk = this.certificates(`${at}/tls/certificatePem`, tls.certificatePem);
    this.certificates(`${at}/tls/clientCaPem`, tls.clientCaPem);
    if (tls.privateKeyPem == null) return this.add(`${at}/tls/privateKeyPem`, 'a private key is required with a certificate');
    try {
      parsePrivateKeyPem(tls.privateKeyPem);
    } catch (err) {
      return this.add(`${at}/tls/privateKeyPem`, `not a usable private key: ${(err as Error).message}`);
    }
    if (certificateOk && !keyMatchesCertificate(tls.privateKeyPem, tls.certificatePem)) {
      this.add(`${at}/tls/privateKeyPem`, 'the private key does not match the certificate');
    }
  }

  /** Two enabled listeners cannot bind the same port on overlapping addresses. */
  private listenerAddressesDistinct(): void {
    const enabled = this.config.listeners.filter((l) => l.enabled && isIP(l.address) !== 0);
    enabled.forEach((l, i) => {
      const clash = enabled.slice(0, i).find((o) => o.port === l.port && addressesOverlap(o.address, l.address));
      if (clash) this.add(`/listeners/${l.name}/port`, `${l.address} port ${l.port} is already used by listener "${clash.name}" (${clash.address})`);
    });
  }

  // -------------------------------------------------------------- CRL sources
  private crlSource(c: CrlSource): void {
    const at = `/crlSources/${c.name}`;
    for (const field of ['primaryUrl', 'secondaryUrl'] as const) {
      const url = c[field];
      if (url !== null && !URL.canParse(url)) this.add(`${at}/${field}`, `"${url}" is not a valid URL`);
    }
    if ('cron' in c.schedule) {
      const problem = cronProblem(c.schedule.cron);
      if (problem) this.add(`${at}/schedule/cron`, problem);
    }
  }

  // -------------------------------------------------------------- OCSP settings
  private ocspSettings(): void {
    const { responderUrl, responderCaPem } = this.config.ocspSettings;
    if (responderUrl !== null && !isHttpUrl(responderUrl)) this.add('/ocspSettings/responderUrl', `"${responderUrl}" is not a valid http: URL`);
    this.certificates('/ocspSettings/responderCaPem', responderCaPem);
  }

  /** Checks a PEM bundle of certificates; true when it parses (or is absent). */
  private certificates(field: string, pem: string | null): boolean {
    if (pem === null) return true;
    try {
      if (parsePemCertificates(pem).length === 0) throw new Error('no certificate found');
      return true;
    } catch (err) {
      this.add(field, `not a valid PEM certificate bundle: ${(err as Error).message}`);
      return false;
    }
  }
}

function byName<T extends { name: string }>(items: T[]): Map<string, T> {
  return new Map(items.map((i) => [i.name, i]));
}

/** Same address, or a wildcard that covers the other (`0.0.0.0` all IPv4, `::` everything on a dual-stack host). */
function addressesOverlap(a: string, b: string): boolean {
  if (a === b || a === '::' || b === '::') return true;
  return (a === '0.0.0.0' && isIP(b) === 4) || (b === '0.0.0.0' && isIP(a) === 4);
}

/** Why a cron expression is unusable for a CRL schedule, or null. Parsed as BullMQ parses it. */
function cronProblem(expression: string): string | null {
  let next: Date[];
  try {
    next = CronExpressionParser.parse(expression, { tz: 'UTC' }).take(6).map((d) => d.toDate());
  } catch (err) {
    return `invalid cron expression: ${(err as Error).message}`;
  }
  const shortest = Math.min(...next.slice(1).map((d, i) => d.getTime() - (next[i] as Date).getTime()));
  if (shortest < MIN_CRL_INTERVAL_MS) return `fires every ${shortest / 1000} s; CRL downloads may run at most once a minute`;
  return null;
}
