// The configuration change log: who (token name) did what (action) to which resource,
// and which configuration version it produced. A capped Redis stream, newest last.
import { Type, type Static } from 'typebox';
import type { Redis } from 'ioredis';
import { keys } from '../redis/keys.ts';

export const AuditEntry = Type.Object(
  {
    id: Type.String({ description: 'Redis stream id' }),
    time: Type.String({ format: 'date-time' }),
    token: Type.String({ description: 'Name of the API token that made the change' }),
    kind: Type.String({ description: 'Resource kind as in the API path (listeners, config, tokens, ...)' }),
    name: Type.Union([Type.String(), Type.Null()], { description: 'Resource name; null for singletons' }),
    action: Type.Union([Type.Literal('create'), Type.Literal('replace'), Type.Literal('delete'), Type.Literal('import')]),
    version: Type.Union([Type.Integer(), Type.Null()], { description: 'Configuration version written; null for token changes' }),
  },
  { $id: 'AuditEntry' },
);
export type AuditEntry = Static<typeof AuditEntry>;
export type NewAuditEntry = Omit<AuditEntry, 'id' | 'time'>;

/** Enough history for an administrator; old entries are trimmed approximately (cheap). */
const AUDIT_MAX_LENGTH = 10_000;

/** XADD arguments for an entry, so a caller can put the append into its own MULTI. */
export function auditXaddArgs(entry: NewAuditEntry, now = new Date()): [string, 'MAXLEN', '~', number, '*', 'e', string] {
  return [keys.audit, 'MAXLEN', '~', AUDIT_MAX_LENGTH, '*', 'e', JSON.stringify({ time: now.toISOString(), ...entry })];
}

export async function appendAudit(redis: Redis, entry: NewAuditEntry): Promise<void> {
  await redis.xadd(...auditXaddArgs(entry));
}

/** The latest `limit` entries, newest first. */
export async function listAudit(redis: Redis, limit: number): Promise<AuditEntry[]> {
  const rows = await redis.xrevrange(keys.audit, '+', '-', 'COUNT', limit);
  return rows.map(([id, fields]) => ({ id, ...(JSON.parse(fields[1] ?? '{}') as Omit<AuditEntry, 'id'>) }));
}
