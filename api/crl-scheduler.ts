/**
 * The CRL scheduler (SPEC §1, §2.6): BullMQ job schedulers that download the
 * CRL sources, kept in step with the configuration.
 *
 * - At start and on every configuration change (`keys.configChannel`), each
 *   enabled source gets the job scheduler `crl:<name>` (`every` or a UTC cron
 *   `pattern`); disabled and deleted sources lose theirs, and a deleted
 *   source's CRL and status are removed. Schedulers already right are left
 *   alone, so a configuration write elsewhere reschedules nothing.
 * - A source also gets one download right away when it appears, is enabled,
 *   or its URLs or file type change — and, at start, when it has no CRL in
 *   force from one of its current URLs. The job id carries the configuration
 *   version, so several API processes reacting to the same change add it once.
 * - Jobs run `refreshSource` (shared/pki/crl/refresh.ts); its Redis lock keeps two
 *   processes from downloading one source at once. A download that fails is
 *   recorded in the source's status, not as a failed job.
 *
 * Any number of processes may run this side by side (all BullMQ operations
 * used are idempotent).
 */
import { Queue, QueueEvents, Worker, type Job, type JobSchedulerJson } from 'bullmq';
import type { Redis } from 'ioredis';
import type { ConfigFollower } from '../shared/config/follower.ts';
import type { RedisConnector } from '../shared/redis/connection.ts';
import type { Subscriptions } from '../shared/redis/subscriptions.ts';
import { deleteCrlData, refreshSource, trustedCrlSigners, type RefreshContext } from '../shared/pki/crl/refresh.ts';
import { readCrlStatus } from '../shared/pki/crl/stored.ts';
import { Coalescer } from '../shared/util/coalescer.ts';
import type { MinimalLogger } from '../shared/util/logger.ts';
import { CRL_QUEUE, keys } from '../shared/redis/keys.ts';
import type { CrlSource, CrlStatus, VersionedConfig } from '../shared/config/schemas.ts';

export interface CrlSchedulerOptions {
  /** Makes BullMQ's connections (a queue and a worker). */
  connector: RedisConnector;
  /** A `commands` connection of the process. */
  redis: Redis;
  subscriptions: Subscriptions;
  /** The process's configuration follower, started. */
  follower: ConfigFollower;
  logger: MinimalLogger;
  /** CRL_FILE_ROOT; null refuses `file:` URLs. */
  fileRoot: string | null;
  /** Passed to every download (tests shorten them). */
  download?: Pick<RefreshContext, 'timeoutMs' | 'maxBytes'>;
}

export interface CrlScheduler {
  /** Downloads the source now and answers its status (`POST /v1/crl-sources/{name}/refresh`). */
  refresh(name: string): Promise<CrlStatus>;
  /** Brings the job schedulers in line with the configuration now (also done on every change). */
  sync(): Promise<void>;
  stop(): Promise<void>;
}

/** `refresh()` of a source the configuration does not have (the route answers 404 before). */
export class CrlSourceNotFoundError extends Error {
  constructor(readonly source: string) {
    super(`CRL source "${source}" does not exist`);
  }
}

export interface DownloadJobData {
  source: string;
}

/** Scheduled and immediate downloads: skipped for sources deleted or disabled meanwhile. */
const JOB_NAME = 'download';
/** On-demand refreshes queued by `connectCrlRefreshClient`: run for disabled sources too, answer null for unknown ones. */
const REFRESH_JOB = 'refresh';
const SCHEDULER_PREFIX = 'crl:';
/** Finished jobs kept for an hour: enough to deduplicate the immediate downloads, small enough to not pile up. */
const KEEP_JOBS = { removeOnComplete: { age: 3600, count: 1000 }, removeOnFail: { age: 24 * 3600, count: 1000 } };

export const schedulerId = (source: string): string => SCHEDULER_PREFIX + source;

/** The BullMQ repeat options of a source's schedule. Cron runs in UTC, as shared/config/validate.ts checks it. */
function repeatOptions(source: CrlSource): { every: number; startDate: number } | { pattern: string; tz: string } {
  if ('everySeconds' in source.schedule) {
    const every = source.schedule.everySeconds * 1000;
    // Start one interval from now: the immediate download is this module's decision, not BullMQ's.
    return { every, startDate: Date.now() + every };
  }
  return { pattern: source.schedule.cron, tz: 'UTC' };
}

function isCurrent(existing: JobSchedulerJson<DownloadJobData> | undefined, source: CrlSource): boolean {
  if (!existing || existing.name !== JOB_NAME || existing.template?.data?.source !== source.name) return false;
  const s = source.schedule;
  return 'everySeconds' in s ? existing.every === s.everySeconds * 1000 && !existing.pattern : existing.pattern === s.cron && !existing.every;
}

/** What makes a source need a fresh download when it changes. */
function downloadSignature(s: CrlSource): string {
  return JSON.stringify([s.fileType, s.primaryUrl, s.secondaryUrl]);
}

export async function startCrlScheduler(opts: CrlSchedulerOptions): Promise<CrlScheduler> {
  const { logger, fileRoot, redis, follower } = opts;
  const queueConn = opts.connector.connect('crl-queue', 'bullmq');
  const workerConn = opts.connector.connect('crl-worker', 'bullmq');
  /** The configuration as stored now (one header read when the follower is current). */
  const fresh = async (): Promise<VersionedConfig> => {
    const config = await follower.refresh();
    if (!config) throw new Error(follower.error ?? 'no configuration loaded');
    return config;
  };

  const queue = new Queue<DownloadJobData>(CRL_QUEUE, { connection: queueConn, defaultJobOptions: KEEP_JOBS });
  // Without a listener BullMQ prints these to stderr unstructured; the connections' own handlers log them.
  queue.on('error', () => undefined);
  /** Per source, as of the last sync: what it downloads and whether it is enabled. */
  const known = new Map<string, { signature: string; enabled: boolean }>();
  const runs = new Coalescer();
  let stopped = false;

  const run = async (source: CrlSource, lockWaitMs?: number): Promise<CrlStatus> => {
    const config = await fresh();
    const ctx: RefreshContext = { trustedCas: trustedCrlSigners(config), fileRoot, now: new Date(), logger, lockWaitMs, ...opts.download };
    return refreshSource(redis, source, ctx);
  };

  const worker = new Worker<DownloadJobData, CrlStatus | null>(
    CRL_QUEUE,
    async (job: Job<DownloadJobData>) => {
      const { crlSources } = await fresh();
      const source = crlSources.find((s) => s.name === job.data.source);
      if (job.name === REFRESH_JOB) return source ? run(source) : null;
      // Deleted or disabled since the job was queued: nothing to do.
      if (!source || !source.enabled) return null;
      // A refresh already running elsewhere makes this run redundant: do not wait for it.
      return run(source, 0);
    },
    { connection: workerConn, concurrency: 2 },
  );
  worker.on('failed', (job, err) => logger.error({ source: job?.data.source, err: err.message }, 'CRL download job failed'));
  worker.on('error', (err) => logger.error({ err: err.message }, 'CRL scheduler worker error'));

  /** Whether an enabled source should be downloaded now rather than at its next scheduled time. */
  const needsDownloadNow = async (source: CrlSource): Promise<boolean> => {
    const before = known.get(source.name);
    if (before) return !before.enabled || before.signature !== downloadSignature(source);
    // First seen by this process: download unless a CRL from its current URLs is in force.
    const status = await readCrlStatus(redis, source.name);
    return status.lastSuccessAt === null || (status.url !== source.primaryUrl && status.url !== source.secondaryUrl);
  };

  const syncOnce = async (): Promise<void> => {
    const config = await fresh();
    const existing = new Map((await queue.getJobSchedulers(0, -1)).filter((s) => s.key.startsWith(SCHEDULER_PREFIX)).map((s) => [s.key, s]));
    for (const source of config.crlSources) {
      const id = schedulerId(source.name);
      try {
        if (!source.enabled) {
          if (existing.has(id)) await queue.removeJobScheduler(id);
        } else {
          if (!isCurrent(existing.get(id), source)) {
            await queue.upsertJobScheduler(id, repeatOptions(source), { name: JOB_NAME, data: { source: source.name }, opts: KEEP_JOBS });
            logger.info({ source: source.name, schedule: source.schedule }, 'CRL download scheduled');
          }
          if (await needsDownloadNow(source)) {
            await queue.add(JOB_NAME, { source: source.name }, { jobId: `now-${source.name}-v${config.version}` });
          }
        }
      } catch (err) {
        // One bad source must not keep the others from being scheduled.
        logger.error({ source: source.name, err: (err as Error).message }, 'cannot schedule the CRL source');
      }
    }
    const configured = new Set(config.crlSources.map((s) => s.name));
    for (const id of existing.keys()) {
      if (!configured.has(id.slice(SCHEDULER_PREFIX.length))) await queue.removeJobScheduler(id);
    }
    await removeDeletedSourcesData(redis, fresh, logger);
    known.clear();
    for (const s of config.crlSources) known.set(s.name, { signature: downloadSignature(s), enabled: s.enabled });
  };
  const sync = (): Promise<void> => runs.run('sync', syncOnce);
  const syncInBackground = (why: string): void => {
    if (stopped) return;
    sync().catch((err: Error) => logger.error({ err: err.message, why }, 'CRL scheduler: sync with the configuration failed'));
  };

  // In the background: a listener must not wait for the follower (sync reads through it).
  follower.follow(() => syncInBackground('configuration change'));
  // BullMQ's state may have changed while the connection was down (a failover): check it again.
  opts.subscriptions.onResync(() => syncInBackground('reconnect'));
  await sync();
  logger.info({ queue: CRL_QUEUE, fileRoot }, 'CRL scheduler started');

  return {
    sync,
    async refresh(name: string): Promise<CrlStatus> {
      const { crlSources } = await fresh();
      const source = crlSources.find((s) => s.name === name);
      if (!source) throw new CrlSourceNotFoundError(name);
      return run(source);
    },
    async stop(): Promise<void> {
      stopped = true;
      await runs.idle();
      await worker.close();
      await queue.close();
      await Promise.all([queueConn, workerConn].map((c) => c.quit().catch(() => c.disconnect())));
    },
  };
}

/**
 * Deletes the CRL and status of sources no longer in the configuration. Keys
 * are listed first and the configuration read after: a source created
 * meanwhile is then in that configuration, so its fresh data is never taken
 * for a deleted source's.
 */
async function removeDeletedSourcesData(redis: Redis, fresh: () => Promise<VersionedConfig>, logger: MinimalLogger): Promise<void> {
  const stored = new Set<string>();
  for (const keyOf of [keys.crlStatus, keys.crlData]) {
    const [head, tail] = keyOf('\0').split('\0');
    for await (const batch of redis.scanStream({ match: `${head}*${tail}`, count: 500 }) as AsyncIterable<string[]>) {
      for (const key of batch) {
        const name = key.slice(head.length, key.length - tail.length);
        if (!name.includes(':')) stored.add(name); // source names have none; anything else is not ours
      }
    }
  }
  if (stored.size === 0) return;
  const configured = new Set((await fresh()).crlSources.map((s) => s.name));
  for (const name of stored) {
    if (configured.has(name)) continue;
    await deleteCrlData(redis, name);
    logger.info({ source: name }, 'CRL source deleted: its CRL is no longer in force');
  }
}

export interface CrlRefreshClient {
  /** As `CrlScheduler.refresh`, run by whichever scheduler process takes the job. */
  refresh(name: string): Promise<CrlStatus>;
  close(): Promise<void>;
}

/**
 * On-demand refreshes for an API running with SCHEDULER=off: the download
 * runs in the scheduler process (which holds CRL_FILE_ROOT) through the
 * queue, and the answer comes back through BullMQ's queue events. Rejects
 * with CrlSourceNotFoundError for an unknown source, and with a plain Error
 * when no scheduler process finished the job within `timeoutMs`.
 */
export async function connectCrlRefreshClient(opts: { connector: RedisConnector; timeoutMs?: number }): Promise<CrlRefreshClient> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const queueConn = opts.connector.connect('crl-refresh-queue', 'bullmq');
  const eventsConn = opts.connector.connect('crl-refresh-events', 'bullmq');
  const queue = new Queue<DownloadJobData>(CRL_QUEUE, { connection: queueConn });
  const events = new QueueEvents(CRL_QUEUE, { connection: eventsConn });
  // Connection errors surface as failed or timed-out refreshes; BullMQ would print them to stderr.
  const ignore = (): void => undefined;
  queue.on('error', ignore);
  events.on('error', ignore);
  await events.waitUntilReady();
  return {
    async refresh(name: string): Promise<CrlStatus> {
      const job = await queue.add(REFRESH_JOB, { source: name }, { removeOnComplete: { age: 600 }, removeOnFail: { age: 600 } });
      let status: CrlStatus | null;
      try {
        status = (await job.waitUntilFinished(events, timeoutMs)) as CrlStatus | null;
      } catch (err) {
        if (!/timed out/.test((err as Error).message)) throw err;
        await job.remove().catch(() => undefined); // still waiting: nobody will take it in time
        throw new Error(`no CRL scheduler finished the refresh within ${timeoutMs / 1000} s (with SCHEDULER=off, \`npm run start:scheduler\` must run)`, { cause: err });
      }
      if (status === null) throw new CrlSourceNotFoundError(name);
      return status;
    },
    async close(): Promise<void> {
      await events.close();
      await queue.close();
      await Promise.all([queueConn, eventsConn].map((c) => c.quit().catch(() => c.disconnect())));
    },
  };
}
