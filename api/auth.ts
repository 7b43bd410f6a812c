// Bearer-token authentication and the read-only role, as one onRequest hook for every
// route but the public ones (health check, OpenAPI document, Swagger UI).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { forbidden, unauthorized } from './errors.ts';
import { authenticateToken, type Principal } from './tokens.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who made the request; set for every authenticated route. */
    principal: Principal | null;
  }
}

const READ_METHODS = new Set(['GET', 'HEAD']);

function isPublic(request: FastifyRequest): boolean {
  const route = request.routeOptions.url;
  return route === '/health' || route === '/openapi.json' || route === '/docs' || route?.startsWith('/docs/') === true;
}

export function registerAuth(app: FastifyInstance, redis: Redis, bootstrapToken: string | undefined): void {
  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request) => {
    if (isPublic(request)) return;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '');
    if (!match?.[1]) throw unauthorized('missing bearer token (Authorization: Bearer <token>)');
    const principal = await authenticateToken(redis, match[1], bootstrapToken);
    if (!principal) throw unauthorized('invalid bearer token');
    if (principal.role === 'read-only' && !READ_METHODS.has(request.method)) {
      throw forbidden(`token "${principal.name}" is read-only: ${request.method} is not allowed`);
    }
    request.principal = principal;
  });
}

/** The principal of an authenticated request (routes behind the hook only). */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw unauthorized('not authenticated');
  return request.principal;
}
