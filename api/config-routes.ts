// The configuration as a whole (`/v1/config`: export and atomic import) and the settings
// singletons (`/v1/crl-settings`, `/v1/ocsp-settings`).
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { Config, CrlSettings, OcspSettings } from '../shared/config/schemas.ts';
import type { ApiContext, App } from './context.ts';
import { ConfigExport, errorResponses, fillDefaults, ref } from './http-schemas.ts';
import { mergeConfigSecrets, redactConfig } from './secrets.ts';
import { previewConfig, setVersion } from './versioning.ts';

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
          'A `version` in the body (as exported) is ignored; use If-Match to guard against concurrent changes. ' +
          'With `dryRun=true` nothing is written: the answer is the configuration as it would be stored, with the current version (also in the ETag).',
        querystring: Type.Object({
          dryRun: Type.Boolean({ default: false, description: 'Validate and answer the result without writing it' }),
        }),
        body: ref(Config),
        response: { 200: ref(ConfigExport), ...errorResponses(400, 401, 403, 409, 412) },
      },
    },
    async (request, reply) => {
      const change = (stored: Config) => mergeConfigSecrets(request.body, stored);
      const { version, ...config } = request.query.dryRun
        ? await previewConfig(request, reply, ctx.config, change)
        : await ctx.write(request, reply, change, { kind: 'config', name: null, action: 'import' });
      return { version, ...redactConfig(config) };
    },
  );

  registerSettings(app, ctx, { path: '/v1/crl-settings', field: 'crlSettings', kind: 'crl-settings', schema: CrlSettings, tag: 'crl-sources', name: 'CrlSettings', what: 'the CRL settings' });
  registerSettings(app, ctx, { path: '/v1/ocsp-settings', field: 'ocspSettings', kind: 'ocsp-settings', schema: OcspSettings, tag: 'ocsp', name: 'OcspSettings', what: 'the OCSP settings' });
}

interface SettingsRoute {
  path: string;
  field: 'crlSettings' | 'ocspSettings';
  /** The audit entry's kind. */
  kind: string;
  schema: typeof CrlSettings | typeof OcspSettings;
  tag: string;
  /** Suffix of the operation ids (getCrlSettings, replaceCrlSettings). */
  name: string;
  what: string;
}

/** GET and PUT of a settings singleton of the configuration, audited and versioned like every write. */
function registerSettings(app: App, ctx: ApiContext, r: SettingsRoute): void {
  app.get(
    r.path,
    { schema: { tags: [r.tag], operationId: `get${r.name}`, summary: `Get ${r.what}`, response: { 200: ref(r.schema), ...errorResponses(401) } } },
    async (_request, reply) => {
      const config = await ctx.config.get();
      setVersion(reply, config.version);
      return config[r.field] as never; // the response schema is the field's; TypeScript cannot pair them
    },
  );

  app.put(
    r.path,
    {
      preValidation: fillDefaults(r.schema),
      schema: {
        tags: [r.tag],
        operationId: `replace${r.name}`,
        summary: `Replace ${r.what}`,
        body: ref(r.schema),
        response: { 200: ref(r.schema), ...errorResponses(400, 401, 403, 412) },
      },
    },
    async (request, reply) => {
      const written = await ctx.write(request, reply, (c) => ({ ...c, [r.field]: request.body }), { kind: r.kind, name: null, action: 'replace' });
      return written[r.field] as never;
    },
  );
}

/** An exported configuration carries its read-only `version`; importing it as is must work. */
async function dropVersion(request: FastifyRequest): Promise<void> {
  const body = request.body as Record<string, unknown> | null;
  if (body && typeof body === 'object') delete body.version;
}
