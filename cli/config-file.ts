// Configuration as code: the file `certgate config apply` reads is the whole configuration
// (SPEC §2.7 `PUT /v1/config`), in YAML or JSON, kept under version control. Secrets are not
// written in it but referred to:
//
//   bind: { dn: "cn=admin,dc=example,dc=com", password: { $env: LDAP_BIND_PASSWORD } }
//   tls:  { certificatePem: { $file: pki/server.pem }, privateKeyPem: { $file: /run/secrets/smtp.key } }
//
// Any string value may be such a reference: `{ $env: NAME }` is the environment variable
// (unset is an error, never an empty secret), `{ $file: PATH }` the file's content (PATH
// relative to the configuration file; a one-line file loses its line end, as password
// files written by `echo` have one). A secret left out keeps the stored one (the API's
// rule); `null` clears it.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import YAML from 'yaml';
import type { Schemas } from './api.ts';
import { CliError, EXIT } from './output.ts';

export type Config = Schemas['Config'];
export type ConfigExport = Schemas['ConfigExport'];

/** A value given by reference, and where in the configuration it went. */
export interface Reference {
  /** JSON-pointer-like location, e.g. `ldapProfiles/corp/bind/password`. */
  at: string;
  source: string;
}

export interface ConfigFile {
  config: Config;
  references: Reference[];
}

/** Reads, parses (YAML 1.2, so JSON too) and resolves the references of a configuration file. */
export async function readConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CliError(EXIT.usage, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const parsed = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (parsed.errors.length > 0) throw new CliError(EXIT.usage, `${file}: ${parsed.errors[0]?.message}`);
  const value: unknown = parsed.toJS();
  if (!isObject(value)) throw new CliError(EXIT.usage, `${file}: the configuration must be an object with ldapProfiles, listeners, ...`);
  const { version: _exportedVersion, ...rest } = value;
  const references: Reference[] = [];
  const config = (await resolve(rest, [], { dir: path.dirname(path.resolve(file)), env, references })) as Config;
  return { config, references };
}

interface ResolveContext {
  dir: string;
  env: NodeJS.ProcessEnv;
  references: Reference[];
}

async function resolve(value: unknown, at: string[], ctx: ResolveContext): Promise<unknown> {
  if (Array.isArray(value)) {
    // One after the other: references are listed in file order.
    const out: unknown[] = [];
    for (const [i, v] of value.entries()) out.push(await resolve(v, [...at, itemKey(v, i)], ctx));
    return out;
  }
  if (!isObject(value)) return value;
  const keys = Object.keys(value);
  const where = at.join('/');
  if (keys.some((k) => k.startsWith('$'))) {
    if (keys.length !== 1 || (keys[0] !== '$env' && keys[0] !== '$file') || typeof value[keys[0]] !== 'string') {
      throw new CliError(EXIT.usage, `${where}: a reference is { $env: NAME } or { $file: PATH }, got ${JSON.stringify(value)}`);
    }
    const name = value[keys[0]] as string;
    if (keys[0] === '$env') {
      const v = ctx.env[name];
      if (v === undefined || v === '') throw new CliError(EXIT.usage, `${where}: environment variable ${name} is not set`);
      ctx.references.push({ at: where, source: `$env ${name}` });
      return v;
    }
    const file = path.resolve(ctx.dir, name);
    let content: string;
    try {
      content = await readFile(file, 'utf8');
    } catch (err) {
      throw new CliError(EXIT.usage, `${where}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    ctx.references.push({ at: where, source: `$file ${name}` });
    return /^[^\n]*\r?\n?$/.test(content) ? content.replace(/\r?\n$/, '') : content;
  }
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k] = await resolve(value[k], [...at, k], ctx);
  return out;
}

/** Items of the resource collections are named by their name, not their position. */
function itemKey(item: unknown, index: number): string {
  return isObject(item) && typeof item.name === 'string' ? item.name : String(index);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Read-only flags the API returns in place of write-only secrets (SPEC §2): an exported
 * file leaves them out, so that applying it unchanged keeps every stored secret.
 */
const READ_ONLY_FLAGS = [
  { collection: 'ldapProfiles', parent: 'bind', flag: 'passwordSet' },
  { collection: 'listeners', parent: 'tls', flag: 'privateKeySet' },
] as const satisfies ReadonlyArray<{ collection: keyof Config; parent: string; flag: string }>;

/** The export as a configuration file: no version, no read-only flags. */
export function toConfigFile(exported: ConfigExport): Config {
  const { version: _version, ...config } = exported;
  const copy = structuredClone(config) as unknown as Record<string, Array<Record<string, unknown>>>;
  for (const { collection, parent, flag } of READ_ONLY_FLAGS) {
    for (const item of copy[collection] ?? []) {
      const holder = item[parent];
      if (isObject(holder)) delete holder[flag];
    }
  }
  return copy as unknown as Config;
}

/** YAML (with a header saying where it came from) or JSON text of a configuration file. */
export function formatConfigFile(config: Config, format: 'yaml' | 'json', origin: { url: string; version: number }): string {
  if (format === 'json') return `${JSON.stringify(config, null, 2)}\n`;
  const header = [
    `# certgate configuration exported from ${origin.url} at version ${origin.version}.`,
    '# Secrets are not exported: add them as { $env: NAME } or { $file: PATH } references',
    '# (left out, `certgate config apply` keeps the stored ones).',
  ].join('\n');
  return `${header}\n${YAML.stringify(config, { lineWidth: 0 })}`;
}
