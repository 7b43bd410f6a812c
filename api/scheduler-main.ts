// `npm run start:scheduler`: the CRL scheduler alone (SPEC §1), for an API run with
// SCHEDULER=off. Reads REDIS_URL and CRL_FILE_ROOT; logs JSON lines; exits non-zero with
// a one-line reason when they are unusable (the REDIS_SENTINEL* set too); SIGTERM closes the queue and the worker
// (a download in progress finishes first).
import { processKit } from '../shared/process/kit.ts';
import { startCrlScheduler, type CrlScheduler } from './crl-scheduler.ts';

const kit = processKit('scheduler');
const { logger, fatal } = kit;
const fileRoot = kit.crlFileRoot();
if (fileRoot === null) logger.info('CRL_FILE_ROOT is not set: file: CRL URLs are refused');

const shared = await kit.connectRedis('mirror');
const { connector, redis, subscriptions, follower } = shared;
const starting: Promise<CrlScheduler> = startCrlScheduler({ connector, redis, subscriptions, follower, logger, fileRoot });
kit.onShutdown(async () => {
  await (await starting).stop();
  await shared.close();
});

try {
  await starting;
} catch (err) {
  fatal(`cannot start: ${(err as Error).message}`);
}
logger.info({ redis: connector.settings.shown, fileRoot }, 'CRL scheduler started');
