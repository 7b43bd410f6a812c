// Write-only secrets (SPEC §2): bind passwords and listener private keys are stored but
// never returned. Reads replace the secret by a read-only `...Set` flag; a write that
// omits the secret keeps the stored one, `null` clears it. Both secrets sit one level
// down in an optional object (`bind`, `tls`), which is all this module has to know.
import type { Collection } from '../shared/config/validate.ts';
import type { Config } from '../shared/config/schemas.ts';

interface SecretField {
  /** Property holding the object that holds the secret. */
  parent: string;
  secret: string;
  /** Read-only flag returned instead of the secret. */
  flag: string;
}

const SECRET_FIELDS: Partial<Record<Collection, SecretField>> = {
  ldapProfiles: { parent: 'bind', secret: 'password', flag: 'passwordSet' },
  listeners: { parent: 'tls', secret: 'privateKeyPem', flag: 'privateKeySet' },
};

type Item = Record<string, unknown>;
const holderOf = (item: Item, f: SecretField) => item[f.parent] as Item | null | undefined;

/** A copy of `item` fit for a response: the secret replaced by its flag. */
export function redact<T extends object>(collection: Collection, item: T): T {
  const field = SECRET_FIELDS[collection];
  const holder = field && holderOf(item as Item, field);
  if (!field || !holder) return item;
  const { [field.secret]: secret, ...rest } = holder;
  return { ...item, [field.parent]: { ...rest, [field.flag]: typeof secret === 'string' } };
}

/**
 * The item to store for an incoming write: read-only flags dropped, an omitted secret
 * taken from `stored` (the item of that name before the write, if any), a `null` one
 * removed.
 */
export function mergeSecret<T extends object>(collection: Collection, incoming: T, stored: T | undefined): T {
  const field = SECRET_FIELDS[collection];
  const holder = field && holderOf(incoming as Item, field);
  if (!field || !holder) return incoming;
  const { [field.flag]: _flag, [field.secret]: given, ...rest } = holder;
  const kept = given === undefined && stored ? holderOf(stored as Item, field)?.[field.secret] : given;
  return { ...incoming, [field.parent]: typeof kept === 'string' ? { ...rest, [field.secret]: kept } : rest };
}

/** The whole configuration without secrets (`GET /v1/config`). */
export function redactConfig(config: Config): Config {
  const copy = { ...config };
  for (const collection of Object.keys(SECRET_FIELDS) as Collection[]) {
    (copy[collection] as object[]) = config[collection].map((item) => redact(collection, item));
  }
  return copy;
}

/** An imported configuration with secrets kept from the stored resources of the same names. */
export function mergeConfigSecrets(incoming: Config, stored: Config): Config {
  const merged = { ...incoming };
  for (const collection of Object.keys(SECRET_FIELDS) as Collection[]) {
    const before = new Map<string, object>(stored[collection].map((item) => [item.name, item]));
    (merged[collection] as object[]) = incoming[collection].map((item) => mergeSecret(collection, item, before.get(item.name)));
  }
  return merged;
}
