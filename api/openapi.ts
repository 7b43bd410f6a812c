// OpenAPI document and Swagger UI. The component schemas are those of http-schemas.ts,
// registered under their `$id`s (and named by them in the document); routes reference
// them. The document is served live at /openapi.json, committed as openapi/openapi.json
// (`npm run openapi`) and browsable at /docs.
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import pkg from '../package.json' with { type: 'json' };
import type { App } from './context.ts';
import { COMPONENT_SCHEMAS } from './http-schemas.ts';

const TAGS = [
  { name: 'ldap-profiles', description: 'LDAP servers and the queries run against them (SPEC §2.1)' },
  { name: 'smtp-auth-profiles', description: 'How SMTP sessions authenticate: LDAP or certificate (SPEC §2.3)' },
  { name: 'mail-flow-policies', description: 'What a session may do (SPEC §2.4)' },
  { name: 'listeners', description: 'SMTP listeners of the workers (SPEC §2.5)' },
  { name: 'crl-sources', description: 'Certificate revocation lists and their settings (SPEC §2.6)' },
  { name: 'ocsp', description: 'Online revocation checking by OCSP (SPEC §2.6b)' },
  { name: 'config', description: 'The whole configuration at once' },
  { name: 'tokens', description: 'API bearer tokens' },
  { name: 'status', description: 'Health, metrics, change log, session events, workers' },
];

export async function registerOpenApi(app: App): Promise<void> {
  for (const schema of COMPONENT_SCHEMAS) app.addSchema(schema);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'certgate API',
        version: pkg.version,
        description:
          'Control plane of the certgate mail relay gateway. Every route but /health, /docs and /openapi.json needs ' +
          '`Authorization: Bearer <token>`. Writes answer `ETag: "<version>"` and honour `If-Match`.',
      },
      components: { securitySchemes: { bearerAuth: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearerAuth: [] }],
      tags: TAGS,
    },
    // Keep the `$id`s as component names (the default would be def-0, def-1, ...).
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
    transformObject: (document) => ('openapiObject' in document ? withDiscriminatorMappings(document.openapiObject) : document.swaggerObject),
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}

type SchemaObject = { oneOf?: Array<{ $ref?: string }>; discriminator?: { propertyName: string; mapping?: Record<string, string> }; properties?: Record<string, { const?: unknown; enum?: unknown[] }> };

/**
 * A discriminator without `mapping` means "the value is the schema's name" (OpenAPI 3.1
 * §4.8.25): ours are the `type` values (`ldap`, `certificate`), so the document names them,
 * for Swagger UI and code generators (cli/api-types.ts). Only the document: Ajv, which
 * validates the requests, does not support `mapping`.
 */
function withDiscriminatorMappings<T extends { components?: { schemas?: Record<string, unknown> } }>(document: T): T {
  const schemas = (document.components?.schemas ?? {}) as Record<string, SchemaObject>;
  const prefix = '#/components/schemas/';
  for (const schema of Object.values(schemas)) {
    const tag = schema.discriminator?.propertyName;
    if (!tag || !schema.oneOf) continue;
    const mapping: Record<string, string> = {};
    for (const member of schema.oneOf) {
      const property = member.$ref?.startsWith(prefix) ? schemas[member.$ref.slice(prefix.length)]?.properties?.[tag] : undefined;
      const value = property?.const ?? (property?.enum?.length === 1 ? property.enum[0] : undefined);
      if (typeof value === 'string' && member.$ref) mapping[value] = member.$ref;
    }
    if (Object.keys(mapping).length === schema.oneOf.length) schema.discriminator = { propertyName: tag, mapping };
  }
  return document;
}
