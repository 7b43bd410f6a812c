// Prometheus metrics of the API (`GET /metrics`, behind the token like every route):
// requests by route and status, their duration, and the configuration version in force.
// One registry per app, so that several apps in one process (tests) do not collide.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ApiContext, App } from './context.ts';
import { errorResponses } from './http-schemas.ts';

export function registerMetrics(app: App, ctx: ApiContext): void {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
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
