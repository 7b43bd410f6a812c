// The CRUD routes of one configuration resource kind (SPEC §2), generic over the kind:
//
//   GET    /v1/<kind>          { items, version }
//   POST   /v1/<kind>          201 created | 409 name exists
//   GET    /v1/<kind>/{name}   200 | 404
//   PUT    /v1/<kind>/{name}   200 replaced | 404 | 400 body name differs from the path
//   DELETE /v1/<kind>/{name}   204 | 404 | 409 still referenced
//
// Every write is one configuration transaction (see versioning.ts): validated as a
// whole, versioned, audited, published. Secrets are write-only (see secrets.ts).
import { Type } from 'typebox';
import type { FastifyRequest } from 'fastify';
import type { Config } from '../shared/config/schemas.ts';
import { Name } from '../shared/config/schemas.ts';
import { COLLECTION_LABELS, findReferences } from '../shared/config/validate.ts';
import type { ApiContext, App } from './context.ts';
import type { ResourceKind } from './resource-kinds.ts';
import { badRequest, conflict, notFound } from './errors.ts';
import { errorResponses, fillDefaults, ref } from './http-schemas.ts';
import { mergeSecret, redact } from './secrets.ts';
import { setVersion } from './versioning.ts';

/** Any resource: all we rely on generically is its name. */
type Resource = { name: string } & Record<string, unknown>;

const NameParams = Type.Object({ name: Name });

export function registerResourceRoutes(app: App, ctx: ApiContext, kind: ResourceKind): void {
  const { collection, path, noun, nouns, words } = kind;
  const aLabel = `${words.article} ${words.one}`;
  const label = COLLECTION_LABELS[collection];
  const base = `/v1/${path}`;
  const tags = [path];
  const item = ref(kind.schema);

  const itemsOf = (c: Config) => c[collection] as Resource[];
  const withItems = (c: Config, items: Resource[]): Config => ({ ...c, [collection]: items });
  const find = (c: Config, name: string) => itemsOf(c).find((i) => i.name === name);
  const missing = (name: string) => notFound(`${label} "${name}" does not exist`);
  const audit = (name: string, action: 'create' | 'replace' | 'delete') => ({ kind: path, name, action });

  app.get(
    base,
    { schema: { tags, operationId: `list${nouns}`, summary: `List ${words.many}`, response: { 200: Type.Object({ items: Type.Array(item), version: Type.Integer() }, { description: `All ${words.many} and the configuration version` }), ...errorResponses(401) } } },
    async (_request, reply) => {
      const config = await ctx.config.get();
      setVersion(reply, config.version);
      return { items: itemsOf(config).map((i) => redact(collection, i)), version: config.version };
    },
  );

  app.post(
    base,
    {
      preValidation: fillDefaults(kind.schema),
      schema: { tags, operationId: `create${noun}`, summary: `Create ${aLabel}`, body: item, response: { 201: { ...item, description: 'Created' }, ...errorResponses(400, 401, 403, 409, 412) } },
    },
    async (request, reply) => {
      const body = request.body as Resource;
      const written = await ctx.write(
        request,
        reply,
        (c) => {
          if (find(c, body.name)) throw conflict(`${label} "${body.name}" already exists`);
          return withItems(c, [...itemsOf(c), mergeSecret(collection, body, undefined)]);
        },
        audit(body.name, 'create'),
      );
      void reply.status(201).header('location', `${base}/${encodeURIComponent(body.name)}`);
      return redact(collection, find(written, body.name) as Resource);
    },
  );

  app.get(
    `${base}/:name`,
    {
      schema: {
        tags,
        operationId: `get${noun}`,
        summary: `Get ${aLabel}`,
        params: NameParams,
        response: { 200: { ...(kind.detail ? ref(kind.detail.schema) : item), description: `The ${label}` }, ...errorResponses(401, 404) },
      },
    },
    async (request, reply) => {
      const config = await ctx.config.get();
      const found = find(config, request.params.name);
      if (!found) throw missing(request.params.name);
      setVersion(reply, config.version);
      const extra = kind.detail ? await kind.detail.load(ctx.redis, found.name) : {};
      return { ...redact(collection, found), ...extra };
    },
  );

  app.put(
    `${base}/:name`,
    {
      preValidation: [nameFromPath, fillDefaults(kind.schema)],
      schema: {
        tags,
        operationId: `replace${noun}`,
        summary: `Replace ${aLabel}`,
        description: 'The body `name` may be omitted; if given it must equal the name in the path. Omitted secrets keep their stored value, `null` clears them.',
        params: NameParams,
        body: item,
        response: { 200: { ...item, description: 'Replaced' }, ...errorResponses(400, 401, 403, 404, 412) },
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      const body = request.body as Resource;
      if (body.name !== name) throw badRequest(`body/name must equal the name in the path ("${name}"); to rename, create the new one and delete the old`);
      const written = await ctx.write(
        request,
        reply,
        (c) => {
          const stored = find(c, name);
          if (!stored) throw missing(name);
          return withItems(c, itemsOf(c).map((i) => (i === stored ? mergeSecret(collection, body, stored) : i)));
        },
        audit(name, 'replace'),
      );
      return redact(collection, find(written, name) as Resource);
    },
  );

  app.delete(
    `${base}/:name`,
    {
      schema: {
        tags,
        operationId: `delete${noun}`,
        summary: `Delete ${aLabel}`,
        description: 'Refused with 409 while another resource refers to it.',
        params: NameParams,
        response: { 204: Type.Null({ description: 'Deleted' }), ...errorResponses(401, 403, 404, 409, 412) },
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      await ctx.write(
        request,
        reply,
        (c) => {
          if (!find(c, name)) throw missing(name);
          const users = findReferences(c, collection, name);
          if (users.length > 0) throw conflict(`${label} "${name}" is in use by ${users.join(', ')}`);
          return withItems(c, itemsOf(c).filter((i) => i.name !== name));
        },
        audit(name, 'delete'),
      );
      return reply.status(204).send(null);
    },
  );
}

/** A PUT body may leave out the name; it is the one in the path. */
async function nameFromPath(request: FastifyRequest): Promise<void> {
  const body = request.body as Record<string, unknown> | null;
  const { name } = request.params as { name?: string };
  if (body && typeof body === 'object' && !Array.isArray(body) && body.name === undefined) body.name = name;
}
