// The configuration version as seen over HTTP: every response about the configuration
// carries `ETag: "<version>"`, and a write with `If-Match: "<version>"` is applied only if
// nobody changed the configuration since that version (412 otherwise).
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { ConfigValidationError, ConfigVersionMismatchError, updateStoredConfig } from '../shared/config/store.ts';
import { validateConfig } from '../shared/config/validate.ts';
import { listWorkers } from '../shared/status/workers.ts';
import type { NewAuditEntry } from '../shared/config/audit.ts';
import type { Config, VersionedConfig } from '../shared/config/schemas.ts';
import type { ConfigCache } from './config-cache.ts';
import { principalOf } from './auth.ts';
import { preconditionFailed } from './errors.ts';

export function setVersion(reply: FastifyReply, version: number): void {
  void reply.header('etag', `"${version}"`);
}

/** The version `If-Match` requires, or undefined when any will do (absent or `*`). */
function requiredVersion(request: FastifyRequest): number | undefined {
  const header = request.headers['if-match']?.trim();
  if (header === undefined || header === '*') return undefined;
  const match = /^"([0-9]{1,15})"$|^([0-9]{1,15})$/.exec(header);
  if (!match) throw preconditionFailed(`If-Match must be a configuration version as sent in ETag, like "12"; got ${header}`);
  return Number(match[1] ?? match[2]);
}

export interface ConfigWriter {
  /**
   * Applies `change` for this request: honours If-Match, audits it under the caller's
   * token, sets the ETag of the new version and returns what was written.
   */
  (request: FastifyRequest, reply: FastifyReply, change: (c: Config) => Config, audit: Pick<NewAuditEntry, 'kind' | 'name' | 'action'>): Promise<VersionedConfig>;
}

/** `transactions`: a connection for the store's WATCH/MULTI only; `redis`: for everything else. */
export function configWriter(transactions: Redis, redis: Redis, cache: ConfigCache): ConfigWriter {
  return async (request, reply, change, audit) => {
    // Above what any running worker runs: after a failover that lost writes they refuse lower versions.
    const versionFloor = Math.max(0, ...(await listWorkers(redis)).map((w) => w.configVersion));
    const written = await updateStoredConfig(transactions, change, {
      expectedVersion: requiredVersion(request),
      audit: { ...audit, token: principalOf(request).name },
      versionFloor,
    });
    cache.offer(written);
    setVersion(reply, written.config.version);
    return written.config;
  };
}

/**
 * A dry run of a write: the same If-Match check and validation, nothing stored, nothing
 * audited. Answers the configuration as the write would store it, with the version it
 * would replace (also the ETag), so that the caller can apply exactly what it previewed.
 */
export async function previewConfig(request: FastifyRequest, reply: FastifyReply, cache: ConfigCache, change: (c: Config) => Config): Promise<VersionedConfig> {
  const { version, ...current } = await cache.get();
  const expected = requiredVersion(request);
  if (expected !== undefined && expected !== version) throw new ConfigVersionMismatchError(expected, version);
  const next = change(current);
  const issues = validateConfig(next);
  if (issues.length > 0) throw new ConfigValidationError(issues);
  setVersion(reply, version);
  return { version, ...next };
}
