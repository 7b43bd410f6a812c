// The configuration store: the whole configuration is ONE JSON document at `keys.config`
// (version included), so every write is atomic and every reader sees one consistent
// version. Writers use an optimistic transaction:
//
//   WATCH config → GET → change(config) → validateConfig(whole result)
//   → MULTI SET config, PUBLISH configChannel <version>, XADD audit → EXEC
//
// and retry when EXEC reports that another process wrote in between.
//
// WATCH state belongs to a connection, not to a caller: updates through one connection
// run one at a time, and the connection given to updateConfig must not be used for other
// MULTI/WATCH work meanwhile (the API gives the store a connection of its own). WATCH then
// only has to catch writers in other processes.
//
// Store identity (SPEC §1 "Redis unreachable"). A worker must never apply an older
// version of the store it runs from (a failover to a replica that missed the last
// writes), nor the empty store that Redis leaves when it loses its data; but it must
// apply what the API writes into that empty store afterwards (an import), although its
// version starts low again. So the document carries `store`, a random id chosen by the
// write that finds the key missing and kept by every later write: versions compare only
// within one store id, and a new id is a new store. A document written before the id
// existed has none (""); its next write gives it one.
//
// The document starts with `{"version":N,"store":"<id>"` (written in that order), so a
// follower can learn what is stored from its first bytes (GETRANGE) without fetching and
// parsing the whole document when nothing changed: `readHeader`.
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { Value } from 'typebox/value';
import { keys } from '../redis/keys.ts';
import { Config, EMPTY_CONFIG, type VersionedConfig } from './schemas.ts';
import { validateConfig, type ValidationIssue } from './validate.ts';
import { auditXaddArgs, type NewAuditEntry } from './audit.ts';

/** The caller's If-Match did not name the current version (HTTP 412). */
export class ConfigVersionMismatchError extends Error {
  constructor(
    readonly expected: number,
    readonly actual: number,
  ) {
    super(`configuration version is ${actual}, not ${expected}`);
  }
}

/** The configuration the change would produce is not usable (HTTP 400). */
export class ConfigValidationError extends Error {
  constructor(readonly issues: ValidationIssue[]) {
    super(issues.map((i) => `${i.field}: ${i.message}`).join('; '));
  }
}

/** The stored document is not a configuration this code can use. */
export class StoredConfigInvalidError extends Error {}

/** Other processes kept writing; the change was not applied (HTTP 409, safe to retry). */
export class ConfigConflictError extends Error {}

const MAX_ATTEMPTS = 10;

/** A stored configuration with the id of its store: "" for a document older than store ids, null for an empty store. */
export interface StoredConfig {
  store: string | null;
  config: VersionedConfig;
}

/** What the first bytes of the document say; `store` null with version 0: the key is missing. */
export interface StoredHeader {
  store: string | null;
  version: number;
}

export async function loadConfig(redis: Redis): Promise<VersionedConfig> {
  return (await loadStoredConfig(redis)).config;
}

export async function loadStoredConfig(redis: Redis): Promise<StoredConfig> {
  return parseStored(await redis.get(keys.config));
}

const HEADER_BYTES = 128;
const HEADER = /^\{"version":([0-9]{1,15}),"store":"([0-9a-f-]{1,64})"/;

/** The stored version and store id from the document's first bytes; null when they do not say (an older document). */
export async function readHeader(redis: Redis): Promise<StoredHeader | null> {
  const head = await redis.getrange(keys.config, 0, HEADER_BYTES - 1);
  if (head === '') return { store: null, version: 0 };
  const m = HEADER.exec(head);
  return m ? { version: Number(m[1]), store: m[2] } : null;
}

/**
 * Parses the stored document. Defaults are applied first so that a document written
 * before a field with a default existed still loads complete.
 */
export function parseStored(raw: string | null): StoredConfig {
  if (raw === null) return { store: null, config: { version: 0, ...structuredClone(EMPTY_CONFIG) } };
  let document: Record<string, unknown>;
  try {
    document = JSON.parse(raw) as Record<string, unknown>;
  } catch (err) {
    throw new StoredConfigInvalidError(`stored configuration at ${keys.config} is not JSON: ${(err as Error).message}`);
  }
  const { version, store = '', ...config } = document;
  Value.Default(Config, config);
  if (typeof version !== 'number' || typeof store !== 'string' || !Value.Check(Config, config)) {
    const issues = validateConfig(config).slice(0, 3);
    throw new StoredConfigInvalidError(`stored configuration at ${keys.config} is invalid: ${issues.map((i) => `${i.field} ${i.message}`).join('; ') || 'no version'}`);
  }
  return { store, config: { version, ...config } };
}

export interface UpdateOptions {
  /** Apply only if the stored version is this one (If-Match). */
  expectedVersion?: number;
  /** Change-log entry written in the same transaction; the new version is filled in. */
  audit?: Omit<NewAuditEntry, 'version'>;
  /**
   * The new version is above this one too: the highest version a running worker reports.
   * After a failover lost the last writes, the store's version is below what workers run,
   * and they refuse it; the next write then jumps above theirs and reaches them.
   */
  versionFloor?: number;
}

/**
 * Applies a pure change to the stored configuration and returns the version written.
 * `redis` must not run other MULTI/WATCH work meanwhile (see the top of this file).
 * `change` may run more than once (on a conflict) and may throw to refuse the change;
 * its error then reaches the caller unchanged.
 */
export async function updateConfig(redis: Redis, change: (c: Config) => Config, opts: UpdateOptions = {}): Promise<VersionedConfig> {
  return (await updateStoredConfig(redis, change, opts)).config;
}

/** updateConfig, answering the store id too. */
export async function updateStoredConfig(redis: Redis, change: (c: Config) => Config, opts: UpdateOptions = {}): Promise<StoredConfig> {
  return oneAtATime(redis, async () => {
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const written = await attemptUpdate(redis, change, opts);
      if (written) return written;
      await new Promise((r) => setTimeout(r, Math.random() * 10 * attempt));
    }
    throw new ConfigConflictError(`the configuration changed ${MAX_ATTEMPTS} times while this change was applied; retry`);
  });
}

/** One optimistic attempt; null when another writer got in between. */
async function attemptUpdate(conn: Redis, change: (c: Config) => Config, opts: UpdateOptions): Promise<StoredConfig | null> {
  await conn.watch(keys.config);
  let stored: VersionedConfig;
  let store: string;
  try {
    const before = parseStored(await conn.get(keys.config));
    const { version, ...current } = before.config;
    // A missing key (or a document from before store ids) starts a new store.
    store = before.store || randomUUID();
    if (opts.expectedVersion !== undefined && opts.expectedVersion !== version) {
      throw new ConfigVersionMismatchError(opts.expectedVersion, version);
    }
    const next = change(current);
    const issues = validateConfig(next);
    if (issues.length > 0) throw new ConfigValidationError(issues);
    stored = { version: Math.max(version, opts.versionFloor ?? 0) + 1, ...next };
  } catch (err) {
    await conn.unwatch().catch(() => undefined); // the connection may be what failed
    throw err;
  }
  const { version, ...config } = stored;
  const document = JSON.stringify({ version, store, ...config }); // this order: see readHeader
  const tx = conn.multi().set(keys.config, document).publish(keys.configChannel, String(stored.version));
  if (opts.audit) tx.xadd(...auditXaddArgs({ ...opts.audit, version: stored.version }));
  const results = await tx.exec();
  if (results === null) return null;
  const failed = results.find(([err]) => err);
  if (failed) throw failed[0];
  return { store, config: stored };
}

/** The end of the queue of updates on each connection. */
const queues = new WeakMap<Redis, Promise<unknown>>();

function oneAtATime<T>(redis: Redis, fn: () => Promise<T>): Promise<T> {
  const run = (queues.get(redis) ?? Promise.resolve()).then(fn, fn);
  queues.set(redis, run.catch(() => undefined));
  return run;
}
