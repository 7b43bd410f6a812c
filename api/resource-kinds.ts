// The five configuration resources served under /v1 by the generic routes of
// resource-routes.ts: where each lives in the configuration, its URL and its schema.
import type { TSchema } from 'typebox';
import type { Redis } from 'ioredis';
import { readCrlStatus } from '../shared/pki/crl/stored.ts';
import type { Collection } from '../shared/config/validate.ts';
import { CrlSource, LdapProfile, Listener, MailFlowPolicy, SmtpAuthProfile, type CrlStatus } from '../shared/config/schemas.ts';
import { CrlSourceWithStatus } from './http-schemas.ts';

export interface ResourceKind {
  collection: Collection;
  /** URL segment under /v1, also the resource kind in the audit log. */
  path: string;
  /** Singular and plural PascalCase nouns for operation ids (`createLdapProfile`, `listLdapProfiles`). */
  noun: string;
  nouns: string;
  /** Words for the OpenAPI summaries: `Create an LDAP profile`, `List LDAP profiles` (the article goes by sound). */
  words: { one: string; many: string; article: 'a' | 'an' };
  /** Schema of one item; it has an `$id` (it is an OpenAPI component). */
  schema: TSchema;
  /** Extra read-only data `GET /{name}` adds to the item, with the schema of the result. */
  detail?: { schema: TSchema; load(redis: Redis, name: string): Promise<Record<string, unknown>> };
}

async function crlStatus(redis: Redis, name: string): Promise<{ status: CrlStatus }> {
  return { status: await readCrlStatus(redis, name) };
}

export const RESOURCE_KINDS: ResourceKind[] = [
  { collection: 'ldapProfiles', path: 'ldap-profiles', noun: 'LdapProfile', nouns: 'LdapProfiles', words: { one: 'LDAP profile', many: 'LDAP profiles', article: 'an' }, schema: LdapProfile },
  { collection: 'smtpAuthProfiles', path: 'smtp-auth-profiles', noun: 'SmtpAuthProfile', nouns: 'SmtpAuthProfiles', words: { one: 'SMTP auth profile', many: 'SMTP auth profiles', article: 'an' }, schema: SmtpAuthProfile },
  { collection: 'mailFlowPolicies', path: 'mail-flow-policies', noun: 'MailFlowPolicy', nouns: 'MailFlowPolicies', words: { one: 'mail flow policy', many: 'mail flow policies', article: 'a' }, schema: MailFlowPolicy },
  { collection: 'listeners', path: 'listeners', noun: 'Listener', nouns: 'Listeners', words: { one: 'listener', many: 'listeners', article: 'a' }, schema: Listener },
  {
    collection: 'crlSources',
    path: 'crl-sources',
    noun: 'CrlSource',
    nouns: 'CrlSources',
    words: { one: 'CRL source', many: 'CRL sources', article: 'a' },
    schema: CrlSource,
    detail: { schema: CrlSourceWithStatus, load: crlStatus },
  },
];
