// `npm run start:api`: the control-plane API (SPEC §1). Reads REDIS_URL, API_HOST,
// API_PORT, API_TOKEN and SCHEDULER; exits non-zero with a one-line reason when they are
// unusable; drains on SIGTERM.
import { once } from 'node:events';
import { pino } from 'pino';
import { Redis } from 'ioredis';
import { buildApp } from './app.ts';

const logger = pino({ name: 'certgate-api' });
const REDIS_CONNECT_TIMEOUT_MS = 10_000;
const DRAIN_TIMEOUT_MS = 30_000;

function fatal(reason: string): never {
  logger.fatal(reason);
  process.stderr.write(`certgate api: ${reason}\n`);
  process.exit(1);
}

function portEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw);
  if (!/^[0-9]+$/.test(raw) || port < 1 || port > 65535) fatal(`${name} must be a port number from 1 to 65535, not "${raw}"`);
  return port;
}

/** The URL with its password masked, for logs. */
function safeUrl(url: URL): string {
  const copy = new URL(url);
  if (copy.password) copy.password = '***';
  return copy.toString();
}

const redisUrlText = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const redisUrl = URL.canParse(redisUrlText) ? new URL(redisUrlText) : null;
if (!redisUrl || !/^rediss?:$/.test(redisUrl.protocol)) fatal(`REDIS_URL must be a redis:// or rediss:// URL, not "${redisUrlText}"`);
const host = process.env.API_HOST || '127.0.0.1';
const port = portEnv('API_PORT', 8080);
const apiToken = process.env.API_TOKEN || undefined;
const scheduler = process.env.SCHEDULER || 'on';
if (scheduler !== 'on' && scheduler !== 'off') fatal(`SCHEDULER must be "on" or "off", not "${scheduler}"`);

/**
 * HOOK: the CRL scheduler (BullMQ job schedulers downloading the CRL sources, SPEC §2.6)
 * starts here, inside the API process, unless SCHEDULER=off (it then runs alone with
 * `npm run start:scheduler`). Returns what stops it on shutdown.
 */
async function startCrlScheduler(): Promise<() => Promise<void>> {
  if (scheduler === 'off') {
    logger.info('CRL scheduler not started here (SCHEDULER=off)');
  } else {
    logger.warn('CRL scheduler is not implemented yet: CRL sources are saved but not downloaded');
  }
  return async () => undefined;
}

const redis = new Redis(redisUrlText, { maxRetriesPerRequest: 2, lazyConnect: true });
let lastRedisError = 'timed out';
redis.on('error', (err: Error) => {
  lastRedisError = err.message;
  logger.warn({ err: err.message }, 'Redis connection error');
});
try {
  await Promise.race([
    redis.connect(),
    once(redis, 'end').then(() => Promise.reject(new Error(lastRedisError))),
    new Promise((_, reject) => setTimeout(() => reject(new Error(lastRedisError)), REDIS_CONNECT_TIMEOUT_MS).unref()),
  ]);
} catch {
  fatal(`cannot connect to Redis at ${safeUrl(redisUrl)}: ${lastRedisError}`);
}

if (!apiToken) logger.warn('API_TOKEN is not set: only tokens created earlier (stored in Redis) are accepted');
const app = await buildApp({ redis, apiToken, logger: { name: 'certgate-api', level: process.env.LOG_LEVEL || 'info' } });
const stopScheduler = await startCrlScheduler();
try {
  await app.listen({ host, port });
} catch (err) {
  fatal(`cannot listen on ${host}:${port}: ${(err as Error).message}`);
}
logger.info({ host, port, redis: safeUrl(redisUrl) }, 'API started');

let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'draining');
    setTimeout(() => fatal(`still draining after ${DRAIN_TIMEOUT_MS / 1000} s; exiting`), DRAIN_TIMEOUT_MS).unref();
    Promise.all([app.close(), stopScheduler()])
      .then(() => redis.quit())
      .then(
        () => process.exit(0),
        (err: Error) => fatal(`error while draining: ${err.message}`),
      );
  });
}
