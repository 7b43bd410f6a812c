// The schemas the HTTP API registers with `app.addSchema` (and so the OpenAPI components):
// the configuration model of shared/config/schemas.ts plus the API's own envelopes.
//
// The TypeBox schemas nest each other inline (Config contains LdapProfile, ...). For the
// API every nested schema that has an `$id` is replaced by a `$ref` to it, so that the
// OpenAPI document names each component once and references it everywhere.
import { STATUS_CODES } from 'node:http';
import type { FastifyRequest } from 'fastify';
import { Type, type Static, type TSchema } from 'typebox';
import { Value } from 'typebox/value';
import {
  CertificateAuthProfile,
  Config,
  CrlSettings,
  CrlSource,
  CrlStatus,
  LdapAuthProfile,
  LdapProfile,
  Listener,
  MailFlowPolicy,
  Name,
  OcspSettings,
  SessionEvent,
  SmtpAuthProfile,
  WorkerStatus,
} from '../shared/config/schemas.ts';
import { AuditEntry } from '../shared/config/audit.ts';

/** A route-schema reference to a registered component, typed as the component. */
export function ref<T extends TSchema>(schema: T) {
  const { $id } = schema as { $id?: unknown };
  if (typeof $id !== 'string') throw new Error('ref() needs a schema with an $id');
  return Type.Unsafe<Static<T>>(Type.Ref($id));
}

export const ValidationIssue = Type.Object({ field: Type.String(), message: Type.String() });

export const ErrorResponse = Type.Object(
  {
    statusCode: Type.Integer(),
    error: Type.String({ description: 'HTTP reason phrase' }),
    message: Type.String({ description: 'What is wrong; names the offending field' }),
    details: Type.Optional(Type.Array(ValidationIssue, { description: 'Every problem found, for configuration validation errors' })),
  },
  { $id: 'Error' },
);

export const Role = Type.Union([Type.Literal('admin'), Type.Literal('read-only')]);
export const ApiToken = Type.Object(
  { name: Name, role: Role, createdAt: Type.String({ format: 'date-time' }) },
  { $id: 'ApiToken', additionalProperties: false },
);
export type ApiToken = Static<typeof ApiToken>;
export const NewApiToken = Type.Object({ name: Name, role: Role }, { $id: 'NewApiToken', additionalProperties: false });
export const CreatedApiToken = Type.Object(
  { name: Name, role: Role, token: Type.String({ description: 'The bearer token; shown only in this response' }) },
  { $id: 'CreatedApiToken' },
);

/** `GET /v1/config`: the configuration with the version it has. */
export const ConfigExport = Type.Object(
  { version: Type.Integer({ minimum: 0, readOnly: true }), ...Config.properties },
  { $id: 'ConfigExport', additionalProperties: false },
);

export const CrlSourceWithStatus = Type.Object(
  { ...CrlSource.properties, status: { ...CrlStatus, readOnly: true } },
  { $id: 'CrlSourceWithStatus', additionalProperties: false },
);

export const LdapProfileTest = Type.Union(
  [
    Type.Object(
      { query: Type.Literal('certificate'), certificatePem: Type.String({ minLength: 1, maxLength: 1_000_000 }) },
      { additionalProperties: false },
    ),
    Type.Object(
      { query: Type.Literal('smtpAuth'), username: Type.String({ minLength: 1, maxLength: 256 }), password: Type.String({ maxLength: 1024, writeOnly: true }) },
      { additionalProperties: false },
    ),
  ],
  { $id: 'LdapProfileTest' },
);
export type LdapProfileTest = Static<typeof LdapProfileTest>;

const TokenValue = Type.Union([Type.String(), Type.Null()]);

export const LdapProfileTestResult = Type.Object(
  {
    matched: Type.Boolean({ description: 'An entry was found (exactly one)' }),
    dn: Type.Union([Type.String(), Type.Null()]),
    userId: Type.Union([Type.String(), Type.Null()]),
    authenticated: Type.Union([Type.Boolean(), Type.Null()], { description: 'The password was right (smtpAuth only)' }),
    allowed: Type.Union([Type.Boolean(), Type.Null()], { description: 'The allowance query admits the user (smtpAuth with an allowQuery only)' }),
    durationMs: Type.Number(),
    filter: Type.Union([Type.String(), Type.Null()], { description: 'The escaped filter as sent to the directory; null when none was sent (a token the certificate lacks, an empty password)' }),
    outcome: Type.String({ description: 'The directory answer: one, none, many, missing-field, authenticated, invalid-credentials, unknown-user, empty-password, ambiguous, directory-unavailable' }),
    tokens: Type.Union([
      Type.Object({ cn: TokenValue, sn: TokenValue, s: TokenValue, i: TokenValue, e: TokenValue, upn: TokenValue, fp: TokenValue, ir: TokenValue, sr: TokenValue, ski: TokenValue }),
      Type.Null(),
    ], { description: 'certificate: the query tokens as read from the certificate (before escaping)' }),
    allowFilter: Type.Union([Type.String(), Type.Null()], { description: 'smtpAuth: the escaped allowance filter' }),
    error: Type.Union([Type.String(), Type.Null()], { description: "The directory's own reason when it failed or refused (unreachable, TLS refused, bind refused, ...)" }),
  },
  { $id: 'LdapProfileTestResult' },
);
export type LdapProfileTestResult = Static<typeof LdapProfileTestResult>;

export const Health = Type.Object(
  { status: Type.Union([Type.Literal('ok'), Type.Literal('degraded')]), redis: Type.Union([Type.Literal('up'), Type.Literal('down')]) },
  { $id: 'Health' },
);

/** Every schema to register, in a stable order (it is the order of the OpenAPI components). */
export const COMPONENT_SCHEMAS: TSchema[] = [
  LdapProfile,
  LdapAuthProfile,
  CertificateAuthProfile,
  SmtpAuthProfile,
  MailFlowPolicy,
  Listener,
  CrlSource,
  CrlStatus,
  CrlSourceWithStatus,
  CrlSettings,
  OcspSettings,
  Config,
  ConfigExport,
  SessionEvent,
  WorkerStatus,
  AuditEntry,
  ApiToken,
  NewApiToken,
  CreatedApiToken,
  LdapProfileTest,
  LdapProfileTestResult,
  Health,
  ErrorResponse,
].map((schema) => referencing(schema, true));

/**
 * A deep copy of `schema` in which every nested schema with an `$id` became `{ $ref }`,
 * properties with a default are no longer `required`, and every union of objects told apart by a constant property (`type: "ldap"` or
 * `"certificate"`) became a `oneOf` with a `discriminator`: Ajv then validates only the
 * member the client meant (one precise error instead of one per member, and defaults of
 * that member applied), and OpenAPI tools show the choice.
 */
function referencing(schema: unknown, root = false): TSchema {
  if (Array.isArray(schema)) return schema.map((s) => referencing(s)) as unknown as TSchema;
  if (schema === null || typeof schema !== 'object') return schema as TSchema;
  const object = schema as Record<string, unknown>;
  if (!root && typeof object.$id === 'string') {
    // Annotations put on the use site (readOnly, description) stay next to the reference.
    const { $id, ...rest } = object;
    return { $ref: $id, ...pick(rest, ['readOnly', 'writeOnly']) } as TSchema;
  }
  const copy = Object.fromEntries(Object.entries(object).map(([k, v]) => [k, referencing(v)]));
  if (Array.isArray(object.required) && object.properties) {
    // A property with a default may be left out of a request (it is filled in before
    // validation), so it is not `required` in the API's schemas even though every
    // stored object has it.
    const properties = object.properties as Record<string, { default?: unknown }>;
    copy.required = (object.required as string[]).filter((key) => properties[key]?.default === undefined);
  }
  const tag = Array.isArray(object.anyOf) ? discriminatorOf(object.anyOf) : undefined;
  if (!tag) return copy as TSchema;
  const { anyOf, ...rest } = copy;
  return { ...rest, type: 'object', oneOf: anyOf, discriminator: { propertyName: tag } } as TSchema;
}

/** The property every member of a union of objects fixes to a constant, if there is one. */
function discriminatorOf(members: unknown[]): string | undefined {
  type Member = { properties?: Record<string, { const?: unknown }> };
  const properties = (members as Member[]).map((m) => m.properties);
  if (properties.length < 2 || properties.some((p) => !p)) return undefined;
  return Object.keys(properties[0] ?? {}).find((key) => properties.every((p) => typeof p?.[key]?.const === 'string'));
}

function pick(object: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => k in object).map((k) => [k, object[k]]));
}

/** Error responses a route declares, by status code (documented, and serialized with `details`). */
export function errorResponses(...codes: number[]): Record<number, ReturnType<typeof ref<typeof ErrorResponse>>> {
  return Object.fromEntries(codes.map((code) => [code, { ...ref(ErrorResponse), description: ERROR_DESCRIPTIONS[code] ?? STATUS_CODES[code] }]));
}

const ERROR_DESCRIPTIONS: Record<number, string> = {
  400: 'Invalid request: the message names the offending field',
  401: 'Missing or invalid bearer token',
  403: 'The token is read-only',
  404: 'No such resource',
  409: 'Name already exists, resource still referenced, or concurrent changes',
  412: 'If-Match does not name the current configuration version',
  501: 'Not implemented yet',
};

/**
 * preValidation hook filling defaults into the body with TypeBox before Ajv validates it.
 * Ajv cannot: it ignores defaults inside `anyOf` (nullable objects such as `tls`, and the
 * single-member unions used to give an object a default), so `required` would reject a
 * body that leaves out a defaulted property there.
 */
export function fillDefaults(schema: TSchema) {
  return async (request: FastifyRequest) => {
    Value.Default(schema, request.body);
  };
}
