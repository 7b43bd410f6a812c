// What every certgate process does the same way (SPEC §1): read its environment, exit
// non-zero with a one-line reason when it is unusable, and drain on SIGTERM.
import { statSync } from 'node:fs';
import { Redis } from 'ioredis';
import { pino, type Logger } from 'pino';

export interface ProcessKit {
  logger: Logger;
  /** Logs, prints `certgate <name>: <reason>` on stderr and exits 1. */
  fatal(reason: string): never;
  /** An integer variable within [min, max], or `fallback` when unset. */
  intEnv(name: string, fallback: number, min: number, max: number): number;
  /** REDIS_URL (default redis://127.0.0.1:6379), checked to be a redis URL; `shown` has the password masked. */
  redisUrl(): { url: string; shown: string };
  /** CRL_FILE_ROOT: the only directory `file:` CRL URLs may read; null when unset (then they are refused). */
  crlFileRoot(): string | null;
  /** Fails fast with a reason when Redis cannot be reached within 10 s (instead of ioredis retrying forever). */
  checkRedis(url: string, shown: string): Promise<void>;
  /**
   * On SIGTERM/SIGINT: runs `stop` once, exits 0 when it is done, exits 1 if it takes more
   * than `timeoutMs`. Install it early: a signal during start-up then still stops cleanly.
   */
  onShutdown(stop: () => Promise<unknown>, timeoutMs?: number): void;
}

const REDIS_CONNECT_TIMEOUT_MS = 10_000;

export function processKit(name: string): ProcessKit {
  const logger = pino({ name: `certgate-${name}`, level: process.env.LOG_LEVEL || 'info' });
  const fatal = (reason: string): never => {
    logger.fatal(reason);
    process.stderr.write(`certgate ${name}: ${reason}\n`);
    process.exit(1);
  };
  return {
    logger,
    fatal,
    intEnv(variable, fallback, min, max) {
      const raw = process.env[variable];
      if (raw === undefined || raw === '') return fallback;
      const n = Number(raw);
      if (!/^[0-9]+$/.test(raw) || n < min || n > max) fatal(`${variable} must be an integer from ${min} to ${max}, not "${raw}"`);
      return n;
    },
    redisUrl() {
      const url = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
      const parsed = URL.canParse(url) ? new URL(url) : null;
      if (!parsed || !/^rediss?:$/.test(parsed.protocol)) return fatal(`REDIS_URL must be a redis:// or rediss:// URL, not "${url}"`);
      if (parsed.password) parsed.password = '***';
      return { url, shown: parsed.toString() };
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
    async checkRedis(url, shown) {
      const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      let lastError = 'timed out';
      probe.on('error', (err: Error) => (lastError = err.message));
      try {
        await Promise.race([
          probe.connect(),
          new Promise((_, reject) => setTimeout(() => reject(new Error(lastError)), REDIS_CONNECT_TIMEOUT_MS).unref()),
        ]);
        await probe.ping();
      } catch {
        probe.disconnect();
        fatal(`cannot connect to Redis at ${shown}: ${lastError}`);
      }
      await probe.quit();
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
}
