// Authentication and session events (SPEC §2.7): workers append, the API queries.
// A capped Redis stream; each entry holds the event as one JSON field `e`.
//
// Workers write through an EventRecorder (SPEC §1 "Redis unreachable"): events wait in
// memory, up to 10,000, and go to Redis in batches (one XADD, or a pipeline of them, per round trip,
// however many sessions ended meanwhile; at a rate no single client makes, at most one write per
// `lingerMs`); when Redis is unreachable they wait until it is back, and what does not fit is
// counted as dropped. Delivery is at least once: a batch whose answer was lost with its
// connection is written again (ioredis resends it), so a crash of Redis itself mid-batch may
// duplicate an event, never lose one that fitted.
// Stream ids are the time of writing: events kept through an outage are listed where
// they were written, each with its own `time`.
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
/** The window in which the recorder counts events to tell whether it is busy. */
const WINDOW_MS = 100;

/** Events recorded in the current 100 ms window and in the one before it. */
export class RecentEvents {
  private start = -Infinity;
  private count = 0;
  private before = 0;

  add(now: number): void {
    const elapsed = now - this.start;
    if (elapsed >= WINDOW_MS) {
      this.before = elapsed < 2 * WINDOW_MS ? this.count : 0; // an older window is not the one before
      this.start = now;
      this.count = 0;
    }
    this.count++;
  }

  /** The larger of the two windows' counts. */
  get peak(): number {
    return Math.max(this.count, this.before);
  }
}

/** XADD's arguments before the event's JSON: the stream, its approximate cap, a time-based id, the field. */
const XADD_HEAD = [keys.events, 'MAXLEN', '~', EVENTS_MAX_LENGTH, '*', 'e'] as const;

export async function recordEvent(redis: Redis, e: NewSessionEvent): Promise<void> {
  await redis.xadd(...XADD_HEAD, JSON.stringify(e));
}

export interface EventRecorderOptions {
  /**
   * A connection without a command timeout (a batch that timed out on a frozen Redis would
   * still be written when it thaws, and writing it again would duplicate it).
   */
  redis: Redis;
  /** Events held while Redis is unreachable (default 10,000, SPEC §1). */
  maxPending?: number;
  /** Events per pipeline (default 500). */
  batch?: number;
  /**
   * Once the recorder is busy (`busyEvents`), a write starts at least this long after the one
   * before (default 10 ms): what the sessions recorded meanwhile goes in one pipeline instead of
   * one XADD per event as sessions end a few ms apart (in one process against a real Redis, at
   * 500 events/s: 40-150 µs of CPU less per event, and half of Redis's 53-63 µs).
   */
  lingerMs?: number;
  /**
   * Busy: at least this many events recorded in the current or the last 100 ms (default 32,
   * 320 a second). Below it every event is written at once, within a round trip, so that a
   * client reading `GET /v1/events` right after its session finds it there.
   */
  busyEvents?: number;
  /** Delay before a failed batch is tried again (default 1 s). */
  retryMs?: number;
  /** An event that did not fit. */
  onDropped?: () => void;
  /** A batch failed (it stays pending). */
  onError?: (err: Error) => void;
}

export class EventRecorder {
  private readonly pending: string[] = [];
  private inFlight = 0;
  private writing = false;
  private scheduled = false;
  private retry: NodeJS.Timeout | null = null;
  private readonly max: number;
  private readonly batch: number;
  private readonly lingerMs: number;
  private readonly busyEvents: number;
  private lastWriteAt = -Infinity;
  private readonly recent = new RecentEvents();
  private readonly idle = new Set<() => void>();

  constructor(private readonly o: EventRecorderOptions) {
    this.max = o.maxPending ?? 10_000;
    this.batch = o.batch ?? 500;
    this.lingerMs = o.lingerMs ?? 10;
    this.busyEvents = o.busyEvents ?? 32;
    o.redis.on('ready', () => this.kick());
  }

  /** Events not yet written. */
  get size(): number {
    return this.pending.length + this.inFlight;
  }

  /** Queues one event; written within one round trip when Redis answers (busy: within `lingerMs` and one). */
  record(e: NewSessionEvent): void {
    if (this.size >= this.max) {
      this.o.onDropped?.();
      return;
    }
    this.pending.push(JSON.stringify(e));
    this.recent.add(performance.now());
    this.kick();
  }

  /** Resolves when everything recorded so far is written, or after `timeoutMs`; answers how many are left. */
  async drain(timeoutMs: number): Promise<number> {
    if (this.size > 0) {
      let done!: () => void;
      const written = new Promise<void>((resolve) => (done = resolve));
      this.idle.add(done);
      const timer = setTimeout(done, timeoutMs);
      await written;
      clearTimeout(timer);
      this.idle.delete(done);
    }
    return this.size;
  }

  private kick(): void {
    if (this.scheduled || this.writing || this.retry || this.pending.length === 0) return;
    this.scheduled = true;
    const start = (): void => {
      this.scheduled = false;
      void this.write();
    };
    // At the earliest after the current turn, so that the events of sessions ending together share a batch.
    const wait = this.recent.peak >= this.busyEvents ? this.lastWriteAt + this.lingerMs - performance.now() : 0;
    if (wait > 0) setTimeout(start, wait);
    else setImmediate(start);
  }

  /** A lone event as a plain XADD: 12-40 µs of CPU less than a pipeline of one. Answers like a pipeline's result. */
  private addOne(e: string): Promise<[Error | null]> {
    return this.o.redis.xadd(...XADD_HEAD, e).then(() => [null], (err: Error) => [err]);
  }

  private async addAll(events: string[]): Promise<Array<[Error | null, unknown]>> {
    const tx = this.o.redis.pipeline();
    for (const e of events) tx.xadd(...XADD_HEAD, e);
    return (await tx.exec()) ?? [];
  }

  private async write(): Promise<void> {
    if (this.writing || this.pending.length === 0) return;
    if (this.o.redis.status !== 'ready') return; // the connection's `ready` kicks again
    this.writing = true;
    this.lastWriteAt = performance.now();
    const events = this.pending.splice(0, this.batch);
    this.inFlight = events.length;
    const failed: string[] = [];
    try {
      const results = events.length === 1 ? [await this.addOne(events[0] as string)] : await this.addAll(events);
      results.forEach(([err], i) => err && failed.push(events[i]));
      if (failed.length) this.o.onError?.(results.find(([err]) => err)![0]!);
    } catch (err) {
      failed.push(...events);
      this.o.onError?.(err as Error);
    } finally {
      this.pending.unshift(...failed);
      this.inFlight = 0;
      this.writing = false;
    }
    if (failed.length) {
      this.retry = setTimeout(() => {
        this.retry = null;
        this.kick();
      }, this.o.retryMs ?? 1000);
      this.retry.unref();
    } else if (this.pending.length) {
      this.kick();
    } else {
      for (const done of this.idle) done();
    }
  }
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
