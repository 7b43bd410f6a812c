// What applying a configuration file would change: resources matched by name across the
// configuration in force and the one the API previews for the file (defaults filled in,
// secrets merged and redacted alike on both sides), field by field. Pure: no I/O.
//
// Order of the resource collections is not a change (resources refer to each other by
// name); order inside a resource is (sender groups are matched in order). Secrets cannot be
// compared (they are write-only): the references that set them are listed apart.
import { createHash } from 'node:crypto';
import type { Config } from './config-file.ts';

export const COLLECTIONS = ['ldapProfiles', 'smtpAuthProfiles', 'mailFlowPolicies', 'listeners', 'crlSources'] as const;
type Collection = (typeof COLLECTIONS)[number];
/** Every other top-level field of the configuration is one settings object. */
type Singleton = Exclude<keyof Config, Collection>;

export interface FieldChange {
  /** e.g. `hosts`, `bind/dn`, `nextHop/port` */
  field: string;
  before: unknown;
  after: unknown;
}

export interface ResourceChange {
  action: 'add' | 'remove' | 'change';
  /** A resource collection, or a settings singleton (`crlSettings`, `ocspSettings`). */
  collection: Collection | Singleton;
  /** null for a settings singleton */
  name: string | null;
  fields: FieldChange[];
}

type Item = { name: string } & Record<string, unknown>;

export function diffConfigs(current: Config, next: Config): ResourceChange[] {
  const changes: ResourceChange[] = [];
  for (const collection of COLLECTIONS) {
    const before = new Map((current[collection] as Item[]).map((i) => [i.name, i]));
    const after = new Map((next[collection] as Item[]).map((i) => [i.name, i]));
    for (const [name, item] of before) {
      if (!after.has(name)) changes.push({ action: 'remove', collection, name, fields: fieldsOf(item, undefined) });
    }
    for (const [name, item] of after) {
      const old = before.get(name);
      if (!old) changes.push({ action: 'add', collection, name, fields: fieldsOf(undefined, item) });
      else {
        const fields = fieldsOf(old, item);
        if (fields.length > 0) changes.push({ action: 'change', collection, name, fields });
      }
    }
  }
  const singletons = new Set([...Object.keys(current), ...Object.keys(next)].filter((k) => !(COLLECTIONS as readonly string[]).includes(k))) as Set<Singleton>;
  for (const key of singletons) {
    const fields = fieldsOf(current[key] ?? {}, next[key] ?? {});
    if (fields.length > 0) changes.push({ action: 'change', collection: key, name: null, fields });
  }
  return changes;
}

/** Leaf differences; an added or removed resource lists its top-level fields. */
function fieldsOf(before: unknown, after: unknown, prefix = ''): FieldChange[] {
  if (before === undefined || after === undefined) {
    const whole = (before ?? after) as Record<string, unknown>;
    return Object.keys(whole)
      .filter((k) => k !== 'name')
      .map((k) => ({ field: k, before: before === undefined ? undefined : whole[k], after: after === undefined ? undefined : whole[k] }));
  }
  if (isPlainObject(before) && isPlainObject(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
    return keys.flatMap((k) => {
      const field = prefix ? `${prefix}/${k}` : k;
      const [b, a] = [before[k], after[k]];
      if (isPlainObject(b) && isPlainObject(a)) return fieldsOf(b, a, field);
      return same(b, a) ? [] : [{ field, before: b, after: a }];
    });
  }
  return same(before, after) ? [] : [{ field: prefix, before, after }];
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

/** Object keys sorted, so that key order is never a difference. */
function canonical(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonical);
  if (isPlainObject(v)) return Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]));
  return v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const LABELS: Partial<Record<ResourceChange['collection'], string>> = {
  ldapProfiles: 'LDAP profile',
  smtpAuthProfiles: 'SMTP auth profile',
  mailFlowPolicies: 'mail flow policy',
  listeners: 'listener',
  crlSources: 'CRL source',
  crlSettings: 'CRL settings',
  ocspSettings: 'OCSP settings',
};

const SIGN = { add: '+', remove: '-', change: '~' } as const;

/** The changes as a person reads them: one line per resource, one indented line per field. */
export function renderChanges(changes: readonly ResourceChange[]): string[] {
  const lines: string[] = [];
  for (const c of changes) {
    lines.push(`${SIGN[c.action]} ${LABELS[c.collection] ?? c.collection}${c.name === null ? '' : ` ${c.name}`}`);
    for (const f of c.fields) {
      if (c.action === 'change') lines.push(`    ${f.field}: ${show(f.before)} → ${show(f.after)}`);
      else if (c.action === 'add') lines.push(`    ${f.field}: ${show(f.after)}`);
    }
  }
  return lines;
}

/** A value on one line: long and multi-line text (PEM) by size and digest, not in full. */
export function show(v: unknown): string {
  if (v === undefined) return '(unset)';
  if (typeof v === 'string') {
    if (v.length <= 72 && !v.includes('\n')) return JSON.stringify(v);
    const digest = createHash('sha256').update(v).digest('hex').slice(0, 12);
    const pem = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(v)?.[1];
    return pem ? `<PEM ${pem.toLowerCase()}, ${v.length} chars, sha256 ${digest}>` : `<text, ${v.length} chars, sha256 ${digest}>`;
  }
  const json = JSON.stringify(v, (_k, x: unknown) => (typeof x === 'string' && (x.length > 72 || x.includes('\n')) ? show(x) : x));
  return json.length > 200 ? `${json.slice(0, 197)}...` : json;
}
