// How a CRL in force lives in Redis (SPEC §2.6): its DER at keys.crlData(source), written and
// read in 1 MiB slices, and its status JSON at keys.crlStatus(source). The writer is refresh.ts
// (the scheduler); the readers are the workers' store.ts and the API's CRL source routes. Both
// sides share this file so that neither imports the other.
import type { Redis } from 'ioredis';
import { joinChunks } from '../../util/buffers.ts';
import { keys } from '../../redis/keys.ts';
import type { CrlStatus } from '../../config/schemas.ts';

/** Large values go to and come from Redis in slices of this size (see `stage`). */
export const REDIS_SLICE = 1024 * 1024;
export const NEVER_ATTEMPTED: Readonly<CrlStatus> = Object.freeze({
  lastAttemptAt: null,
  lastError: null,
  lastSuccessAt: null,
  url: null,
  issuer: null,
  thisUpdate: null,
  nextUpdate: null,
  crlNumber: null,
  revokedCount: null,
  sha256: null,
  bytes: null,
});

/** The status of a source; all fields null when it was never attempted. */
export async function readCrlStatus(redis: Redis, name: string): Promise<CrlStatus> {
  return parseStatus(await redis.get(keys.crlStatus(name)));
}

/** A stored status JSON (or null) as a complete CrlStatus; unreadable JSON counts as never attempted. */
export function parseStatus(json: string | null): CrlStatus {
  if (json === null) return { ...NEVER_ATTEMPTED };
  try {
    const stored = JSON.parse(json) as Partial<CrlStatus>;
    const out: Record<string, unknown> = { ...NEVER_ATTEMPTED };
    for (const k of Object.keys(NEVER_ATTEMPTED)) if (k in stored) out[k] = stored[k as keyof CrlStatus];
    return out as CrlStatus;
  } catch {
    return { ...NEVER_ATTEMPTED };
  }
}

/**
 * The DER and status of a source, consistent with each other (the refresher
 * switches both in one MULTI, so they are read in one too). The DER comes in
 * slices: one GET of a 27 MB value blocks the event loop for 20+ ms while
 * ioredis joins it. The length read first plans the slices; the MULTI
 * re-reads it and a change in between means another round.
 */
export async function readStoredCrl(redis: Redis, name: string): Promise<{ der: Buffer | null; status: CrlStatus }> {
  const dataKey = keys.crlData(name);
  for (let round = 0; round < 5; round++) {
    const size = await redis.strlen(dataKey);
    const tx = redis.multi().get(keys.crlStatus(name)).strlen(dataKey);
    for (let o = 0; o < size; o += REDIS_SLICE) tx.getrangeBuffer(dataKey, o, Math.min(o + REDIS_SLICE, size) - 1);
    const results = await tx.exec();
    const failed = results?.find(([err]) => err);
    if (!results || failed) throw failed?.[0] ?? new Error('transaction aborted');
    if (results[1][1] !== size) continue;
    const status = parseStatus(results[0][1] as string | null);
    return { der: size === 0 ? null : await joinChunks(results.slice(2).map(([, v]) => v as Buffer), size), status };
  }
  throw new Error('the stored CRL kept changing while it was read');
}
