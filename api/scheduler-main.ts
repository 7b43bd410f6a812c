// `npm run start:scheduler`: the CRL scheduler alone (SPEC §1), for an API run with
// SCHEDULER=off. Reads REDIS_URL and CRL_FILE_ROOT; logs JSON lines; exits non-zero with
// a one-line reason when they are unusable; SIGTERM closes the queue and the worker
// (a download in progress finishes first).
import { statSync } from 'node:fs';
import { pino } from 'pino';
import { Redis } from 'ioredis';
import { startCrlScheduler, type CrlScheduler } from './crl-scheduler.ts';

const logger = pino({ name: 'certgate-scheduler', level: process.env.LOG_LEVEL || 'info' });
const REDIS_CONNECT_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 30_000;

function fatal(reason: string): never {
  logger.fatal(reason);
  process.stderr.write(`certgate scheduler: ${reason}\n`);
  process.exit(1);
}

/** The URL with its password masked, for messages. */
function safeUrl(url: URL): string {
  const copy = new URL(url);
  if (copy.password) copy.password = '***';
  return copy.toString();
}

function fileRootEnv(): string | null {
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
}

/** Fails fast with a reason instead of letting ioredis retry forever. */
async function checkRedis(url: string, shown: string): Promise<void> {
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
}

const redisUrlText = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const redisUrl = URL.canParse(redisUrlText) ? new URL(redisUrlText) : null;
if (!redisUrl || !/^rediss?:$/.test(redisUrl.protocol)) fatal(`REDIS_URL must be a redis:// or rediss:// URL, not "${redisUrlText}"`);
const fileRoot = fileRootEnv();
if (fileRoot === null) logger.info('CRL_FILE_ROOT is not set: file: CRL URLs are refused');

await checkRedis(redisUrlText, safeUrl(redisUrl));
const starting: Promise<CrlScheduler> = startCrlScheduler({ redisUrl: redisUrlText, logger, fileRoot });

// Installed before the start completes, so a signal during it still stops cleanly (after it).
let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    setTimeout(() => fatal(`still stopping after ${STOP_TIMEOUT_MS / 1000} s; exiting`), STOP_TIMEOUT_MS).unref();
    starting
      .then((scheduler) => scheduler.stop())
      .then(
        () => process.exit(0),
        (err: Error) => fatal(`error while stopping: ${err.message}`),
      );
  });
}

try {
  await starting;
} catch (err) {
  fatal(`cannot start: ${(err as Error).message}`);
}
