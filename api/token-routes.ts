// API token management. The bootstrap admin token comes from API_TOKEN; further tokens
// (admin or read-only) are created here and shown once.
import { Type } from 'typebox';
import { Name } from '../shared/config/schemas.ts';
import { appendAudit } from '../shared/config/audit.ts';
import type { ApiContext, App } from './context.ts';
import { principalOf } from './auth.ts';
import { conflict, notFound } from './errors.ts';
import { ApiToken, CreatedApiToken, errorResponses, NewApiToken, ref } from './http-schemas.ts';
import { BOOTSTRAP_PRINCIPAL, createToken, deleteToken, listTokens } from './tokens.ts';

export function registerTokenRoutes(app: App, ctx: ApiContext): void {
  const tags = ['tokens'];

  app.get(
    '/v1/tokens',
    { schema: { tags, operationId: 'listTokens', summary: 'List API tokens (names and roles, never the tokens)', response: { 200: Type.Object({ items: Type.Array(ref(ApiToken)) }), ...errorResponses(401) } } },
    async () => ({ items: await listTokens(ctx.redis) }),
  );

  app.post(
    '/v1/tokens',
    {
      schema: {
        tags,
        operationId: 'createToken',
        summary: 'Create an API token; the response is the only time it is shown',
        body: ref(NewApiToken),
        response: { 201: ref(CreatedApiToken), ...errorResponses(400, 401, 403, 409) },
      },
    },
    async (request, reply) => {
      const { name, role } = request.body;
      if (name === BOOTSTRAP_PRINCIPAL.name) throw conflict(`the name "${name}" is reserved: the audit log names API_TOKEN so`);
      const token = await createToken(ctx.redis, name, role);
      if (token === null) throw conflict(`token "${name}" already exists`);
      await appendAudit(ctx.redis, { token: principalOf(request).name, kind: 'tokens', name, action: 'create', version: null });
      void reply.status(201);
      return { name, role, token };
    },
  );

  app.delete(
    '/v1/tokens/:name',
    {
      schema: {
        tags,
        operationId: 'deleteToken',
        summary: 'Revoke an API token',
        params: Type.Object({ name: Name }),
        response: { 204: Type.Null({ description: 'Revoked' }), ...errorResponses(401, 403, 404) },
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      if (!(await deleteToken(ctx.redis, name))) throw notFound(`token "${name}" does not exist`);
      await appendAudit(ctx.redis, { token: principalOf(request).name, kind: 'tokens', name, action: 'delete', version: null });
      return reply.status(204).send(null);
    },
  );
}
