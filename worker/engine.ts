// One serving worker process: its Redis connections and configuration follower (mode
// `runner`), the CRL store, the session event recorder and the gateway (the SMTP
// listeners). With WORKER_PROCESSES=n each of the n processes runs one (worker/cluster.ts);
// with 1 the worker's only process does. What it serves is summed up in `report()`,
// which worker/front.ts turns into the heartbeat and the health answer.
import type { CrlStoreEntry } from '../shared/pki/crl/store.ts';
import { CrlStore } from '../shared/pki/crl/store.ts';
import type { ProcessKit, ProcessRedis } from '../shared/process/kit.ts';
import { EventRecorder } from '../shared/status/events.ts';
import { AuthThrottle } from './auth-throttle.ts';
import { configurationAdmission } from '../shared/policy/admission.ts';
import type { Reply } from '../shared/policy/rules.ts';
import { Gateway, type GatewayStatus } from './gateway.ts';
import { WorkerMetrics } from './metrics.ts';

export interface ProcessReport extends GatewayStatus {
  crls: CrlStoreEntry[];
  configError: string | null;
  /** A configuration with version ≥ 1 is applied (version 0 is an empty store). */
  applied: boolean;
  /** Seconds since Redis last confirmed the configuration in force; null: never. */
  configAgeSeconds: number | null;
  /** Past WORKER_MAX_STALE_SECONDS: new connections are answered 421. */
  stale: boolean;
}

export interface EngineOptions {
  kit: ProcessKit;
  workerId: string;
  portOffset: number;
  /** WORKER_MAX_STALE_SECONDS; null: never stale. */
  maxStaleSeconds: number | null;
  /** The follower's poll interval (null: none). */
  pollMs: number | null;
  /** After each configuration version is applied, and each CRL loaded or dropped: what the heartbeat says changed. */
  onApplied?: () => void;
}

export interface Engine {
  metrics: WorkerMetrics;
  shared: ProcessRedis;
  report(): ProcessReport;
  stop(): Promise<void>;
}

/** Events still unwritten at shutdown get this long. */
const EVENTS_DRAIN_MS = 5_000;

export async function startEngine(o: EngineOptions): Promise<Engine> {
  const { logger } = o.kit;
  const shared = await o.kit.connectRedis('runner', o.pollMs);
  const { redis, subscriptions, follower, connector } = shared;
  const metrics = new WorkerMetrics();
  // Its own connection, without the command timeout: see EventRecorder.
  const eventsConn = connector.connect('worker-events', 'commands', { commandTimeout: undefined });
  let lastEventError = '';
  const events = new EventRecorder({
    redis: eventsConn,
    onDropped: () => metrics.eventsDropped.inc(),
    onError: (err) => {
      if (err.message !== lastEventError) logger.warn({ err: err.message, pending: events.size }, 'cannot write session events yet; keeping them');
      lastEventError = err.message;
    },
  });
  // The AUTH throttle's own connection: no offline queue and a short command timeout, so that an
  // AUTH falls back to per-process counts at once while Redis is away (worker/auth-throttle.ts).
  // No auto-pipelining: ioredis then defers every command to setImmediate and keeps one pipeline
  // in flight at a time, so each AUTH's read waited for the one before; bench/smtp measured it at
  // about 1 ms of worker CPU per AUTH session with 64 clients (throttle on/off 0.79, without 1.02-1.08).
  const throttleConn = connector.connect('worker-throttle', 'commands', { enableOfflineQueue: false, commandTimeout: 500, maxRetriesPerRequest: 0 });
  const throttle = new AuthThrottle(throttleConn);
  const ageSeconds = (): number | null => (follower.confirmedAt === null ? null : (Date.now() - follower.confirmedAt) / 1000);
  const admission = (): Reply | null => configurationAdmission(ageSeconds(), o.maxStaleSeconds);
  const crls = new CrlStore({ redis, subscriptions, follower, logger, onChange: () => o.onApplied?.() });
  const gateway = new Gateway({
    follower, redis, throttle, events, workerId: o.workerId, portOffset: o.portOffset, logger, metrics, crls, onApplied: o.onApplied, admission,
  });
  metrics.sources.configAgeSeconds = () => ageSeconds() ?? -1;
  metrics.sources.eventsPending = () => events.size;

  // CRLs first: no session may be accepted before the revocation data is in force.
  await crls.start();
  await gateway.start();

  return {
    metrics,
    shared,
    report() {
      const g = gateway.status();
      const crlStatus = crls.status();
      metrics.crlEntries.reset();
      for (const c of crlStatus) metrics.crlEntries.set({ source: c.source }, c.revokedCount);
      return { ...g, crls: crlStatus, configError: follower.error, applied: g.configVersion > 0, configAgeSeconds: ageSeconds(), stale: admission() !== null };
    },
    async stop() {
      await gateway.stop();
      await crls.stop();
      const left = await events.drain(EVENTS_DRAIN_MS);
      if (left > 0) logger.error({ events: left }, 'session events not written to Redis before exit');
      await shared.close();
      eventsConn.disconnect();
      throttleConn.disconnect();
    },
  };
}
