// `npm run start:api`: the control-plane API (SPEC §1). Reads REDIS_URL (or the REDIS_SENTINEL* set), API_HOST,
// API_PORT, API_TOKEN, SCHEDULER, CRL_FILE_ROOT and, for mutual TLS, API_TLS_CERT,
// API_TLS_KEY and API_CLIENT_CA; exits non-zero with a one-line reason when they are
// unusable; drains on SIGTERM.
import { CrlStore } from '../shared/pki/crl/store.ts';
import { processKit } from '../shared/process/kit.ts';
import { buildApp } from './app.ts';
import { connectCrlRefreshClient, startCrlScheduler } from './crl-scheduler.ts';
import { httpsOptionsFromEnv } from './mtls.ts';

const kit = processKit('api');
const { logger, fatal } = kit;
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

// One follower for the whole process: the routes' cache, the scheduler and the CRL store.
const shared = await kit.connectRedis('mirror');
const { redis, follower, subscriptions, connector } = shared;
if (!apiToken) logger.warn('API_TOKEN is not set: only tokens created earlier (stored in Redis) are accepted');

// SCHEDULER=on: CRL downloads run here; off: `npm run start:scheduler` runs them and
// on-demand refreshes go to it through the queue.
const crl = scheduler === 'on'
  ? await startCrlScheduler({ connector, redis, subscriptions, follower, logger, fileRoot })
  : await connectCrlRefreshClient({ connector });
// Mutual TLS (webInterface): client certificates are checked against the CRLs in force.
const crls = https ? new CrlStore({ redis, subscriptions, follower, logger }) : null;
await crls?.start();

const app = await buildApp({
  redis, follower, apiToken, https: https ?? undefined, crls: crls ?? undefined, crlRefresh: (name) => crl.refresh(name),
  logger: { name: 'certgate-api', level: process.env.LOG_LEVEL || 'info' },
});
kit.onShutdown(async () => {
  await Promise.all([app.close(), 'stop' in crl ? crl.stop() : crl.close(), crls?.stop()]);
  await shared.close();
});
try {
  await app.listen({ host, port });
} catch (err) {
  fatal(`cannot listen on ${host}:${port}: ${(err as Error).message}`);
}
logger.info({ host, port, redis: connector.settings.shown, scheduler, tls: Boolean(https) }, 'API started');
