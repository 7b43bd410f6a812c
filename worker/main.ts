// `npm run start:worker`: one stateless SMTP worker (SPEC §1).
import os from 'node:os';
import { pino } from 'pino';
import { CrlStore } from '../shared/crl-store.ts';
import { Gateway } from './gateway.ts';
import { WorkerMetrics } from './metrics.ts';

const logger = pino({ name: 'certgate-worker', redact: ['*.password', '*.privateKeyPem', 'event.password'] });

function fatal(reason: string): never {
  logger.fatal(reason);
  process.stderr.write(`certgate worker: ${reason}\n`);
  process.exit(1);
}

function intEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) fatal(`${name} must be an integer from ${min} to ${max}, not "${raw}"`);
  return n;
}

const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
if (!/^rediss?:\/\//.test(redisUrl)) fatal(`REDIS_URL must be a redis:// or rediss:// URL, not "${redisUrl}"`);
const portOffset = intEnv('WORKER_PORT_OFFSET', 0, 0, 60000);
const metricsPort = intEnv('METRICS_PORT', 9465 + portOffset, 1, 65535);
const metricsHost = process.env.METRICS_HOST || '127.0.0.1';
const workerId = process.env.WORKER_ID || `${os.hostname()}-${process.pid}`;

const metrics = new WorkerMetrics();
const crls = new CrlStore(redisUrl, logger);
const gateway = new Gateway({ redisUrl, workerId, portOffset, logger, metrics, crls });

try {
  await metrics.serve(metricsHost, metricsPort);
  // CRLs first: no session may be accepted before the revocation data is in force.
  await crls.start();
  await gateway.start();
} catch (err) {
  fatal(`cannot start: ${(err as Error).message}`);
}
logger.info({ workerId, portOffset, metricsPort }, 'worker started');

let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'draining');
    gateway.stop().then(() => crls.stop()).then(
      () => process.exit(0),
      (err: Error) => fatal(`error while draining: ${err.message}`),
    );
  });
}
