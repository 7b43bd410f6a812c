// Prometheus metrics of the API (`GET /metrics`, behind the token like every route):
// requests by route and status, their duration, the configuration version in force, and
// the state kept in Redis that alerts need whichever process wrote it (the CRL scheduler
// may run apart, workers elsewhere): each CRL source's updates, downloads and schedule,
// and the workers alive with their configuration versions (deploy/prometheus/alerts.yml);
// and the OCSP checks of mutual-TLS clients.
// One registry per app, so that several apps in one process (tests) do not collide.
import { CronExpressionParser } from 'cron-parser';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { readCrlStatus } from '../shared/pki/crl/stored.ts';
import { listWorkers } from '../shared/status/workers.ts';
import type { CrlSource, CrlStatus, WorkerStatus } from '../shared/config/schemas.ts';
import type { OcspObserver } from '../shared/pki/ocsp/checker.ts';
import { ocspMetrics } from '../shared/status/ocsp-metrics.ts';
import type { ApiContext, App } from './context.ts';
import { errorResponses } from './http-schemas.ts';

export interface ApiMetrics {
  registry: Registry;
  /** Counts the OCSP checks of the `webInterface` revocation hook. */
  ocsp: OcspObserver;
}

export function createApiMetrics(): ApiMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return { registry, ocsp: ocspMetrics(registry) };
}

export function registerMetrics(app: App, ctx: ApiContext, { registry }: ApiMetrics): void {
  const labelNames = ['method', 'route', 'status'] as const;
  const requests = new Counter({ name: 'certgate_api_requests_total', help: 'HTTP requests answered', labelNames, registers: [registry] });
  const duration = new Histogram({
    name: 'certgate_api_request_duration_seconds',
    help: 'Time to answer an HTTP request',
    labelNames,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  new Gauge({
    name: 'certgate_config_version',
    help: 'Configuration version this API process serves',
    registers: [registry],
    async collect() {
      this.set((await ctx.config.get()).version);
    },
  });

  registerStateGauges(registry, ctx);

  app.addHook('onResponse', async (request, reply) => {
    // The route pattern, not the URL: resource names must not explode the label space.
    const labels = { method: request.method, route: request.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) };
    requests.inc(labels);
    duration.observe(labels, reply.elapsedTime / 1000);
  });

  app.get(
    '/metrics',
    {
      schema: {
        tags: ['status'],
        operationId: 'metrics',
        summary: 'Prometheus metrics (text exposition format)',
        response: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: { type: 'string' } } } }, ...errorResponses(401) },
      },
    },
    async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()),
  );
}

/** What one scrape reads from Redis, shared by the gauges below (they collect in parallel). */
interface StateSnapshot {
  crls: Array<{ source: CrlSource; status: CrlStatus }>;
  workers: WorkerStatus[];
}

const SNAPSHOT_MS = 1000;

function registerStateGauges(registry: Registry, ctx: ApiContext): void {
  let cached: { at: number; value: Promise<StateSnapshot> } | null = null;
  const snapshot = (): Promise<StateSnapshot> => {
    if (!cached || Date.now() - cached.at > SNAPSHOT_MS) {
      const value = (async () => {
        const config = await ctx.config.get();
        const enabled = config.crlSources.filter((s) => s.enabled);
        const [crls, workers] = await Promise.all([
          Promise.all(enabled.map(async (source) => ({ source, status: await readCrlStatus(ctx.redis, source.name) }))),
          listWorkers(ctx.redis),
        ]);
        return { crls, workers };
      })();
      cached = { at: Date.now(), value };
      value.catch(() => (cached = null));
    }
    return cached.value;
  };
  const seconds = (iso: string | null) => (iso === null ? null : Date.parse(iso) / 1000);
  const perSource = (name: string, help: string, value: (s: { source: CrlSource; status: CrlStatus }) => number | null) =>
    new Gauge({
      name, help, labelNames: ['source'], registers: [registry],
      async collect() {
        this.reset();
        for (const s of (await snapshot()).crls) {
          const v = value(s);
          if (v !== null) this.set({ source: s.source.name }, v);
        }
      },
    });
  perSource('certgate_crl_this_update_timestamp_seconds', 'thisUpdate of the CRL in force (enabled sources), Unix time', (s) => seconds(s.status.thisUpdate));
  perSource('certgate_crl_next_update_timestamp_seconds', 'nextUpdate of the CRL in force (enabled sources), Unix time', (s) => seconds(s.status.nextUpdate));
  perSource('certgate_crl_last_success_timestamp_seconds', 'Last download that was taken, Unix time', (s) => seconds(s.status.lastSuccessAt));
  perSource('certgate_crl_last_attempt_timestamp_seconds', 'Last download attempt, Unix time', (s) => seconds(s.status.lastAttemptAt));
  perSource('certgate_crl_download_failing', '1 while the last download attempt failed (the previous CRL stays in force)', (s) => (s.status.lastError === null ? 0 : 1));
  perSource('certgate_crl_schedule_interval_seconds', 'Time between scheduled downloads (a cron schedule: its next gap)', (s) => scheduleInterval(s.source));
  new Gauge({
    name: 'certgate_workers_alive', help: 'SMTP workers with a heartbeat in the last 15 s', registers: [registry],
    async collect() {
      this.set((await snapshot()).workers.length);
    },
  });
  new Gauge({
    name: 'certgate_worker_config_version', help: 'Configuration version each worker alive runs (from its heartbeat)', labelNames: ['worker'], registers: [registry],
    async collect() {
      this.reset();
      for (const w of (await snapshot()).workers) this.set({ worker: w.id }, w.configVersion);
    },
  });
}

function scheduleInterval(source: CrlSource): number | null {
  if ('everySeconds' in source.schedule) return source.schedule.everySeconds;
  try {
    const [a, b] = CronExpressionParser.parse(source.schedule.cron, { tz: 'UTC' }).take(2).map((d) => d.getTime());
    return a !== undefined && b !== undefined ? (b - a) / 1000 : null;
  } catch {
    return null;
  }
}
