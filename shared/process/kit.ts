// What every certgate process does the same way (SPEC §1): read its environment, exit
// non-zero with a one-line reason when it is unusable, reach Redis the same way (one
// connection factory, one connection for commands, one subscriber, one configuration
// follower per process), and drain on SIGTERM.
import { statSync } from 'node:fs';
import type { Redis } from 'ioredis';
import { pino, type Logger } from 'pino';
import { ConfigFollower, DEFAULT_POLL_MS, type FollowMode } from '../config/follower.ts';
import { RedisSettingsError, checkRedis, redisConnector, redisSettings, type RedisConnector } from '../redis/connection.ts';
import { Subscriptions } from '../redis/subscriptions.ts';
import type { MinimalLogger } from '../util/logger.ts';

/** A process's Redis: what every part of it shares. */
export interface ProcessRedis {
  connector: RedisConnector;
  /** The `commands` connection everything in the process shares. */
  redis: Redis;
  subscriptions: Subscriptions;
  /** Started: the configuration was loaded once. */
  follower: ConfigFollower;
  close(): Promise<void>;
}

export interface ProcessKit {
  logger: Logger;
  /** Logs, prints `certgate <name>: <reason>` on stderr and exits 1. */
  fatal(reason: string): never;
  /** An integer variable within [min, max], or `fallback` when unset. */
  intEnv(name: string, fallback: number, min: number, max: number): number;
  /**
   * The Redis settings (REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD)
   * checked to reach a writable master within 10 s, the shared connections and the started
   * configuration follower. `pollMs` replaces CONFIG_POLL_SECONDS (default 5, 0: no poll). Fatal
   * with the reason when the settings cannot work.
   */
  connectRedis(mode: FollowMode, pollMs?: number | null): Promise<ProcessRedis>;
  /** The checked Redis settings alone, as a connector (for a process that follows nothing, like the cluster primary). */
  redisConnector(): Promise<RedisConnector>;
  /** CRL_FILE_ROOT: the only directory `file:` CRL URLs may read; null when unset (then they are refused). */
  crlFileRoot(): string | null;
  /**
   * On SIGTERM/SIGINT: runs `stop` once, exits 0 when it is done, exits 1 if it takes more
   * than `timeoutMs`. Install it early: a signal during start-up then still stops cleanly.
   */
  onShutdown(stop: () => Promise<unknown>, timeoutMs?: number): void;
}

/** The shared connections and the started follower of a process (also for tests and benchmarks). */
export async function openProcessRedis(
  connector: RedisConnector,
  o: { name: string; mode: FollowMode; pollMs: number | null; logger: MinimalLogger },
): Promise<ProcessRedis> {
  const redis = connector.connect(o.name, 'commands');
  const subscriptions = new Subscriptions(connector.connect(`${o.name}-subscriber`, 'subscriber'));
  const follower = new ConfigFollower({ redis, subscriptions, mode: o.mode, pollMs: o.pollMs, logger: o.logger });
  await follower.start();
  return {
    connector, redis, subscriptions, follower,
    async close() {
      await follower.stop();
      subscriptions.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}

export function processKit(name: string): ProcessKit {
  const logger = pino({ name: `certgate-${name}`, level: process.env.LOG_LEVEL || 'info' });
  const fatal = (reason: string): never => {
    logger.fatal(reason);
    process.stderr.write(`certgate ${name}: ${reason}\n`);
    process.exit(1);
  };
  const kit: ProcessKit = {
    logger,
    fatal,
    intEnv(variable, fallback, min, max) {
      const raw = process.env[variable];
      if (raw === undefined || raw === '') return fallback;
      const n = Number(raw);
      if (!/^[0-9]+$/.test(raw) || n < min || n > max) fatal(`${variable} must be an integer from ${min} to ${max}, not "${raw}"`);
      return n;
    },
    crlFileRoot() {
      const raw = process.env.CRL_FILE_ROOT;
      if (raw === undefined || raw === '') return null;
      let isDir = false;
      try {
        isDir = statSync(raw).isDirectory();
      } catch (err) {
        fatal(`CRL_FILE_ROOT "${raw}" is not accessible: ${(err as Error).message}`);
      }
      if (!isDir) fatal(`CRL_FILE_ROOT "${raw}" is not a directory`);
      return raw;
    },
    async redisConnector() {
      let settings;
      try {
        settings = redisSettings(process.env);
      } catch (err) {
        if (err instanceof RedisSettingsError) fatal(err.message);
        throw err;
      }
      const reason = await checkRedis(settings);
      if (reason) fatal(reason);
      return redisConnector(settings, logger);
    },
    async connectRedis(mode, pollMs) {
      const connector = await kit.redisConnector();
      const poll = pollMs !== undefined ? pollMs : kit.intEnv('CONFIG_POLL_SECONDS', DEFAULT_POLL_MS / 1000, 0, 3600) * 1000 || null;
      return openProcessRedis(connector, { name, mode, pollMs: poll, logger });
    },
    onShutdown(stop, timeoutMs = 35_000) {
      let stopping = false;
      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        process.on(signal, () => {
          if (stopping) return;
          stopping = true;
          logger.info({ signal }, 'draining');
          setTimeout(() => fatal(`still draining after ${timeoutMs / 1000} s; exiting`), timeoutMs).unref();
          stop().then(
            () => process.exit(0),
            (err: Error) => fatal(`error while draining: ${err.message}`),
          );
        });
      }
    },
  };
  return kit;
}
