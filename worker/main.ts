// `npm run start:worker`: one stateless SMTP worker (SPEC §1). Reads REDIS_URL (or the
// REDIS_SENTINEL* set), WORKER_ID, WORKER_PORT_OFFSET, WORKER_PROCESSES,
// WORKER_MAX_STALE_SECONDS, METRICS_HOST, METRICS_PORT, CONFIG_POLL_SECONDS; exits non-zero
// with a one-line reason when they are unusable; drains on SIGTERM.
//
// WORKER_PROCESSES=1 (the default): this process serves and shows the worker outside.
// More: this process is the cluster primary (worker/cluster.ts) and forks the serving ones,
// which run this file again and take the `cluster.isWorker` branch.
import cluster from 'node:cluster';
import os from 'node:os';
import { AggregatorRegistry } from 'prom-client';
import { DEFAULT_POLL_MS } from '../shared/config/follower.ts';
import { processKit } from '../shared/process/kit.ts';
import { reportToPrimary, Supervisor } from './cluster.ts';
import { parseProcesses } from './cpus.ts';
import { startEngine, type Engine } from './engine.ts';
import { Front } from './front.ts';

const kit = processKit('worker');
const { logger, fatal } = kit;
const portOffset = kit.intEnv('WORKER_PORT_OFFSET', 0, 0, 60000);
const metricsPort = kit.intEnv('METRICS_PORT', 9465 + portOffset, 1, 65535);
const metricsHost = process.env.METRICS_HOST || '127.0.0.1';
const workerId = process.env.WORKER_ID || `${os.hostname()}-${process.pid}`;
const processes = parseProcesses(process.env.WORKER_PROCESSES);
if (processes === null) fatal(`WORKER_PROCESSES must be a number from 1 to 256 or "auto", not "${process.env.WORKER_PROCESSES}"`);
const maxStaleSeconds = process.env.WORKER_MAX_STALE_SECONDS ? kit.intEnv('WORKER_MAX_STALE_SECONDS', 0, 1, 86_400) : null;
const pollSeconds = kit.intEnv('CONFIG_POLL_SECONDS', DEFAULT_POLL_MS / 1000, 0, 3600);
if (maxStaleSeconds !== null && pollSeconds === 0) fatal('CONFIG_POLL_SECONDS=0 cannot be used with WORKER_MAX_STALE_SECONDS: the poll is what confirms the configuration');
// The poll confirms the configuration: often enough that a healthy worker never looks stale.
const pollMs = pollSeconds === 0 ? null : Math.min(pollSeconds * 1000, maxStaleSeconds === null ? Infinity : Math.max(500, (maxStaleSeconds * 1000) / 3));
/** Sessions in flight get 30 s (SPEC §1); a little more for the rest of the shutdown. */
const SHUTDOWN_MS = 40_000;

const engineOptions = { kit, workerId, portOffset, maxStaleSeconds, pollMs };

if (cluster.isWorker) await serveInCluster();
else if (processes === 1) await serveAlone();
else await supervise(processes!);

/** The worker's only process. */
async function serveAlone(): Promise<void> {
  let engine: Engine | null = null;
  let front: Front | null = null;
  kit.onShutdown(async () => {
    front?.setDraining();
    await engine?.stop();
    await front?.stop();
  }, SHUTDOWN_MS);
  try {
    engine = await startEngine({ ...engineOptions, onApplied: () => front?.publishSoon() });
    const e = engine;
    front = new Front({
      workerId, logger, redis: e.shared.redis,
      reports: () => [e.report()],
      metrics: async () => ({ contentType: e.metrics.registry.contentType, body: await e.metrics.registry.metrics() }),
    });
    await front.listen(metricsHost, metricsPort);
    front.start();
  } catch (err) {
    fatal(`cannot start: ${(err as Error).message}`);
  }
  logger.info({ workerId, portOffset, metricsPort, processes: 1, redis: engine!.shared.connector.settings.shown, listenerErrors: engine!.report().listenerErrors }, 'worker started');
}

/** One of the cluster's serving processes. */
async function serveInCluster(): Promise<void> {
  const slot = process.env.CERTGATE_PROCESS_SLOT ?? '?';
  let engine: Engine | null = null;
  const reporter = reportToPrimary(() => engine);
  kit.onShutdown(async () => {
    reporter.stop();
    await engine?.stop();
  }, SHUTDOWN_MS);
  // The primary went away: nobody supervises or shows this process any more.
  process.on('disconnect', () => process.kill(process.pid, 'SIGTERM'));
  try {
    engine = await startEngine({ ...engineOptions, kit: { ...kit, logger: logger.child({ process: Number(slot) }) }, onApplied: () => reporter.now() });
  } catch (err) {
    fatal(`cannot start process ${slot}: ${(err as Error).message}`);
  }
  // Answers the primary's metrics requests with this registry (prom-client's cluster protocol).
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([engine!.metrics.registry]);
  reporter.now();
  logger.info({ workerId, process: Number(slot) }, 'worker process started');
}

/** The cluster primary: supervises the serving processes, shows the worker outside. */
async function supervise(n: number): Promise<void> {
  // Checked once here, so that bad settings end the worker instead of n processes restarting forever.
  const connector = await kit.redisConnector();
  const redis = connector.connect('worker-primary');
  const aggregator = new AggregatorRegistry();
  let front: Front | null = null;
  const supervisor = new Supervisor({ processes: n, env: { WORKER_ID: workerId }, logger, onChange: () => front?.publishSoon() });
  front = new Front({
    workerId, logger, redis,
    reports: () => supervisor.reports(),
    metrics: async () => ({ contentType: aggregator.contentType, body: await aggregator.clusterMetrics() }),
  });
  const f = front;
  kit.onShutdown(async () => {
    f.setDraining();
    const clean = await supervisor.stop(SHUTDOWN_MS - 5_000);
    await f.stop();
    redis.disconnect();
    if (!clean) throw new Error('a worker process did not drain cleanly');
  }, SHUTDOWN_MS);
  try {
    await front.listen(metricsHost, metricsPort);
  } catch (err) {
    fatal(`cannot start: ${(err as Error).message}`);
  }
  supervisor.start();
  front.start();
  logger.info({ workerId, portOffset, metricsPort, processes: n, redis: connector.settings.shown }, 'worker started');
}
