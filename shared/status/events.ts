// Authentication and session events (SPEC §2.7): workers append, the API queries.
// A capped Redis stream; each entry holds the event as one JSON field `e`.
import type { Redis } from 'ioredis';
import { keys } from '../redis/keys.ts';
import type { NewSessionEvent, SessionEvent } from '../config/schemas.ts';

/** Roughly this many recent events are kept (approximate trimming is O(1)). */
const EVENTS_MAX_LENGTH = 100_000;
export const EVENTS_DEFAULT_LIMIT = 100;
export const EVENTS_MAX_LIMIT = 1000;
/** A filtered query reads at most this many entries, so a rare match cannot scan the whole stream. */
const MAX_SCANNED = 20_000;
const BATCH = 500;

export async function recordEvent(redis: Redis, e: NewSessionEvent): Promise<void> {
  await redis.xadd(keys.events, 'MAXLEN', '~', EVENTS_MAX_LENGTH, '*', 'e', JSON.stringify(e));
}

export interface EventFilter {
  user?: string;
  outcome?: SessionEvent['outcome'];
  listener?: string;
  /** Only events at or after this time. */
  since?: Date;
  /** Default 100, at most 1000. */
  limit?: number;
}

/** Matching events, newest first. */
export async function queryEvents(redis: Redis, filter: EventFilter = {}): Promise<SessionEvent[]> {
  const limit = Math.min(Math.max(filter.limit ?? EVENTS_DEFAULT_LIMIT, 1), EVENTS_MAX_LIMIT);
  // Stream ids start with the insertion time in ms, so `since` also bounds the scan.
  const oldest = filter.since ? String(filter.since.getTime()) : '-';
  const found: SessionEvent[] = [];
  let end = '+';
  for (let scanned = 0; scanned < MAX_SCANNED && found.length < limit; ) {
    const rows = await redis.xrevrange(keys.events, end, oldest, 'COUNT', BATCH);
    for (const [id, fields] of rows) {
      const event: SessionEvent = { id, ...(JSON.parse(fields[1] ?? '{}') as NewSessionEvent) };
      if (matches(event, filter)) found.push(event);
      if (found.length === limit) break;
    }
    scanned += rows.length;
    const last = rows.at(-1);
    if (!last || rows.length < BATCH) break;
    end = `(${last[0]}`; // exclusive: continue below the last id seen
  }
  return found;
}

function matches(e: SessionEvent, f: EventFilter): boolean {
  return (
    (f.user === undefined || e.user === f.user) &&
    (f.outcome === undefined || e.outcome === f.outcome) &&
    (f.listener === undefined || e.listener === f.listener) &&
    (f.since === undefined || Date.parse(e.time) >= f.since.getTime())
  );
}
