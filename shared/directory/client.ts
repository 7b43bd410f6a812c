/**
 * LDAP adapter for one LDAP server profile (SPEC 2.1): SMTP AUTH credential
 * checks, the allowance query, and certificate lookups.
 *
 * Guarantees:
 * - Fail closed. Any transport problem (refused, reset, timeout, TLS failure,
 *   server busy, service bind refused, bad base DN, invalid filter) yields
 *   `directory-unavailable`, never `authenticated`, `allowed` or
 *   `invalid-credentials`. No method throws.
 * - Empty / whitespace-only passwords never reach the directory (a simple
 *   bind with a DN and no password is an "unauthenticated bind" that many
 *   servers accept as anonymous, RFC 4513 5.1.2).
 * - Every user bind runs on its own fresh connection, closed afterwards, so
 *   a user identity never leaks into the service connection pool.
 * - Every token is escaped (see ldap-filter.ts); filters are parsed by our own
 *   RFC 4515 parser and sent as octets (ldapts' own parser would re-encode
 *   `\c3\bc` as two characters and non-ASCII values would never match).
 * - User names with control characters, and certificate fields with NUL, never
 *   reach the server (OpenLDAP's IA5 matching stops at an escaped NUL).
 * - One ldapts Client is one TCP connection: its transparent reconnect is
 *   disabled, so a connection upgraded with StartTLS can never silently be
 *   replaced by a plaintext, unauthenticated one.
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
import { FilterSyntaxError, generalizedTime, parseFilter, renderFilter, type FilterNode } from './filter.ts';
import type { TokenValues } from './tokens.ts';
import { verifyStoredPassword } from './password-hash.ts';

// ---------------------------------------------------------------------------
// Public types

/** An LDAP server profile, as SPEC 2.1 defines it (same names as the API schema). */
export interface LdapProfileConfig {
  name: string;
  hosts: string[];
  connection: 'failover' | 'load-balance';
  baseDn: string;
  bind: { dn: string; password?: string | null } | null;
  startTls: boolean;
  caPem: string | null;
  timeoutMs: number;
  cacheTtlSeconds: number;
  maxConnections: number;
  certificateQuery: { name: string; query: string; userIdAttribute: string } | null;
  smtpAuthQuery: {
    name: string;
    query: string;
    method: 'bind' | 'password-attribute';
    passwordAttribute: string;
    allowQuery: string | null;
  } | null;
}

export interface QueryInfo {
  kind: 'search' | 'bind';
  durationMs: number;
  /** The directory gave an answer (a refused user bind counts as an answer); false on transport or server errors. */
  ok: boolean;
}

export interface DirectoryOptions {
  /** Called after every operation sent to the directory (cache hits are not reported). Must not throw. */
  onQuery?: (info: QueryInfo) => void;
}

export type AuthOutcome = 'authenticated' | 'invalid-credentials' | 'unknown-user' | 'empty-password' | 'ambiguous' | 'directory-unavailable';

export interface AuthResult {
  outcome: AuthOutcome;
  dn: string | null;
  userId: string | null;
  /** The rendered search filter (for the API's test endpoint and logs); null when none was run. */
  filter: string | null;
  /** Human-readable reason, for logs. Never contains the password. */
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

/** busy (51) and unavailable (52): this server cannot answer now, another one may. */
const RETRYABLE_CODES: ReadonlySet<number> = new Set([51, 52]);

/** A result code is an answer from a working server; anything else (or busy/unavailable) is a transport problem. */
function isTransportError(err: unknown): boolean {
  return !(err instanceof ResultCodeError) || RETRYABLE_CODES.has(err.code);
}

// ---------------------------------------------------------------------------
// Filters: our AST → ldapts filter objects, values as UTF-8 / raw octets.

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

/** All values of an attribute, looked up case-insensitively (servers return names as stored). */
function attributeValues(entry: Entry, attribute: string): string[] {
  const wanted = attribute.toLowerCase();
  const key = Object.keys(entry).find((k) => k !== 'dn' && k.toLowerCase() === wanted);
  const raw = key === undefined ? undefined : entry[key];
  if (raw === undefined) return [];
  const list = Array.isArray(raw) ? raw : [raw];
  return list.map((v) => (Buffer.isBuffer(v) ? v.toString('utf8') : v)).filter((v) => v !== '');
}

/**
 * User names with control characters never name an entry. NUL in particular
 * must not reach the server even escaped: OpenLDAP's IA5 matching (e.g. `mail`)
 * stops at NUL, so `alice\0` would match `alice`.
 */
function hasControlChars(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

function firstValue(entry: Entry, attribute: string): string | null {
  return attributeValues(entry, attribute)[0] ?? null;
}

// ---------------------------------------------------------------------------
// Connections

interface Connection {
  client: Client;
  /** Hard close: destroys the socket(s) without waiting for the server. */
  destroy(): void;
  idleSince: number;
}

/** Pooled connections idle for longer are replaced: servers drop idle connections (AD: 15 min). */
const MAX_IDLE_MS = 5 * 60_000;

function withDeadline<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Error(`${what} timed out after ${ms} ms`));
    }, ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Opens connections to the profile's hosts: host order, TLS, binds. */
class Connector {
  private roundRobin = 0;
  private readonly profile: LdapProfileConfig;

  constructor(profile: LdapProfileConfig) {
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
  async open(bind: (client: Client) => Promise<void>, onAttempt?: (startedAt: number, err: unknown) => void): Promise<Connection> {
    let lastError: unknown = new Error('no LDAP host configured');
    for (const url of this.hostOrder()) {
      const conn = this.newConnection(url);
      const startedAt = performance.now();
      try {
        await this.secure(conn, url);
        await bind(conn.client);
        onAttempt?.(startedAt, null);
        return conn;
      } catch (err) {
        onAttempt?.(startedAt, err);
        conn.destroy();
        if (!isTransportError(err)) throw err;
        lastError = err;
      }
    }
    throw new DirectoryUnavailableError(`no LDAP host reachable (last error: ${describe(lastError)})`);
  }

  private newConnection(url: string): Connection {
    const { timeoutMs } = this.profile;
    const sockets: net.Socket[] = [];
    // ldapts reconnects transparently when a connection drops, which would
    // silently lose StartTLS and the bound identity: allow one connect only.
    let connected = false;
    const once = (): void => {
      if (connected) throw new Error('LDAP connection lost');
      connected = true;
    };
    const options: ClientOptions = {
      url,
      timeout: timeoutMs,
      connectTimeout: timeoutMs,
      strictDN: true,
      createConnection: ((port: number, host: string) => {
        once();
        const socket = net.connect(port, host);
        sockets.push(socket);
        return socket;
      }) as typeof net.connect,
    };
    if (new URL(url).protocol === 'ldaps:') {
      // Only for ldaps://: ldapts treats any tlsOptions as "TLS from the first byte".
      options.tlsOptions = this.tlsOptions(url);
      options.createSecureConnection = ((port: number, host: string, tlsOpts: tls.ConnectionOptions) => {
        once();
        const socket = tls.connect(port, host, tlsOpts);
        sockets.push(socket);
        return socket;
      }) as typeof tls.connect;
    }
    return {
      client: new Client(options),
      destroy: () => sockets.forEach((s) => s.destroy()),
      idleSince: performance.now(),
    };
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

  /** StartTLS on ldap:// URLs when configured. Never falls back to plaintext. */
  private async secure(conn: Connection, url: string): Promise<void> {
    if (!this.profile.startTls || new URL(url).protocol !== 'ldap:') return;
    // ldapts bounds the extended operation but not the TLS handshake after it.
    await withDeadline(conn.client.startTLS(this.tlsOptions(url)), this.profile.timeoutMs, 'StartTLS', conn.destroy).catch((err: unknown) => {
      // Whatever the server answered, a failed StartTLS is a transport failure.
      throw new Error(`StartTLS failed: ${describe(err)}`, { cause: err });
    });
  }
}

interface Waiter {
  /** A connection to use, or null: a free slot (already counted) to open one in. */
  grant(conn: Connection | null): void;
  cancel(err: Error): void;
}

/**
 * At most `max` service connections, opened on demand. Callers beyond the
 * bound queue (FIFO) for at most `timeoutMs`. A released connection goes to
 * the next waiter or back to the idle list; a broken one is destroyed and its
 * slot handed to the next waiter, which opens a new connection.
 */
class ServicePool {
  private readonly idle: Connection[] = [];
  private readonly waiters: Waiter[] = [];
  /** Connections open, being opened, or in use. */
  private size = 0;
  private closed = false;

  constructor(
    private readonly max: number,
    private readonly timeoutMs: number,
    private readonly open: () => Promise<Connection>,
  ) {}

  async acquire(): Promise<{ conn: Connection; reused: boolean }> {
    if (this.closed) throw new DirectoryUnavailableError('directory adapter closed');
    for (let conn = this.idle.pop(); conn; conn = this.idle.pop()) {
      if (conn.client.isBound && performance.now() - conn.idleSince < MAX_IDLE_MS) return { conn, reused: true };
      conn.destroy();
      this.size--;
    }
    if (this.size < this.max) {
      this.size++;
      return { conn: await this.openCounted(), reused: false };
    }
    const grant = await new Promise<Connection | null>((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new DirectoryUnavailableError(`no free LDAP connection within ${this.timeoutMs} ms (maxConnections ${this.max})`));
      }, this.timeoutMs);
      const waiter: Waiter = {
        grant: (conn) => {
          clearTimeout(timer);
          resolve(conn);
        },
        cancel: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.waiters.push(waiter);
    });
    if (grant) return { conn: grant, reused: true };
    return { conn: await this.openCounted(), reused: false };
  }

  /** Opens a connection for a slot already counted in `size`. */
  private async openCounted(): Promise<Connection> {
    let conn: Connection;
    try {
      conn = await this.open();
    } catch (err) {
      this.freeSlot();
      throw err;
    }
    if (this.closed) {
      conn.destroy();
      this.freeSlot();
      throw new DirectoryUnavailableError('directory adapter closed');
    }
    return conn;
  }

  release(conn: Connection, healthy: boolean): void {
    if (this.closed || !healthy || !conn.client.isBound) {
      conn.destroy();
      this.freeSlot();
      return;
    }
    conn.idleSince = performance.now();
    const waiter = this.waiters.shift();
    if (waiter) waiter.grant(conn);
    else this.idle.push(conn);
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

  get(key: string): Entry[] | undefined {
    if (this.ttlMs <= 0) return undefined;
    const hit = this.entries.get(key);
    if (!hit) return undefined;
    if (hit.expires <= performance.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return hit.result;
  }

  set(key: string, result: Entry[]): void {
    if (this.ttlMs <= 0) return;
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
  /** 2 is enough to tell "one" from "many"; servers stop early. */
  sizeLimit: number;
  cache: boolean;
}

export class Directory {
  private readonly profile: LdapProfileConfig;
  private readonly onQuery: ((info: QueryInfo) => void) | undefined;
  private readonly connector: Connector;
  private readonly pool: ServicePool;
  private readonly cache: SearchCache;
  /** User-bind connections in flight, destroyed by close(). */
  private readonly userConnections = new Set<Connection>();
  /** Why the profile is unusable (no hosts, non-LDAP URL, bad numbers), or null. */
  private readonly configError: string | null;

  /**
   * Never throws: a structurally unusable profile answers every query with
   * `directory-unavailable` (and the reason in `detail`), so that one bad
   * profile cannot take down a worker that builds adapters for all of them.
   */
  constructor(profile: LdapProfileConfig, opts: DirectoryOptions = {}) {
    this.configError = profileError(profile);
    this.profile = profile;
    this.onQuery = opts.onQuery;
    this.connector = new Connector(profile);
    this.pool = new ServicePool(profile.maxConnections, profile.timeoutMs, () => this.openService());
    this.cache = new SearchCache(profile.cacheTtlSeconds * 1000);
  }

  /** Checks SMTP AUTH credentials with `smtpAuthQuery` (SPEC 2.1, 3 rule 5). */
  async authenticate(username: string, password: string): Promise<AuthResult> {
    const none = { dn: null, userId: null };
    // Before anything else: an empty password must never reach the directory.
    if (password.trim() === '') return { outcome: 'empty-password', ...none, filter: null, detail: 'empty password' };
    const q = this.profile.smtpAuthQuery;
    if (!q) return { outcome: 'directory-unavailable', ...none, filter: null, detail: `LDAP profile ${this.profile.name} has no smtpAuthQuery` };
    const filter = renderFilter(q.query, { u: username, t: generalizedTime(new Date()) });
    if (filter === null) return { outcome: 'unknown-user', ...none, filter: null, detail: missingValueDetail(username) };
    if (hasControlChars(username)) return { outcome: 'unknown-user', ...none, filter: null, detail: 'control characters in the user name' };
    try {
      const byPassword = q.method === 'password-attribute';
      const entries = await this.search({
        filter,
        attributes: byPassword ? ['uid', q.passwordAttribute] : ['uid'],
        sizeLimit: 2,
        // A stored password is checked like a bind: always fresh, never kept in memory.
        cache: !byPassword,
      });
      if (entries.length === 0) return { outcome: 'unknown-user', ...none, filter };
      if (entries.length > 1) return { outcome: 'ambiguous', ...none, filter, detail: 'the query matched several entries' };
      const entry = entries[0] as Entry;
      const found = { dn: entry.dn, userId: firstValue(entry, 'uid') ?? username, filter };
      if (byPassword) {
        const stored = attributeValues(entry, q.passwordAttribute);
        if (stored.length === 0) return { outcome: 'invalid-credentials', ...found, detail: `no readable ${q.passwordAttribute} on the entry` };
        const ok = stored.some((value) => verifyStoredPassword(value, password));
        return { outcome: ok ? 'authenticated' : 'invalid-credentials', ...found };
      }
      const refused = await this.userBind(entry.dn, password);
      return refused === null ? { outcome: 'authenticated', ...found } : { outcome: 'invalid-credentials', ...found, detail: refused };
    } catch (err) {
      return { outcome: 'directory-unavailable', ...none, filter, detail: describe(err) };
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
      const entries = await this.search({ filter, attributes: ['1.1'], sizeLimit: 1, cache: true });
      return { outcome: entries.length > 0 ? 'allowed' : 'not-allowed', filter };
    } catch (err) {
      return { outcome: 'directory-unavailable', filter, detail: describe(err) };
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
    const idAttribute = q.userIdAttribute || 'uid';
    try {
      const entries = await this.search({ filter, attributes: [idAttribute], sizeLimit: 2, cache: true });
      if (entries.length === 0) return { outcome: 'none', ...none, filter };
      if (entries.length > 1) return { outcome: 'many', ...none, filter, detail: 'the query matched several entries' };
      const entry = entries[0] as Entry;
      const userId = firstValue(entry, idAttribute);
      if (userId === null) return { outcome: 'none', dn: entry.dn, userId: null, filter, detail: `the entry has no ${idAttribute}` };
      return { outcome: 'one', dn: entry.dn, userId, filter };
    } catch (err) {
      return { outcome: 'directory-unavailable', ...none, filter, detail: describe(err) };
    }
  }

  async close(): Promise<void> {
    this.cache.clear();
    for (const conn of this.userConnections) conn.destroy();
    await this.pool.close();
  }

  // -- internals ------------------------------------------------------------

  private report(kind: QueryInfo['kind'], startedAt: number, ok: boolean): void {
    try {
      this.onQuery?.({ kind, durationMs: performance.now() - startedAt, ok });
    } catch {
      // Metrics must never change an authentication decision.
    }
  }

  /** Opens a service connection bound as the profile's bind DN (or anonymously). */
  private openService(): Promise<Connection> {
    const bind = this.profile.bind;
    if (bind && (!bind.dn || !bind.password)) {
      // Never send an unauthenticated bind (DN without password): some servers treat it as anonymous.
      return Promise.reject(new DirectoryUnavailableError(`LDAP profile ${this.profile.name}: bind DN without a password`));
    }
    return this.connector
      .open(async (client) => {
        // An explicit anonymous bind also proves the host answers before we commit to it.
        await (bind ? client.bind(bind.dn, bind.password ?? '') : client.bind('', ''));
      })
      .catch((err: unknown) => {
        if (err instanceof DirectoryUnavailableError) throw err;
        throw new DirectoryUnavailableError(`service bind failed: ${describe(err)}`);
      });
  }

  private async search(spec: SearchSpec): Promise<Entry[]> {
    if (this.configError) throw new DirectoryUnavailableError(this.configError);
    const key = JSON.stringify([spec.filter, spec.attributes, spec.sizeLimit]);
    if (spec.cache) {
      const hit = this.cache.get(key);
      if (hit) return hit;
    }
    let ldapFilter: Filter;
    try {
      ldapFilter = toLdapFilter(parseFilter(spec.filter));
    } catch (err) {
      if (err instanceof FilterSyntaxError) throw new DirectoryUnavailableError(`query of LDAP profile ${this.profile.name}: ${err.message}`);
      throw err;
    }
    const entries = await this.searchOnPool(ldapFilter, spec);
    if (spec.cache) this.cache.set(key, entries);
    return entries;
  }

  private async searchOnPool(filter: Filter, spec: SearchSpec): Promise<Entry[]> {
    // A pooled connection may have died while idle: one retry on a fresh connection.
    for (let attempt = 0; ; attempt++) {
      const startedAt = performance.now();
      let acquired: { conn: Connection; reused: boolean };
      try {
        acquired = await this.pool.acquire();
      } catch (err) {
        this.report('search', startedAt, false);
        throw err;
      }
      try {
        const result = await acquired.conn.client.search(this.profile.baseDn, {
          scope: 'sub',
          filter,
          attributes: spec.attributes,
          sizeLimit: spec.sizeLimit,
          timeLimit: Math.max(1, Math.ceil(this.profile.timeoutMs / 1000)),
          derefAliases: 'never',
        });
        this.report('search', startedAt, true);
        this.pool.release(acquired.conn, true);
        return result.searchEntries;
      } catch (err) {
        this.report('search', startedAt, false);
        const transport = isTransportError(err);
        this.pool.release(acquired.conn, !transport);
        if (transport && acquired.reused && attempt === 0) continue;
        throw new DirectoryUnavailableError(`search failed: ${describe(err)}`);
      }
    }
  }

  /**
   * Binds as `dn` with `password` on a fresh connection, closed afterwards.
   * Returns null when the password is right, a reason when the directory
   * refused the identity; throws DirectoryUnavailableError otherwise.
   */
  private async userBind(dn: string, password: string): Promise<string | null> {
    if (password === '') return 'empty password'; // defence in depth, see authenticate()
    let refused: string | null = null;
    let conn: Connection;
    try {
      conn = await this.connector.open(
        async (client) => {
          try {
            await client.bind(dn, password);
          } catch (err) {
            const code = err instanceof ResultCodeError ? err.code : undefined;
            const name = code === undefined ? undefined : REFUSED_BIND_CODES.get(code);
            if (name === undefined) throw err;
            refused = `bind refused: ${name}`;
          }
        },
        (startedAt, err) => this.report('bind', startedAt, err === null || !isTransportError(err)),
      );
    } catch (err) {
      if (err instanceof DirectoryUnavailableError) throw err;
      throw new DirectoryUnavailableError(`bind failed: ${describe(err)}`);
    }
    this.userConnections.add(conn);
    try {
      await conn.client.unbind().catch(() => undefined);
    } finally {
      conn.destroy();
      this.userConnections.delete(conn);
    }
    return refused;
  }
}

function missingValueDetail(username: string): string {
  return username === '' ? 'empty user name' : 'the query uses a token without a value';
}

function profileError(p: LdapProfileConfig): string | null {
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
