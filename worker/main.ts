// `npm run start:worker`: one stateless SMTP worker (SPEC §1).
import os from 'node:os';
import { CrlStore } from '../shared/pki/crl/store.ts';
import { processKit } from '../shared/process/kit.ts';
import { Gateway } from './gateway.ts';
import { WorkerMetrics } from './metrics.ts';

const kit = processKit('worker');
const { logger, fatal } = kit;
const redis = kit.redisUrl();
const portOffset = kit.intEnv('WORKER_PORT_OFFSET', 0, 0, 60000);
const metricsPort = kit.intEnv('METRICS_PORT', 9465 + portOffset, 1, 65535);
const metricsHost = process.env.METRICS_HOST || '127.0.0.1';
const workerId = process.env.WORKER_ID || `${os.hostname()}-${process.pid}`;

await kit.checkRedis(redis.url, redis.shown);
const metrics = new WorkerMetrics();
const crls = new CrlStore(redis.url, logger);
const gateway = new Gateway({ redisUrl: redis.url, workerId, portOffset, logger, metrics, crls });
// Sessions in flight get 30 s (SPEC §1); a little more for the rest of the shutdown.
kit.onShutdown(async () => {
  await gateway.stop();
  await crls.stop();
}, 40_000);

try {
  await metrics.serve(metricsHost, metricsPort);
  // CRLs first: no session may be accepted before the revocation data is in force.
  await crls.start();
  await gateway.start();
} catch (err) {
  fatal(`cannot start: ${(err as Error).message}`);
}
logger.info({ workerId, portOffset, metricsPort, redis: redis.shown }, 'worker started');
