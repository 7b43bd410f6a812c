// The configuration as a whole (`/v1/config`: export and atomic import) and the CRL
// settings singleton (`/v1/crl-settings`).
import type { FastifyRequest } from 'fastify';
import { Config, CrlSettings } from '../shared/config/schemas.ts';
import type { ApiContext, App } from './context.ts';
import { ConfigExport, errorResponses, fillDefaults, ref } from './http-schemas.ts';
import { mergeConfigSecrets, redactConfig } from './secrets.ts';
import { setVersion } from './versioning.ts';

export function registerConfigRoutes(app: App, ctx: ApiContext): void {
  const tags = ['config'];

  app.get(
    '/v1/config',
    { schema: { tags, operationId: 'exportConfig', summary: 'Export the whole configuration (without secrets)', response: { 200: ref(ConfigExport), ...errorResponses(401) } } },
    async (_request, reply) => {
      const { version, ...config } = await ctx.config.get();
      setVersion(reply, version);
      return { version, ...redactConfig(config) };
    },
  );

  app.put(
    '/v1/config',
    {
      preValidation: [dropVersion, fillDefaults(Config)],
      schema: {
        tags,
        operationId: 'importConfig',
        summary: 'Replace the whole configuration atomically',
        description:
          'All or nothing: one invalid item changes nothing. Secrets left out keep the stored value of the resource with the same name. ' +
          'A `version` in the body (as exported) is ignored; use If-Match to guard against concurrent changes.',
        body: ref(Config),
        response: { 200: ref(ConfigExport), ...errorResponses(400, 401, 403, 409, 412) },
      },
    },
    async (request, reply) => {
      const { version, ...config } = await ctx.write(request, reply, (stored) => mergeConfigSecrets(request.body, stored), {
        kind: 'config',
        name: null,
        action: 'import',
      });
      return { version, ...redactConfig(config) };
    },
  );

  app.get(
    '/v1/crl-settings',
    { schema: { tags: ['crl-sources'], operationId: 'getCrlSettings', summary: 'Get the CRL settings', response: { 200: ref(CrlSettings), ...errorResponses(401) } } },
    async (_request, reply) => {
      const config = await ctx.config.get();
      setVersion(reply, config.version);
      return config.crlSettings;
    },
  );

  app.put(
    '/v1/crl-settings',
    {
      preValidation: fillDefaults(CrlSettings),
      schema: {
        tags: ['crl-sources'],
        operationId: 'replaceCrlSettings',
        summary: 'Replace the CRL settings',
        body: ref(CrlSettings),
        response: { 200: ref(CrlSettings), ...errorResponses(400, 401, 403, 412) },
      },
    },
    async (request, reply) => {
      const written = await ctx.write(request, reply, (c) => ({ ...c, crlSettings: request.body }), {
        kind: 'crl-settings',
        name: null,
        action: 'replace',
      });
      return written.crlSettings;
    },
  );
}

/** An exported configuration carries its read-only `version`; importing it as is must work. */
async function dropVersion(request: FastifyRequest): Promise<void> {
  const body = request.body as Record<string, unknown> | null;
  if (body && typeof body === 'object') delete body.version;
}
