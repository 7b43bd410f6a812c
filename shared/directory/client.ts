/**
 * LDAP adapter for one LDAP server profile (SPEC 2.1): SMTP AUTH credential
 * checks, the allowance query, and certificate lookups.
 *
 * Guarantees:
 * - Fail closed. Any transport problem (refused, reset, timeout, TLS failure,
 *   server busy, service bind refused, bad base DN, invalid filter, an answer
 *   over the bounds) yields `directory-unavailable`, never `authenticated`,
 *   `allowed` or `invalid-credentials`. No method throws. The directory's own
 *   reason is kept in `detail` (and passed to `onUnavailable`).
 * - Empty / whitespace-only passwords never reach the directory (a simple
 *   bind with a DN and no password is an "unauthenticated bind" that many
 *   servers accept as anonymous, RFC 4513 5.1.2).
 * - Bounded: each public call, connect, StartTLS, binds and searches
 *   together, ends within `timeoutMs` (the connections it was using are then
 *   destroyed); a search reads at most two entries and 1 MiB of answer,
 *   counted as the bytes arrive (answer-meter.ts), whatever `sizeLimit` the
 *   server honours; at most `maxConnections` connections are open.
 * - User binds have connections of their own within `maxConnections` (a third
 *   of them, see userBindSlots) when the profile binds as users, so that the
 *   service connections never need re-binding; with maxConnections 1 one pool
 *   serves both. A connection remembers the identity it was last bound as: a
 *   search runs only on a connection bound as the profile's service identity
 *   (a shared connection last used for a user bind is re-bound first), so a
 *   user's identity never serves a search.
 * - Every token is escaped (see filter.ts); filters are parsed by our own
 *   RFC 4515 parser and sent as octets (ldapts' own parser would re-encode
 *   `\c3\bc` as two characters and non-ASCII values would never match).
 * - User names with control characters, and certificate fields with NUL, never
 *   reach the server (OpenLDAP's IA5 matching stops at an escaped NUL).
 * - One ldapts Client is one TCP connection: its transparent reconnect is
 *   disabled, so a connection upgraded with StartTLS can never silently be
 *   replaced by a plaintext, unauthenticated one.
 * - `password-attribute` refuses entries that are locked or disabled
 *   (`nsAccountLock: true`, any `pwdAccountLockedTime`, `loginDisabled: TRUE`)
 *   before comparing anything, as a bind would be refused.
 */
import net from 'node:net';
import tls from 'node:tls';
import { performance } from 'node:perf_hooks';
import {
  AndFilter,
  ApproximateFilter,
  Client,
  EqualityFilter,
  ExtensibleFilter,
  GreaterThanEqualsFilter,
  LessThanEqualsFilter,
  NotFilter,
  OrFilter,
  PresenceFilter,
  ResultCodeError,
  SubstringFilter,
  type ClientOptions,
  type Entry,
  type Filter,
} from 'ldapts';
import { ANSWER_LIMITS, AnswerMeter } from './answer-meter.ts';
import { FilterSyntaxError, generalizedTime, parseFilter, renderFilter, type FilterNode } from './filter.ts';
import { boundedMemo } from '../util/bounded-memo.ts';
import type { LdapProfile } from '../config/schemas.ts';
import type { TokenValues } from './tokens.ts';
import { verifyStoredPassword } from './password-hash.ts';
import { userIdText } from './user-id.ts';
import { hasControlChars } from '../util/text.ts';

// ---------------------------------------------------------------------------
// Public types

export interface QueryInfo {
  kind: 'search' | 'bind';
  durationMs: number;
  /** The directory gave an answer (a refused user bind counts as an answer); false on transport or server errors. */
  ok: boolean;
}

export interface UnavailableInfo {
  operation: 'smtp-auth' | 'allowance' | 'certificate';
  /** The directory's own reason, e.g. `service bind failed: ... Transport encryption required`. */
  detail: string;
}

export interface DirectoryOptions {
  /** Called after every operation sent to the directory (cache hits are not reported). Must not throw. */
  onQuery?: (info: QueryInfo) => void;
  /** Called whenever a call answers `directory-unavailable` (for the worker's warn log). Must not throw. */
  onUnavailable?: (info: UnavailableInfo) => void;
}

export type AuthOutcome = 'authenticated' | 'invalid-credentials' | 'unknown-user' | 'empty-password' | 'ambiguous' | 'directory-unavailable';

export interface AuthResult {
  outcome: AuthOutcome;
  dn: string | null;
  userId: string | null;
  /** The rendered search filter (for the API's test endpoint and logs); null when none was run. */
  filter: string | null;
  /** Why, in the directory's own words where it gave any (events' `detail`). Never contains the password. */
  detail?: string;
}

export interface AllowResult {
  outcome: 'allowed' | 'not-allowed' | 'directory-unavailable';
  filter: string | null;
  detail?: string;
}

export interface CertificateLookupResult {
  outcome: 'one' | 'none' | 'many' | 'directory-unavailable' | 'missing-field';
  dn: string | null;
  userId: string | null;
  filter: string | null;
  detail?: string;
}

// ---------------------------------------------------------------------------
// Errors

/** The directory could not give an answer. Internal: mapped to `directory-unavailable`. */
class DirectoryUnavailableError extends Error {
  override name = 'DirectoryUnavailableError';
}

/** LDAP result codes of a user bind that mean "this identity is refused", not "the server is broken". */
const REFUSED_BIND_CODES: ReadonlyMap<number, string> = new Map([
  [19, 'constraintViolation'],
  [48, 'inappropriateAuthentication'],
  [49, 'invalidCredentials'],
  [50, 'insufficientAccessRights'],
  [53, 'unwillingToPerform'],
]);

function describe(err: unknown): string {
  return err instanceof Error ? err.message.split('\n')[0] ?? err.name : String(err);
}

/** The server's diagnostic message of a result code (ldapts appends " Code: 0x.."). */
function serverWords(err: ResultCodeError): string {
  return describe(err).replace(/\s*Code: 0x[0-9a-f]+$/i, '');
}

/** busy (51) and unavailable (52): this server cannot answer now, another one may. */
const RETRYABLE_CODES: ReadonlySet<number> = new Set([51, 52]);

/** A result code is an answer from a working server; anything else (or busy/unavailable) is a transport problem. */
function isTransportError(err: unknown): boolean {
  return !(err instanceof ResultCodeError) || RETRYABLE_CODES.has(err.code);
}

// ---------------------------------------------------------------------------
// Filters: our AST → ldapts filter objects, values as UTF-8 / raw octets.

/**
 * Rendered filters already parsed, as ldapts objects (which only serialise themselves, so one
 * serves every search): a card holder or user comes back many times a day, and parsing costs
 * ~0.05 ms a search (bench/smtp --profile). Throws FilterSyntaxError.
 */
const compiledFilter = boundedMemo(10_000, (filter: string): Filter => toLdapFilter(parseFilter(filter)));

function toLdapFilter(node: FilterNode): Filter {
  const text = (b: Buffer): string => b.toString('utf8');
  switch (node.type) {
    case 'and':
      return new AndFilter({ filters: node.filters.map(toLdapFilter) });
    case 'or':
      return new OrFilter({ filters: node.filters.map(toLdapFilter) });
    case 'not':
      return new NotFilter({ filter: toLdapFilter(node.filter) });
    case 'equality':
      // The only ldapts filter taking raw octets: binary values (e.g. objectGUID) work here.
      return new EqualityFilter({ attribute: node.attribute, value: node.value });
    case 'approx':
      return new ApproximateFilter({ attribute: node.attribute, value: text(node.value) });
    case 'greaterOrEqual':
      return new GreaterThanEqualsFilter({ attribute: node.attribute, value: text(node.value) });
    case 'lessOrEqual':
      return new LessThanEqualsFilter({ attribute: node.attribute, value: text(node.value) });
    case 'present':
      return new PresenceFilter({ attribute: node.attribute });
    case 'substrings':
      return new SubstringFilter({
        attribute: node.attribute,
        initial: node.initial ? text(node.initial) : '',
        any: node.any.map(text),
        final: node.final ? text(node.final) : '',
      });
    case 'extensible':
      return new ExtensibleFilter({
        ...(node.rule ? { rule: node.rule } : {}),
        ...(node.attribute ? { matchType: node.attribute } : {}),
        value: text(node.value),
        dnAttributes: node.dnAttributes,
      });
  }
}

// ---------------------------------------------------------------------------
// Entries

function rawValues(entry: Entry, attribute: string): Array<string | Buffer> {
  const wanted = attribute.toLowerCase();
  const key = Object.keys(entry).find((k) => k !== 'dn' && k.toLowerCase() === wanted);
  const raw = key === undefined ? undefined : entry[key];
  if (raw === undefined) return [];
  return (Array.isArray(raw) ? raw : [raw]).filter((v) => v.length > 0);
}

/** All values of an attribute as text, looked up case-insensitively (servers return names as stored). */
function attributeValues(entry: Entry, attribute: string): string[] {
  return rawValues(entry, attribute).map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : v));
}

/** The entry's user id: the first value of `attribute`, binary values written as SPEC 2.1 says. */
function userIdOf(entry: Entry, attribute: string): string | null {
  const value = rawValues(entry, attribute)[0];
  return value === undefined ? null : userIdText(attribute, value);
}

/** Attributes that say an entry may not log in (389-ds / Oracle, ppolicy, eDirectory). */
const LOCK_ATTRIBUTES = ['nsAccountLock', 'pwdAccountLockedTime', 'loginDisabled'];

/** Why a `password-attribute` check must refuse the entry whatever the password, or null. */
function lockReason(entry: Entry): string | null {
  const isTrue = (attribute: string): boolean => attributeValues(entry, attribute).some((v) => v.trim().toUpperCase() === 'TRUE');
  if (isTrue('nsAccountLock')) return 'nsAccountLock: true';
  const lockedAt = attributeValues(entry, 'pwdAccountLockedTime')[0];
  if (lockedAt !== undefined) return `pwdAccountLockedTime: ${lockedAt}`;
  if (isTrue('loginDisabled')) return 'loginDisabled: TRUE';
  return null;
}

// ---------------------------------------------------------------------------
// Operations and connections

/**
 * One public call's budget (SPEC 2.1: `timeoutMs` bounds connect, bind and
 * search as a whole). The connections it holds are destroyed when it expires,
 * which makes whatever ldapts still awaits on them fail at once.
 */
class Operation {
  private readonly deadline: number;
  private readonly held = new Set<Connection>();
  private readonly timer: NodeJS.Timeout;
  /** Why the operation is over, once its time ran out. */
  expired: string | null = null;
  /** Rejects when the time is up. */
  readonly expiry: Promise<never>;

  constructor(readonly timeoutMs: number) {
    this.deadline = performance.now() + timeoutMs;
    let expire: (err: Error) => void = () => undefined;
    this.expiry = new Promise<never>((_resolve, reject) => (expire = reject));
    this.expiry.catch(() => undefined);
    this.timer = setTimeout(() => {
      this.expired = `no answer within timeoutMs (${timeoutMs} ms for connect, bind and search together)`;
      for (const conn of this.held) conn.destroy();
      this.held.clear();
      expire(new DirectoryUnavailableError(this.expired));
    }, timeoutMs);
  }

  /** Milliseconds left, at least 1 (ldapts reads 0 as "no timeout"). */
  remaining(): number {
    return Math.max(1, Math.ceil(this.deadline - performance.now()));
  }

  /** Throws once the time is up: nothing new is started for an expired operation. */
  check(): void {
    if (this.expired) throw new DirectoryUnavailableError(this.expired);
  }

  hold(conn: Connection): void {
    if (this.expired) conn.destroy();
    else this.held.add(conn);
  }

  letGo(conn: Connection): void {
    this.held.delete(conn);
  }

  finish(): void {
    clearTimeout(this.timer);
  }
}

/** Who a connection was last bound as: searches need `service`. */
export type Identity = 'service' | 'user' | 'none';

interface Connection {
  client: Client;
  /** Hard close: destroys the socket(s) without waiting for the server. */
  destroy(): void;
  /** Counts the answer of the current operation; cut off → `violation`. */
  meter: AnswerMeter;
  identity: Identity;
  idleSince: number;
}

/** Pooled connections idle for longer are replaced: servers drop idle connections (AD: 15 min). */
const MAX_IDLE_MS = 5 * 60_000;

/** Opens connections to the profile's hosts: host order, TLS, the first bind. */
class Connector {
  private roundRobin = 0;
  private readonly profile: LdapProfile;

  constructor(
    profile: LdapProfile,
    private readonly opened: Set<Connection>,
  ) {
    this.profile = profile;
  }

  /** Hosts in the order to try: as configured (failover) or rotating the first one (load-balance). */
  hostOrder(): string[] {
    const hosts = this.profile.hosts;
    if (this.profile.connection !== 'load-balance' || hosts.length < 2) return hosts;
    const start = this.roundRobin++ % hosts.length;
    return [...hosts.slice(start), ...hosts.slice(0, start)];
  }

  /**
   * Connects (and upgrades with StartTLS when configured) to the first host
   * that answers, then runs `bind` on it. Transport errors move on to the
   * next host; an LDAP result code from `bind` is an answer and is thrown.
   */
  async open(op: Operation, identity: Identity, bind: (client: Client) => Promise<void>, onAttempt?: (startedAt: number, err: unknown) => void): Promise<Connection> {
    let lastError: unknown = new Error('no LDAP host configured');
    for (const url of this.hostOrder()) {
      op.check();
      const conn = this.newConnection(url, op);
      op.hold(conn);
      const startedAt = performance.now();
      try {
        await this.secure(conn, url);
        conn.identity = identity;
        await bind(conn.client);
        onAttempt?.(startedAt, null);
        return conn;
      } catch (err) {
        onAttempt?.(startedAt, err);
        conn.destroy();
        op.letGo(conn);
        if (conn.meter.violation) throw new DirectoryUnavailableError(conn.meter.violation);
        if (op.expired) throw new DirectoryUnavailableError(op.expired);
        if (!isTransportError(err)) throw err;
        lastError = err;
      }
    }
    throw new DirectoryUnavailableError(`no LDAP host reachable (last error: ${describe(lastError)})`);
  }

  private newConnection(url: string, op: Operation): Connection {
    const sockets: net.Socket[] = [];
    const destroy = (): void => {
      sockets.forEach((s) => s.destroy());
      this.opened.delete(conn);
    };
    const meter = new AnswerMeter(ANSWER_LIMITS, destroy);
    // ldapts reconnects transparently when a connection drops, which would
    // silently lose StartTLS and the bound identity: allow one connect only.
    let connected = false;
    const once = (): void => {
      if (connected) throw new Error('LDAP connection lost');
      connected = true;
    };
    const track = <S extends net.Socket>(socket: S): S => {
      sockets.push(socket);
      // Before ldapts adds its own listener: the meter sees every chunk first.
      meter.watch(socket);
      return socket;
    };
    const timeout = op.remaining();
    const options: ClientOptions = {
      url,
      timeout,
      connectTimeout: timeout,
      strictDN: true,
      createConnection: ((port: number, host: string) => {
        once();
        return track(net.connect(port, host));
      }) as typeof net.connect,
      // ldaps:// calls it as (port, host, options), StartTLS as (options with the TCP socket).
      createSecureConnection: ((...args: [number, string, tls.ConnectionOptions] | [tls.ConnectionOptions]) => {
        const [first, host, rest] = args;
        const opts: tls.ConnectionOptions = typeof first === 'number' ? { ...rest, port: first, host } : first;
        if (opts.socket) meter.unwatch(opts.socket as net.Socket); // from now on its bytes are TLS records
        else once();
        return track(tls.connect(opts));
      }) as typeof tls.connect,
    };
    // Only for ldaps://: ldapts treats any tlsOptions as "TLS from the first byte".
    if (new URL(url).protocol === 'ldaps:') options.tlsOptions = this.tlsOptions(url);
    const conn: Connection = { client: new Client(options), destroy, meter, identity: 'none', idleSince: performance.now() };
    this.opened.add(conn);
    return conn;
  }

  private tlsOptions(url: string): tls.ConnectionOptions {
    const host = new URL(url).hostname.replace(/^\[(.*)\]$/, '$1');
    return {
      minVersion: 'TLSv1.2',
      ...(this.profile.caPem ? { ca: this.profile.caPem } : {}),
      // Certificate name checked against the configured host (SNI only for names, RFC 6066).
      host,
      ...(net.isIP(host) ? {} : { servername: host }),
    };
  }

  /** StartTLS on ldap:// URLs when configured. Never falls back to plaintext. The operation's deadline bounds the handshake. */
  private async secure(conn: Connection, url: string): Promise<void> {
    if (!this.profile.startTls || new URL(url).protocol !== 'ldap:') return;
    await conn.client.startTLS(this.tlsOptions(url)).catch((err: unknown) => {
      // Whatever the server answered, a failed StartTLS is a transport failure.
      throw new Error(`StartTLS failed: ${describe(err)}`, { cause: err });
    });
  }
}

export interface Waiter {
  /** The identity it needs: a connection last bound so spares it a bind. */
  prefer: Identity;
  /** How often a later waiter was served first (bounded by MAX_PASSED_OVER). */
  passedOver: number;
  /** A connection to use, or null: a free slot (already counted) to open one in. */
  grant(conn: Connection | null): void;
  cancel(err: Error): void;
}

const LOOKAHEAD = 16;
const MAX_PASSED_OVER = 4;

/**
 * Which waiter (its index, -1 for none) a connection last bound as `identity` goes to: the first
 * of the next LOOKAHEAD that needs that identity, saving a re-bind. It matters where user binds
 * and service searches share connections (userBindSlots 0: maxConnections 1), which otherwise
 * swap identities on nearly every hand-over under load. The head is served anyway once passed
 * over MAX_PASSED_OVER times, so no waiter waits more than a few operations longer than in FIFO
 * order.
 */
export function handOverIndex(waiters: ReadonlyArray<Pick<Waiter, 'prefer' | 'passedOver'>>, identity: Identity): number {
  const head = waiters[0];
  if (!head) return -1;
  if (head.prefer === identity || head.passedOver >= MAX_PASSED_OVER) return 0;
  const i = waiters.slice(1, LOOKAHEAD).findIndex((w) => w.prefer === identity);
  return i + 1;
}

/**
 * How many of a profile's `maxConnections` are kept for user binds: a third (at
 * least one) when it binds as users (`smtpAuthQuery.method` `bind`) and has room for
 * two pools, else 0 (one pool for everything). An SMTP AUTH login is a service
 * search, a user bind and a service search (the allowance); in one shared pool
 * under load, a service search often gets a connection a user bind left and must
 * re-bind it first: 1.4-1.5 binds per login in bench/smtp, against 1 with the
 * pools apart. Pure.
 */
export function userBindSlots(profile: Pick<LdapProfile, 'maxConnections' | 'smtpAuthQuery'>): number {
  if (profile.smtpAuthQuery?.method !== 'bind' || profile.maxConnections < 2) return 0;
  return Math.max(1, Math.round(profile.maxConnections / 3));
}

/**
 * At most `max` connections, opened on demand. Callers beyond the bound
 * queue for what is left of their operation's time. A released connection goes to a waiter (nearly FIFO, see
 * handOverIndex) or back to the idle list; a broken one is destroyed and its slot
 * handed to the next waiter, which opens a new connection.
 */
class ConnectionPool {
  private readonly idle: Connection[] = [];
  private readonly waiters: Waiter[] = [];
  /** Connections open, being opened, or in use. */
  private size = 0;
  private closed = false;

  /** `bound`: what limits it, for the error a waiter gets (`maxConnections 10`). */
  constructor(private readonly max: number, private readonly bound: string) {}

  /**
   * An idle connection last bound as `prefer`; else a slot for a new one
   * while the pool is below its bound; else an idle connection bound as
   * someone else (the caller re-binds it: one round trip, cheaper than a new
   * connection); else the first connection or slot released. Null means a
   * slot is reserved for the caller to open a connection in, which it must
   * then release(), or abandon() if opening failed.
   */
  async acquire(op: Operation, prefer: Identity): Promise<Connection | null> {
    if (this.closed) throw new DirectoryUnavailableError('directory adapter closed');
    this.dropStale();
    const same = this.takeIdle((c) => c.identity === prefer);
    if (same) return same;
    if (this.size < this.max) {
      this.size++;
      return null;
    }
    const other = this.takeIdle(() => true);
    if (other) return other;
    return new Promise<Connection | null>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new DirectoryUnavailableError(`no free LDAP connection within timeoutMs (${op.timeoutMs} ms, ${this.bound})`));
      }, op.remaining());
      const waiter: Waiter = {
        prefer,
        passedOver: 0,
        grant: (granted) => {
          clearTimeout(timer);
          resolve(granted);
        },
        cancel: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.waiters.push(waiter);
    });
  }

  /** Idle connections the server may have closed meanwhile are replaced. */
  private dropStale(): void {
    const now = performance.now();
    for (let i = this.idle.length - 1; i >= 0; i--) {
      const conn = this.idle[i] as Connection;
      if (!conn.client.isConnected || now - conn.idleSince >= MAX_IDLE_MS) {
        this.idle.splice(i, 1);
        conn.destroy();
        this.size--;
      }
    }
  }

  /** The most recently used idle connection that fits (its server-side idle timer is the freshest). */
  private takeIdle(fits: (conn: Connection) => boolean): Connection | null {
    for (let i = this.idle.length - 1; i >= 0; i--) {
      if (fits(this.idle[i] as Connection)) return this.idle.splice(i, 1)[0] as Connection;
    }
    return null;
  }

  release(conn: Connection, healthy: boolean): void {
    if (this.closed || !healthy || !conn.client.isConnected) {
      conn.destroy();
      this.freeSlot();
      return;
    }
    conn.idleSince = performance.now();
    const waiter = this.nextWaiter(conn.identity);
    if (waiter) waiter.grant(conn);
    else this.idle.push(conn);
  }

  /** Takes the waiter a connection last bound as `identity` goes to (handOverIndex); those ahead of it were passed over. */
  private nextWaiter(identity: Identity): Waiter | undefined {
    const i = handOverIndex(this.waiters, identity);
    if (i < 0) return undefined;
    for (const ahead of this.waiters.slice(0, i)) ahead.passedOver++;
    return this.waiters.splice(i, 1)[0];
  }

  /** A slot from acquire() whose connection could not be opened. */
  abandon(): void {
    this.freeSlot();
  }

  /** A slot became free: give it to the next waiter (who will open a connection) or shrink. */
  private freeSlot(): void {
    const waiter = this.closed ? undefined : this.waiters.shift();
    if (waiter) waiter.grant(null);
    else this.size--;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const waiter of this.waiters.splice(0)) waiter.cancel(new DirectoryUnavailableError('directory adapter closed'));
    const idle = this.idle.splice(0);
    this.size -= idle.length;
    await Promise.all(
      idle.map(async (conn) => {
        await conn.client.unbind().catch(() => undefined);
        conn.destroy();
      }),
    );
  }
}

/** Search results by (filter, attributes, size limit), for `cacheTtlSeconds`. Only successes are stored. */
class SearchCache {
  private readonly entries = new Map<string, { expires: number; result: Entry[] }>();

  constructor(
    private readonly ttlMs: number,
    private readonly maxItems = 10_000,
  ) {}

  /** Callers ask get() and set() only when enabled. */
  get enabled(): boolean {
    return this.ttlMs > 0;
  }

  get(key: string): Entry[] | undefined {
    const hit = this.entries.get(key);
    if (!hit) return undefined;
    if (hit.expires <= performance.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return hit.result;
  }

  set(key: string, result: Entry[]): void {
    // Map iteration order is insertion order: drop the oldest when full.
    if (this.entries.size >= this.maxItems) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(key, { expires: performance.now() + this.ttlMs, result });
  }

  clear(): void {
    this.entries.clear();
  }
}

// ---------------------------------------------------------------------------
// The adapter

interface SearchSpec {
  filter: string;
  attributes: string[];
  /** A request to the server (2 tells "one" from "many"); the meter enforces the bound whatever it does. */
  sizeLimit: number;
  cache: boolean;
}

export class Directory {
  private readonly profile: LdapProfile;
  private readonly onQuery: ((info: QueryInfo) => void) | undefined;
  private readonly onUnavailable: ((info: UnavailableInfo) => void) | undefined;
  /** Every connection open or being opened, destroyed by close(). */
  private readonly opened = new Set<Connection>();
  private readonly connector: Connector;
  /** Service searches, and user binds too when userBindSlots() is 0. */
  private readonly pool: ConnectionPool;
  /** User binds: `pool` itself, or a pool of their own. */
  private readonly userPool: ConnectionPool;
  private readonly cache: SearchCache;
  /** Why the profile is unusable (no hosts, non-LDAP URL, bad numbers), or null. */
  private readonly configError: string | null;

  /**
   * Never throws: a structurally unusable profile answers every query with
   * `directory-unavailable` (and the reason in `detail`), so that one bad
   * profile cannot take down a worker that builds adapters for all of them.
   */
  constructor(profile: LdapProfile, opts: DirectoryOptions = {}) {
    this.configError = profileError(profile);
    this.profile = profile;
    this.onQuery = opts.onQuery;
    this.onUnavailable = opts.onUnavailable;
    this.connector = new Connector(profile, this.opened);
    const userSlots = userBindSlots(profile);
    const bound = `maxConnections ${profile.maxConnections}${userSlots ? `, ${userSlots} of them for user binds` : ''}`;
    this.pool = new ConnectionPool(profile.maxConnections - userSlots, bound);
    this.userPool = userSlots ? new ConnectionPool(userSlots, bound) : this.pool;
    this.cache = new SearchCache(profile.cacheTtlSeconds * 1000);
  }

  /** Checks SMTP AUTH credentials with `smtpAuthQuery` (SPEC 2.1, 3 rule 5). */
  async authenticate(username: string, password: string): Promise<AuthResult> {
    const none = { dn: null, userId: null };
    // Before anything else: an empty password must never reach the directory.
    if (password.trim() === '') return { outcome: 'empty-password', ...none, filter: null, detail: 'empty password' };
    const q = this.profile.smtpAuthQuery;
    if (!q) return this.unavailable<AuthResult>('smtp-auth', { outcome: 'directory-unavailable', ...none, filter: null, detail: `LDAP profile ${this.profile.name} has no smtpAuthQuery` });
    const filter = renderFilter(q.query, { u: username, t: generalizedTime(new Date()) });
    if (filter === null) return { outcome: 'unknown-user', ...none, filter: null, detail: missingValueDetail(username) };
    // User names with control characters never name an entry. NUL in particular must not reach
    // the server even escaped: OpenLDAP's IA5 matching (e.g. `mail`) stops at NUL, so `alice\0` would match `alice`.
    if (hasControlChars(username)) return { outcome: 'unknown-user', ...none, filter: null, detail: 'control characters in the user name' };
    const idAttribute = q.userIdAttribute;
    const byPassword = q.method === 'password-attribute';
    try {
      return await this.run(async (op): Promise<AuthResult> => {
        const entries = await this.search(op, {
          filter,
          attributes: byPassword ? [idAttribute, q.passwordAttribute, ...LOCK_ATTRIBUTES] : [idAttribute],
          sizeLimit: 2,
          // A stored password is checked like a bind: always fresh, never kept in memory.
          cache: !byPassword,
        });
        if (entries.length === 0) return { outcome: 'unknown-user', ...none, filter };
        if (entries.length > 1) return { outcome: 'ambiguous', ...none, filter, detail: 'the query matched several entries' };
        const entry = entries[0] as Entry;
        const userId = userIdOf(entry, idAttribute);
        if (userId === null) {
          return { outcome: 'unknown-user', dn: entry.dn, userId: null, filter, detail: `the entry has no ${idAttribute} (smtpAuthQuery.userIdAttribute)` };
        }
        const found = { dn: entry.dn, userId, filter };
        if (byPassword) return { ...found, ...(await this.comparePassword(entry, q.passwordAttribute, password)) };
        const refused = await this.userBind(op, entry.dn, password);
        return refused === null ? { outcome: 'authenticated', ...found } : { outcome: 'invalid-credentials', ...found, detail: refused };
      });
    } catch (err) {
      return this.unavailable<AuthResult>('smtp-auth', { outcome: 'directory-unavailable', ...none, filter, detail: describe(err) });
    }
  }

  /**
   * Runs `allowQuery` with `{u}` and `{t}`: allowed iff it matches at least one
   * entry. A profile without allowQuery allows nobody (fail closed): whoever
   * asks for the check expects a rule to exist.
   */
  async checkAllowed(username: string, now: Date): Promise<AllowResult> {
    const template = this.profile.smtpAuthQuery?.allowQuery ?? null;
    if (template === null) return { outcome: 'not-allowed', filter: null, detail: `LDAP profile ${this.profile.name} has no allowQuery` };
    const filter = renderFilter(template, { u: username, t: generalizedTime(now) });
    if (filter === null) return { outcome: 'not-allowed', filter: null, detail: missingValueDetail(username) };
    if (hasControlChars(username)) return { outcome: 'not-allowed', filter: null, detail: 'control characters in the user name' };
    try {
      const entries = await this.run((op) => this.search(op, { filter, attributes: ['1.1'], sizeLimit: 1, cache: true }));
      return { outcome: entries.length > 0 ? 'allowed' : 'not-allowed', filter };
    } catch (err) {
      return this.unavailable<AllowResult>('allowance', { outcome: 'directory-unavailable', filter, detail: describe(err) });
    }
  }

  /** Runs `certificateQuery` with the certificate's token values (SPEC 2.2, 2.3). */
  async lookupCertificate(values: TokenValues): Promise<CertificateLookupResult> {
    const none = { dn: null, userId: null };
    const q = this.profile.certificateQuery;
    if (!q) return { outcome: 'none', ...none, filter: null, detail: `LDAP profile ${this.profile.name} has no certificateQuery` };
    const filter = renderFilter(q.query, values);
    if (filter === null) return { outcome: 'missing-field', ...none, filter: null, detail: 'the certificate lacks a field the query uses' };
    // Same NUL truncation risk as for user names (the classic "NUL in CN" certificate attack).
    if (Object.values(values).some((v) => v?.includes('\0'))) {
      return { outcome: 'none', ...none, filter: null, detail: 'NUL in a certificate field' };
    }
    const idAttribute = q.userIdAttribute;
    try {
      const entries = await this.run((op) => this.search(op, { filter, attributes: [idAttribute], sizeLimit: 2, cache: true }));
      if (entries.length === 0) return { outcome: 'none', ...none, filter };
      if (entries.length > 1) return { outcome: 'many', ...none, filter, detail: 'the query matched several entries' };
      const entry = entries[0] as Entry;
      const userId = userIdOf(entry, idAttribute);
      if (userId === null) return { outcome: 'none', dn: entry.dn, userId: null, filter, detail: `the entry has no ${idAttribute}` };
      return { outcome: 'one', dn: entry.dn, userId, filter };
    } catch (err) {
      return this.unavailable<CertificateLookupResult>('certificate', { outcome: 'directory-unavailable', ...none, filter, detail: describe(err) });
    }
  }

  async close(): Promise<void> {
    this.cache.clear();
    for (const conn of this.opened) conn.destroy();
    await this.pool.close();
    if (this.userPool !== this.pool) await this.userPool.close();
  }

  // -- internals ------------------------------------------------------------

  /** Runs one public call's directory work within `timeoutMs`. */
  private async run<T>(work: (op: Operation) => Promise<T>): Promise<T> {
    if (this.configError) throw new DirectoryUnavailableError(this.configError);
    const op = new Operation(this.profile.timeoutMs);
    try {
      return await Promise.race([work(op), op.expiry]);
    } finally {
      op.finish();
    }
  }

  private unavailable<R extends { detail?: string }>(operation: UnavailableInfo['operation'], result: R): R {
    try {
      this.onUnavailable?.({ operation, detail: result.detail ?? 'directory unavailable' });
    } catch {
      // Logging must never change an authentication decision.
    }
    return result;
  }

  private report(kind: QueryInfo['kind'], startedAt: number, ok: boolean): void {
    try {
      this.onQuery?.({ kind, durationMs: performance.now() - startedAt, ok });
    } catch {
      // Metrics must never change an authentication decision.
    }
  }

  /** `password-attribute`: a locked entry is refused first; then any stored value may match. */
  private async comparePassword(entry: Entry, attribute: string, password: string): Promise<Pick<AuthResult, 'outcome' | 'detail'>> {
    const locked = lockReason(entry);
    if (locked) return { outcome: 'invalid-credentials', detail: `the entry is locked or disabled (${locked})` };
    const stored = attributeValues(entry, attribute);
    if (stored.length === 0) return { outcome: 'invalid-credentials', detail: `no readable ${attribute} on the entry` };
    const unsupported: string[] = [];
    for (const value of stored) {
      const verdict = await verifyStoredPassword(value, password);
      if (verdict.result === 'match') return { outcome: 'authenticated' };
      if (verdict.result === 'unsupported-scheme') unsupported.push(`{${verdict.scheme}}`);
    }
    return unsupported.length > 0
      ? { outcome: 'invalid-credentials', detail: `${attribute} is stored in a scheme certgate cannot verify: ${unsupported.join(', ')}` }
      : { outcome: 'invalid-credentials' };
  }

  private bindService(client: Client): Promise<void> {
    const bind = this.profile.bind;
    // An explicit anonymous bind also proves the host answers before we commit to it.
    return bind ? client.bind(bind.dn, bind.password ?? '') : client.bind('', '');
  }

  /** Opens a service connection bound as the profile's bind DN (or anonymously). */
  private openService(op: Operation): Promise<Connection> {
    const bind = this.profile.bind;
    if (bind && (!bind.dn || !bind.password)) {
      // Never send an unauthenticated bind (DN without password): some servers treat it as anonymous.
      return Promise.reject(new DirectoryUnavailableError(`LDAP profile ${this.profile.name}: bind DN without a password`));
    }
    return this.connector.open(op, 'service', (client) => this.bindService(client)).catch((err: unknown) => {
      if (err instanceof DirectoryUnavailableError) throw err;
      throw new DirectoryUnavailableError(`service bind failed: ${describe(err)}`);
    });
  }

  /**
   * A connection bound as the service identity: an idle one (re-bound when a
   * user bind used it last) or a new one. `reused`: it was idle in the pool,
   * so a transport error on it may only mean the server dropped it meanwhile.
   */
  private async serviceConnection(op: Operation): Promise<{ conn: Connection; reused: boolean }> {
    const idle = await this.pool.acquire(op, 'service');
    if (!idle) {
      try {
        return { conn: await this.openService(op), reused: false };
      } catch (err) {
        this.pool.abandon();
        throw err;
      }
    }
    op.hold(idle);
    if (idle.identity !== 'service') {
      const startedAt = performance.now();
      try {
        idle.meter.reset();
        idle.identity = 'none';
        await this.bindService(idle.client);
        idle.identity = 'service';
        this.report('bind', startedAt, true);
      } catch (err) {
        this.report('bind', startedAt, !isTransportError(err));
        op.letGo(idle);
        this.pool.release(idle, false);
        if (isTransportError(err)) throw new StaleConnectionError(describe(err));
        throw new DirectoryUnavailableError(`service bind failed: ${describe(err)}`);
      }
    }
    return { conn: idle, reused: true };
  }

  private async search(op: Operation, spec: SearchSpec): Promise<Entry[]> {
    const key = spec.cache && this.cache.enabled ? JSON.stringify([spec.filter, spec.attributes, spec.sizeLimit]) : null;
    if (key !== null) {
      const hit = this.cache.get(key);
      if (hit) return hit;
    }
    let ldapFilter: Filter;
    try {
      ldapFilter = compiledFilter(spec.filter);
    } catch (err) {
      if (err instanceof FilterSyntaxError) throw new DirectoryUnavailableError(`query of LDAP profile ${this.profile.name}: ${err.message}`);
      throw err;
    }
    const entries = await this.searchOnPool(op, ldapFilter, spec);
    if (key !== null) this.cache.set(key, entries);
    return entries;
  }

  private async searchOnPool(op: Operation, filter: Filter, spec: SearchSpec): Promise<Entry[]> {
    // A pooled connection may have died while idle: one retry on a fresh connection.
    for (let attempt = 0; ; attempt++) {
      op.check();
      const startedAt = performance.now();
      let acquired: { conn: Connection; reused: boolean };
      try {
        acquired = await this.serviceConnection(op);
      } catch (err) {
        this.report('search', startedAt, false);
        if (err instanceof StaleConnectionError && attempt === 0) continue;
        throw err instanceof StaleConnectionError ? new DirectoryUnavailableError(`service bind failed: ${err.message}`) : err;
      }
      const { conn, reused } = acquired;
      conn.meter.reset();
      try {
        const result = await conn.client.search(this.profile.baseDn, {
          scope: 'sub',
          filter,
          attributes: spec.attributes,
          sizeLimit: spec.sizeLimit,
          timeLimit: Math.max(1, Math.ceil(op.remaining() / 1000)),
          derefAliases: 'never',
        });
        this.report('search', startedAt, true);
        op.letGo(conn);
        this.pool.release(conn, true);
        // Search references (AD sends some for every subtree search at a domain root) are not chased.
        return result.searchEntries;
      } catch (err) {
        this.report('search', startedAt, false);
        const cut = conn.meter.violation;
        const transport = cut !== null || isTransportError(err);
        op.letGo(conn);
        this.pool.release(conn, !transport);
        if (cut) throw new DirectoryUnavailableError(cut);
        op.check();
        if (transport && reused && attempt === 0) continue;
        throw new DirectoryUnavailableError(`search failed: ${describe(err)}`);
      }
    }
  }

  /**
   * Binds as `dn` with `password` on a pooled connection (which is then
   * marked as bound as a user) or a new one. Returns null when the password
   * is right, a reason when the directory refused the identity; throws
   * DirectoryUnavailableError otherwise.
   */
  private async userBind(op: Operation, dn: string, password: string): Promise<string | null> {
    if (password === '') return 'empty password'; // defence in depth, see authenticate()
    for (let attempt = 0; ; attempt++) {
      op.check();
      let refused: string | null = null;
      const bindAsUser = async (client: Client): Promise<void> => {
        try {
          await client.bind(dn, password);
        } catch (err) {
          const name = err instanceof ResultCodeError ? REFUSED_BIND_CODES.get(err.code) : undefined;
          if (name === undefined) throw err;
          const words = serverWords(err as ResultCodeError);
          refused = `bind refused: ${name}${words ? ` (${words})` : ''}`;
        }
      };
      const idle = await this.userPool.acquire(op, 'user');
      let conn: Connection;
      if (!idle) {
        try {
          conn = await this.connector.open(op, 'user', bindAsUser, (startedAt, err) => this.report('bind', startedAt, err === null || !isTransportError(err)));
        } catch (err) {
          this.userPool.abandon();
          if (err instanceof DirectoryUnavailableError) throw err;
          throw new DirectoryUnavailableError(`bind failed: ${describe(err)}`);
        }
      } else {
        conn = idle;
        op.hold(conn);
        const startedAt = performance.now();
        try {
          conn.meter.reset();
          conn.identity = 'user';
          await bindAsUser(conn.client);
          this.report('bind', startedAt, true);
        } catch (err) {
          this.report('bind', startedAt, false);
          op.letGo(conn);
          this.userPool.release(conn, false);
          if (conn.meter.violation) throw new DirectoryUnavailableError(conn.meter.violation);
          op.check();
          if (attempt === 0 && isTransportError(err)) continue;
          throw new DirectoryUnavailableError(`bind failed: ${describe(err)}`);
        }
      }
      op.letGo(conn);
      this.userPool.release(conn, true);
      return refused;
    }
  }
}

/** A pooled connection failed before the operation proper: the caller may retry once on a fresh one. */
class StaleConnectionError extends Error {
  override name = 'StaleConnectionError';
}

function missingValueDetail(username: string): string {
  return username === '' ? 'empty user name' : 'the query uses a token without a value';
}

function profileError(p: LdapProfile): string | null {
  const bad = (why: string): string => `LDAP profile ${p.name}: ${why}`;
  if (!Array.isArray(p.hosts) || p.hosts.length === 0) return bad('no hosts');
  for (const url of p.hosts) {
    let protocol: string;
    try {
      protocol = new URL(url).protocol;
    } catch {
      return bad(`invalid host URL ${url}`);
    }
    if (protocol !== 'ldap:' && protocol !== 'ldaps:') return bad(`${url} is not an ldap:// or ldaps:// URL`);
  }
  if (!(p.timeoutMs > 0)) return bad('timeoutMs must be positive');
  if (!(Number.isInteger(p.maxConnections) && p.maxConnections >= 1)) return bad('maxConnections must be an integer >= 1');
  if (!(p.cacheTtlSeconds >= 0)) return bad('cacheTtlSeconds must be >= 0');
  return null;
}
