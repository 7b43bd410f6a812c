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

/** Other processes kept writing; the change was not applied (HTTP 409, safe to retry). */
export class ConfigConflictError extends Error {}

const MAX_ATTEMPTS = 10;

export async function loadConfig(redis: Redis): Promise<VersionedConfig> {
  return parseStored(await redis.get(keys.config));
}

/**
 * Parses the stored document. Defaults are applied first so that a document written
 * before a field with a default existed still loads complete.
 */
export function parseStored(raw: string | null): VersionedConfig {
  if (raw === null) return { version: 0, ...structuredClone(EMPTY_CONFIG) };
  const { version, ...config } = JSON.parse(raw) as Record<string, unknown>;
  Value.Default(Config, config);
  if (typeof version !== 'number' || !Value.Check(Config, config)) {
    const issues = validateConfig(config).slice(0, 3);
    throw new Error(`stored configuration at ${keys.config} is invalid: ${issues.map((i) => `${i.field} ${i.message}`).join('; ') || 'no version'}`);
  }
  return { version, ...config };
}

export interface UpdateOptions {
  /** Apply only if the stored version is this one (If-Match). */
  expectedVersion?: number;
  /** Change-log entry written in the same transaction; the new version is filled in. */
  audit?: Omit<NewAuditEntry, 'version'>;
}

/**
 * Applies a pure change to the stored configuration and returns the version written.
 * `redis` must not run other MULTI/WATCH work meanwhile (see the top of this file).
 * `change` may run more than once (on a conflict) and may throw to refuse the change;
 * its error then reaches the caller unchanged.
 */
export async function updateConfig(redis: Redis, change: (c: Config) => Config, opts: UpdateOptions = {}): Promise<VersionedConfig> {
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
async function attemptUpdate(conn: Redis, change: (c: Config) => Config, opts: UpdateOptions): Promise<VersionedConfig | null> {
  await conn.watch(keys.config);
  let stored: VersionedConfig;
  try {
    const { version, ...current } = parseStored(await conn.get(keys.config));
    if (opts.expectedVersion !== undefined && opts.expectedVersion !== version) {
      throw new ConfigVersionMismatchError(opts.expectedVersion, version);
    }
    const next = change(current);
    const issues = validateConfig(next);
    if (issues.length > 0) throw new ConfigValidationError(issues);
    stored = { version: version + 1, ...next };
  } catch (err) {
    await conn.unwatch().catch(() => undefined); // the connection may be what failed
    throw err;
  }
  const tx = conn.multi().set(keys.config, JSON.stringify(stored)).publish(keys.configChannel, String(stored.version));
  if (opts.audit) tx.xadd(...auditXaddArgs({ ...opts.audit, version: stored.version }));
  const results = await tx.exec();
  if (results === null) return null;
  const failed = results.find(([err]) => err);
  if (failed) throw failed[0];
  return stored;
}

/** The end of the queue of updates on each connection. */
const queues = new WeakMap<Redis, Promise<unknown>>();

function oneAtATime<T>(redis: Redis, fn: () => Promise<T>): Promise<T> {
  const run = (queues.get(redis) ?? Promise.resolve()).then(fn, fn);
  queues.set(redis, run.catch(() => undefined));
  return run;
}
