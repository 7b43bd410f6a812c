// `npm run start:api`: the control-plane API (SPEC §1). Reads REDIS_URL, API_HOST,
// API_PORT, API_TOKEN, SCHEDULER, CRL_FILE_ROOT and, for mutual TLS, API_TLS_CERT,
// API_TLS_KEY and API_CLIENT_CA; exits non-zero with a one-line reason when they are
// unusable; drains on SIGTERM.
import { Redis } from 'ioredis';
import { CrlStore } from '../shared/pki/crl/store.ts';
import { processKit } from '../shared/process/kit.ts';
import { buildApp } from './app.ts';
import { connectCrlRefreshClient, startCrlScheduler } from './crl-scheduler.ts';
import { httpsOptionsFromEnv } from './mtls.ts';

const kit = processKit('api');
const { logger, fatal } = kit;
const redisUrl = kit.redisUrl();
const host = process.env.API_HOST || '127.0.0.1';
const port = kit.intEnv('API_PORT', 8080, 1, 65535);
const apiToken = process.env.API_TOKEN || undefined;
const scheduler = process.env.SCHEDULER || 'on';
if (scheduler !== 'on' && scheduler !== 'off') fatal(`SCHEDULER must be "on" or "off", not "${scheduler}"`);
const fileRoot = kit.crlFileRoot();
let https: ReturnType<typeof httpsOptionsFromEnv> = null;
try {
  https = httpsOptionsFromEnv(process.env);
} catch (err) {
  fatal((err as Error).message);
}

await kit.checkRedis(redisUrl.url, redisUrl.shown);
const redis = new Redis(redisUrl.url, { maxRetriesPerRequest: 2 });
redis.on('error', (err: Error) => logger.warn({ err: err.message }, 'Redis connection error'));
if (!apiToken) logger.warn('API_TOKEN is not set: only tokens created earlier (stored in Redis) are accepted');

// SCHEDULER=on: CRL downloads run here; off: `npm run start:scheduler` runs them and
// on-demand refreshes go to it through the queue.
const crl = scheduler === 'on'
  ? await startCrlScheduler({ redisUrl: redisUrl.url, logger, fileRoot })
  : await connectCrlRefreshClient({ redisUrl: redisUrl.url });
// Mutual TLS (webInterface): client certificates are checked against the CRLs in force.
const crls = https ? new CrlStore(redis, logger) : null;
await crls?.start();

const app = await buildApp({
  redis, apiToken, https: https ?? undefined, crls: crls ?? undefined, crlRefresh: (name) => crl.refresh(name),
  logger: { name: 'certgate-api', level: process.env.LOG_LEVEL || 'info' },
});
kit.onShutdown(async () => {
  await Promise.all([app.close(), 'stop' in crl ? crl.stop() : crl.close(), crls?.stop()]);
  await redis.quit();
});
try {
  await app.listen({ host, port });
} catch (err) {
  fatal(`cannot listen on ${host}:${port}: ${(err as Error).message}`);
}
logger.info({ host, port, redis: redisUrl.shown, scheduler, tls: Boolean(https) }, 'API started');
