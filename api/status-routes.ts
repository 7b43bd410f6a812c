// Read-only views of the running system: health, the change log, session events and
// the SMTP workers that are alive.
import { Type } from 'typebox';
import type { Redis } from 'ioredis';
import { listAudit } from '../shared/config/audit.ts';
import { AuditEntry } from '../shared/config/audit.ts';
import { EVENTS_DEFAULT_LIMIT, EVENTS_MAX_LIMIT, queryEvents } from '../shared/status/events.ts';
import { listWorkers } from '../shared/status/workers.ts';
import { Name, Outcome, SessionEvent, WorkerStatus } from '../shared/config/schemas.ts';
import type { ApiContext, App } from './context.ts';
import { errorResponses, Health, ref } from './http-schemas.ts';

const HEALTH_TIMEOUT_MS = 1000;

async function redisUp(redis: Redis): Promise<boolean> {
  if (redis.status !== 'ready') return false;
  const timeout = new Promise<false>((resolve) => setTimeout(resolve, HEALTH_TIMEOUT_MS, false).unref());
  return Promise.race([redis.ping().then(() => true, () => false), timeout]);
}

const Limit = (max: number, fallback: number) => Type.Integer({ minimum: 1, maximum: max, default: fallback });

export function registerStatusRoutes(app: App, ctx: ApiContext): void {
  app.get(
    '/health',
    {
      schema: {
        tags: ['status'],
        operationId: 'health',
        summary: 'Liveness and Redis reachability (no token needed)',
        security: [],
        response: { 200: ref(Health), 503: ref(Health) },
      },
    },
    async (_request, reply) => {
      const up = await redisUp(ctx.redis);
      void reply.status(up ? 200 : 503);
      return { status: up ? 'ok' : 'degraded', redis: up ? 'up' : 'down' } as const;
    },
  );

  app.get(
    '/v1/audit',
    {
      schema: {
        tags: ['status'],
        operationId: 'listAudit',
        summary: 'Configuration changes, newest first',
        querystring: Type.Object({ limit: Limit(1000, 100) }),
        response: { 200: Type.Object({ items: Type.Array(ref(AuditEntry)) }), ...errorResponses(400, 401) },
      },
    },
    async (request) => ({ items: await listAudit(ctx.redis, request.query.limit) }),
  );

  app.get(
    '/v1/events',
    {
      schema: {
        tags: ['status'],
        operationId: 'listEvents',
        summary: 'Authentication and session events, newest first',
        querystring: Type.Object({
          user: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
          outcome: Type.Optional(Outcome),
          listener: Type.Optional(Name),
          since: Type.Optional(Type.String({ format: 'date-time', description: 'ISO 8601 time, e.g. 2026-11-27T18:00:00Z' })),
          limit: Limit(EVENTS_MAX_LIMIT, EVENTS_DEFAULT_LIMIT),
        }),
        response: { 200: Type.Object({ items: Type.Array(ref(SessionEvent)) }), ...errorResponses(400, 401) },
      },
    },
    async (request) => {
      const { since, ...filter } = request.query;
      return { items: await queryEvents(ctx.redis, { ...filter, since: since === undefined ? undefined : new Date(since) }) };
    },
  );

  app.get(
    '/v1/workers',
    {
      schema: {
        tags: ['status'],
        operationId: 'listWorkers',
        summary: 'SMTP workers with a heartbeat in the last 15 s',
        response: { 200: Type.Object({ items: Type.Array(ref(WorkerStatus)) }), ...errorResponses(401) },
      },
    },
    async () => ({ items: await listWorkers(ctx.redis) }),
  );
}
