// Every Redis connection of every certgate process (API, worker, scheduler, BullMQ's
// included) comes from here, so that all of them find Redis the same way (SPEC §1,
// "Redis high availability"):
//
// - `REDIS_URL` (default redis://127.0.0.1:6379) names one Redis server; or
// - `REDIS_SENTINELS` (`host:port,host:port`) and `REDIS_SENTINEL_MASTER` name Redis
//   Sentinels and the master they watch, and `REDIS_SENTINEL_PASSWORD` the sentinels'
//   password; REDIS_URL then gives only the password, the database and TLS (rediss:,
//   then used for the sentinels too). Its host and port are not used.
//
// What it promises:
// - settings that cannot work are refused with a one-line reason (`RedisSettingsError`,
//   `checkRedis`), never an uncaught error from a client: e.g. REDIS_URL at a sentinel,
//   a "sentinel" that is a plain Redis server, a master name no sentinel knows;
// - a failover is followed without a restart: behind sentinels every connection asks
//   them for the master again when it reconnects, and drops its connection when a
//   sentinel announces a new master (+switch-master), even if the old one is still up;
// - a connection that lands on a read-only replica (a write answered READONLY, as after
//   a master was demoted under it) is re-established to the master and the write resent;
// - a connection the client library gave up on by itself is connected again
//   (`KeptRedis`); only its owner's quit or disconnect ends one;
// - connection errors are logged once when they start and every 30 s while they last,
//   not once per reconnect attempt, and recovery is logged.
import { Redis, type RedisOptions } from 'ioredis';
import type { MinimalLogger } from '../util/logger.ts';

export interface RedisSettings {
  /** For logs: the URL with its password masked, or the sentinels and the master name. */
  shown: string;
  /** Options every connection starts from: the address (or the sentinels), password, database, TLS. */
  base: RedisOptions;
  sentinel: { addresses: Array<{ host: string; port: number }>; master: string } | null;
}

/** Settings that cannot work; the message is the one-line reason. */
export class RedisSettingsError extends Error {}

/**
 * What a connection is for:
 * - `commands`: ordinary commands; fails a command after two reconnect attempts or 10 s,
 *   so that a caller (an HTTP request, a heartbeat) gets an error instead of hanging;
 * - `subscriber`: pub/sub (ioredis resubscribes after a reconnect);
 * - `bullmq`: BullMQ queues and workers, which need commands to wait for a reconnect
 *   (`maxRetriesPerRequest: null`) and use blocking commands (no command timeout).
 */
export type ConnectionRole = 'commands' | 'subscriber' | 'bullmq';

const DEFAULT_URL = 'redis://127.0.0.1:6379';
const DEFAULT_SENTINEL_PORT = 26379;
const CONNECT_TIMEOUT_MS = 10_000;
const COMMAND_TIMEOUT_MS = 10_000;
const ERROR_LOG_INTERVAL_MS = 30_000;

/** Reads the settings from the environment; throws RedisSettingsError with the reason. */
export function redisSettings(env: Record<string, string | undefined>): RedisSettings {
  const url = env.REDIS_URL || DEFAULT_URL;
  const parsed = URL.canParse(url) ? new URL(url) : null;
  if (!parsed || !/^rediss?:$/.test(parsed.protocol)) throw new RedisSettingsError(`REDIS_URL must be a redis:// or rediss:// URL, not "${url}"`);
  const masked = new URL(url);
  if (masked.password) masked.password = '***';
  if (parsed.search) throw new RedisSettingsError(`REDIS_URL takes no query parameters (${masked})`);
  const dbText = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
  if (dbText !== '' && !/^[0-9]{1,5}$/.test(dbText)) throw new RedisSettingsError(`REDIS_URL's path must be a database number, not "/${dbText}" (${masked})`);
  const tls = parsed.protocol === 'rediss:' ? { servername: parsed.hostname || undefined } : undefined;
  const auth: RedisOptions = {
    username: parsed.username ? decodeURIComponent(parsed.username) : undefined,
    password: parsed.password ? decodeURIComponent(parsed.password) : undefined,
    db: dbText === '' ? 0 : Number(dbText),
  };

  const sentinels = env.REDIS_SENTINELS || '';
  const master = env.REDIS_SENTINEL_MASTER || '';
  const sentinelPassword = env.REDIS_SENTINEL_PASSWORD || undefined;
  if (!sentinels) {
    if (master) throw new RedisSettingsError('REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not: set both to use Redis Sentinel');
    if (sentinelPassword) throw new RedisSettingsError('REDIS_SENTINEL_PASSWORD is set but REDIS_SENTINELS is not: set both to use Redis Sentinel');
    const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
    const port = parsed.port ? Number(parsed.port) : 6379;
    return { shown: masked.toString(), base: { ...auth, host, port, tls }, sentinel: null };
  }
  if (!master) throw new RedisSettingsError('REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not: name the master the sentinels watch');
  const addresses = sentinels.split(',').map((s) => parseSentinel(s.trim()));
  return {
    shown: `sentinels ${addresses.map((a) => `${a.host}:${a.port}`).join(',')} master "${master}"${auth.db ? ` db ${auth.db}` : ''}${tls ? ' (TLS)' : ''}`,
    base: {
      ...auth,
      sentinels: addresses,
      name: master,
      sentinelPassword,
      // rediss: means TLS everywhere: to the master and replicas, and to the sentinels.
      ...(tls ? { tls: {}, enableTLSForSentinelMode: true, sentinelTLS: {} } : {}),
      // Drop the connection when a sentinel announces a new master (the old one may still be up).
      failoverDetector: true,
      sentinelMaxConnections: 3,
    },
    sentinel: { addresses, master },
  };
}

function parseSentinel(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+))(?::([0-9]{1,5}))?$/.exec(text);
  const port = m?.[3] === undefined ? DEFAULT_SENTINEL_PORT : Number(m[3]);
  if (!m || port < 1 || port > 65535) throw new RedisSettingsError(`REDIS_SENTINELS must be host:port[,host:port...], not "${text}"`);
  return { host: m[1] ?? m[2], port };
}

export interface RedisConnector {
  readonly settings: RedisSettings;
  /** A new connection; the caller owns it (quit or disconnect it). `purpose` names it in logs and in CLIENT LIST. */
  connect(purpose: string, role?: ConnectionRole, extra?: RedisOptions): Redis;
}

/** `settings`: from redisSettings(), or a plain redis:// URL (tests). */
export function redisConnector(settings: RedisSettings | string, logger: MinimalLogger): RedisConnector {
  const s = typeof settings === 'string' ? redisSettings({ REDIS_URL: settings }) : settings;
  return {
    settings: s,
    connect(purpose, role = 'commands', extra = {}) {
      return new KeptRedis({ ...s.base, ...roleOptions(role), connectionName: `certgate:${purpose}`, ...extra }, purpose, logger);
    },
  };
}

/** How long an ended connection waits before connecting again: no busy loop if it ends again at once. */
const CONNECT_AGAIN_MS = 500;

/**
 * A connection that is connected again when ioredis ends it by itself. ioredis 6 ends a
 * sentinel connection for good (status `end`, every command "Connection is closed.")
 * when its failover detector drops it during a reconnect, while it is asking a sentinel
 * for the master: a +switch-master in that window, as after a kill -9 of the master, makes
 * SentinelConnector.connect reject and Redis#_connect give up. Only the owner's quit() or
 * disconnect() ends a KeptRedis; duplicate() (BullMQ's blocking connections, the API's
 * subscriber) makes another KeptRedis, logged under the same purpose.
 */
class KeptRedis extends Redis {
  private closedByOwner = false;

  constructor(options: RedisOptions, private readonly purpose: string, private readonly logger: MinimalLogger) {
    super({ ...options, replyMapping: 'legacy' }); // the replies every caller expects (ioredis's default)
    watchErrors(this, purpose, logger);
    this.on('end', () => {
      if (this.closedByOwner) return;
      logger.warn({ connection: purpose }, 'Redis connection ended by the client library; connecting again');
      setTimeout(() => {
        if (!this.closedByOwner && this.status === 'end') this.connect().catch(() => undefined); // errors reach the 'error' listener
      }, CONNECT_AGAIN_MS).unref();
    });
  }

  override disconnect(reconnect = false): void {
    if (!reconnect) this.closedByOwner = true;
    super.disconnect(reconnect);
  }

  override quit(callback?: Parameters<Redis['quit']>[0]): ReturnType<Redis['quit']> {
    this.closedByOwner = true;
    return super.quit(callback);
  }

  override duplicate(override?: Partial<RedisOptions>): Redis {
    return new KeptRedis({ ...this.options, ...override }, this.purpose, this.logger);
  }
}

function roleOptions(role: ConnectionRole): RedisOptions {
  const common: RedisOptions = {
    connectTimeout: CONNECT_TIMEOUT_MS,
    // 2: reconnect (behind sentinels: to the master they name now) and resend the command.
    reconnectOnError: (err) => (err.message.startsWith('READONLY') ? 2 : false),
  };
  if (role === 'bullmq') return { ...common, maxRetriesPerRequest: null };
  if (role === 'subscriber') return { ...common, maxRetriesPerRequest: null };
  return { ...common, maxRetriesPerRequest: 2, commandTimeout: COMMAND_TIMEOUT_MS };
}

function watchErrors(conn: Redis, purpose: string, logger: MinimalLogger): void {
  let failingSince: number | null = null;
  let lastLogged = 0;
  conn.on('error', (err: Error) => {
    const now = Date.now();
    if (failingSince === null) failingSince = now;
    if (now - lastLogged < ERROR_LOG_INTERVAL_MS) return;
    lastLogged = now;
    logger.warn({ connection: purpose, err: err.message, failingForSeconds: Math.round((now - failingSince) / 1000) }, 'Redis connection error');
  });
  conn.on('ready', () => {
    if (failingSince === null) return;
    logger.info({ connection: purpose, afterSeconds: Math.round((Date.now() - failingSince) / 1000) }, 'Redis connection back');
    failingSince = null;
    lastLogged = 0;
  });
}

/**
 * Checks at start-up that the settings reach a writable Redis master within 10 s; the
 * one-line reason when not, null when they do. Instead of a client retrying forever or
 * failing later with an error that names the symptom (a sentinel answering `ERR unknown
 * command`), the process can then exit saying what is wrong.
 */
export async function checkRedis(settings: RedisSettings): Promise<string | null> {
  if (settings.sentinel) {
    const reason = await checkSentinels(settings);
    if (reason) return reason;
  }
  const what = settings.sentinel ? `the master "${settings.sentinel.master}" named by the sentinels` : `Redis at ${settings.shown}`;
  const role = await probe({ ...settings.base, sentinelRetryStrategy: () => null }, (c) => c.call('ROLE'));
  if ('error' in role) return `cannot connect to ${what}: ${role.error}`;
  const kind = Array.isArray(role.value) ? String(role.value[0]) : '';
  if (kind === 'sentinel') {
    return `REDIS_URL (${settings.shown}) points at a Redis Sentinel, not a Redis server: set REDIS_SENTINELS=host:port,... and REDIS_SENTINEL_MASTER=<master name> instead`;
  }
  if (kind === 'slave') return `${what} is a read-only replica: point REDIS_URL at the master, or use REDIS_SENTINELS and REDIS_SENTINEL_MASTER`;
  return null;
}

/** Every sentinel is asked for the master; fine when at least one knows it. */
async function checkSentinels(settings: RedisSettings): Promise<string | null> {
  const { addresses, master } = settings.sentinel!;
  const problems: string[] = [];
  const known = new Set<string>();
  let answered = false;
  for (const a of addresses) {
    const options: RedisOptions = {
      host: a.host, port: a.port, password: settings.base.sentinelPassword,
      tls: settings.base.sentinelTLS,
    };
    const answer = await probe(options, async (c) => {
      const masters = (await c.call('SENTINEL', 'MASTERS')) as string[][];
      return masters.map((fields) => fields[fields.indexOf('name') + 1]);
    });
    if ('error' in answer) {
      problems.push(`${a.host}:${a.port}: ${/unknown command/i.test(answer.error) ? 'a Redis server, not a sentinel' : answer.error}`);
      continue;
    }
    answered = true;
    if (answer.value.includes(master)) return null;
    for (const name of answer.value) known.add(name);
    problems.push(`${a.host}:${a.port}: does not watch "${master}"`);
  }
  if (!answered) return `no sentinel in REDIS_SENTINELS answered: ${problems.join('; ')}`;
  const hint = known.size ? ` (they watch: ${[...known].join(', ')})` : '';
  return `no sentinel in REDIS_SENTINELS knows the master "${master}" (REDIS_SENTINEL_MASTER)${hint}: ${problems.join('; ')}`;
}

/** One connection attempt without retries, one task, then the connection is dropped (no QUIT: a sentinel may not know it). */
async function probe<T>(options: RedisOptions, task: (c: Redis) => Promise<T>): Promise<{ value: T } | { error: string }> {
  const conn = new Redis({ ...options, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableReadyCheck: false, connectTimeout: CONNECT_TIMEOUT_MS });
  let lastError = 'timed out';
  conn.on('error', (err: Error) => (lastError = err.message));
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(lastError)), CONNECT_TIMEOUT_MS + 1000);
    });
    await Promise.race([conn.connect(), timeout]);
    return { value: await Promise.race([task(conn), timeout]) };
  } catch (err) {
    // A failed connect rejects with a generic "Connection is closed"; the error event said why.
    return { error: lastError !== 'timed out' ? lastError : (err as Error).message || lastError };
  } finally {
    clearTimeout(timer);
    conn.disconnect();
  }
}
