// `certgate events`: authentication and session events (SPEC §2.7), newest first; with
// --follow, new ones as they come (oldest first, polling the API every second, each event
// once). With --json: one JSON array, or one JSON object per line when following.
import { call, type Connection, type Schemas } from '../api.ts';
import { CliError, EXIT, table, type Output } from '../output.ts';

type Event = Schemas['SessionEvent'];
type Outcome = Event['outcome'];

export interface EventsOptions {
  user?: string;
  outcome?: Outcome;
  listener?: string;
  since?: string;
  limit: number;
  follow: boolean;
}

const OUTCOMES: readonly Outcome[] = ['accepted', 'rejected', 'allowed-not-permitted'];
const FOLLOW_POLL_MS = 1000;
/** The API's largest page: what one poll of --follow asks for. */
const FOLLOW_LIMIT = 1000;

export function parseOutcome(value: string): Outcome {
  if (!(OUTCOMES as readonly string[]).includes(value)) throw new CliError(EXIT.usage, `--outcome must be one of ${OUTCOMES.join(', ')}`);
  return value as Outcome;
}

/** `--since`: an ISO 8601 time, or a duration back from now (`90s`, `15m`, `2h`, `7d`). */
export function parseSince(value: string, now: Date = new Date()): string {
  const rel = /^(\d+)\s*(s|m|h|d)$/.exec(value.trim());
  if (rel) {
    const unit = { s: 1, m: 60, h: 3600, d: 86_400 }[rel[2] as 's' | 'm' | 'h' | 'd'];
    return new Date(now.getTime() - Number(rel[1]) * unit * 1000).toISOString();
  }
  const t = Date.parse(value);
  if (Number.isNaN(t)) throw new CliError(EXIT.usage, `--since must be an ISO 8601 time (2026-11-27T18:00:00Z) or a duration like 15m, 2h, 1d; got ${value}`);
  return new Date(t).toISOString();
}

const COLUMNS = [
  { header: 'TIME', value: (e: Event) => e.time.replace(/\.\d+Z$/, 'Z') },
  { header: 'LISTENER', value: (e: Event) => e.listener },
  { header: 'CLIENT', value: (e: Event) => e.clientAddress },
  { header: 'COMMAND', value: (e: Event) => e.command ?? '-' },
  { header: 'METHOD', value: (e: Event) => e.method },
  { header: 'USER', value: (e: Event) => e.user ?? (e.certificate ? `(${e.certificate.subject})` : '-') },
  { header: 'OUTCOME', value: (e: Event) => e.outcome },
  { header: 'REASON', value: (e: Event) => e.reason + (e.detail ? ` (${e.detail})` : '') },
  { header: 'REPLY', value: (e: Event) => e.reply ?? '-' },
];

async function fetchEvents(conn: Connection, o: EventsOptions, since: string | undefined, limit = o.limit): Promise<Event[]> {
  const query = { limit, ...(o.user ? { user: o.user } : {}), ...(o.outcome ? { outcome: o.outcome } : {}), ...(o.listener ? { listener: o.listener } : {}), ...(since ? { since } : {}) };
  const { data } = await call(conn, 'GET /v1/events', conn.client.GET('/v1/events', { params: { query } }));
  return data.items;
}

export async function eventsCommand(conn: Connection, out: Output, o: EventsOptions): Promise<number> {
  const since = o.since === undefined ? undefined : parseSince(o.since);
  const first = await fetchEvents(conn, o, since);
  if (!o.follow) {
    if (out.json) out.data(first);
    else if (first.length === 0) out.line('No events.');
    else out.line(table(first, COLUMNS));
    return EXIT.ok;
  }
  // Following: oldest first, one line per event, until interrupted. `since` is inclusive,
  // so the events of the newest millisecond come again: `seen` (only those) skips them.
  let seen = new Map<string, string>();
  let newest = since;
  const show = (events: Event[]) => {
    for (const e of events.filter((x) => !seen.has(x.id)).reverse()) {
      seen.set(e.id, e.time);
      if (!newest || e.time > newest) newest = e.time;
      out.line(out.json ? JSON.stringify(e) : COLUMNS.map((c) => c.value(e)).join('  '));
    }
    seen = new Map([...seen].filter(([, time]) => time === newest));
  };
  if (!out.json) out.line(COLUMNS.map((c) => c.header).join('  '));
  show(first);
  out.progress('following events (Ctrl-C to stop)');
  for (;;) {
    await new Promise((r) => setTimeout(r, FOLLOW_POLL_MS));
    show(await fetchEvents(conn, o, newest, FOLLOW_LIMIT));
  }
}
