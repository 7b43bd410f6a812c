// Every API error is JSON `{ statusCode, error, message }` (plus `details` for invalid
// configurations). This module holds the error type routes throw, the formatter that
// turns Ajv's schema errors into one message naming each offending field, and the
// handler that maps everything else (store errors, Redis outages) to a status code.
import { STATUS_CODES } from 'node:http';
import type { FastifyError, FastifyReply, FastifyRequest, FastifySchemaValidationError } from 'fastify';
import { ConfigConflictError, ConfigValidationError, ConfigVersionMismatchError } from '../shared/config/store.ts';
import type { ValidationIssue } from '../shared/config/validate.ts';

export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
    readonly details?: ValidationIssue[],
  ) {
    super(message);
  }
}

export const badRequest = (message: string) => new HttpError(400, message);
export const unauthorized = (message: string) => new HttpError(401, message);
export const forbidden = (message: string) => new HttpError(403, message);
export const notFound = (message: string) => new HttpError(404, message);
export const conflict = (message: string) => new HttpError(409, message);
export const preconditionFailed = (message: string) => new HttpError(412, message);
export const serviceUnavailable = (message: string) => new HttpError(503, message);

type AjvError = FastifySchemaValidationError & { params: Record<string, unknown> };

/**
 * Fastify `schemaErrorFormatter`: one message naming every offending field, e.g.
 * `body/port must be <= 65535`. Union noise is dropped: the "must match a schema in
 * anyOf" summary and the "must be null" of a nullable field that has a real error.
 */
export function formatSchemaErrors(errors: FastifySchemaValidationError[], dataVar: string): Error {
  const all = errors as AjvError[];
  const relevant = all.filter((e, _, list) => {
    if (list.length === 1) return true;
    if (e.keyword === 'anyOf') return false;
    const isNullAlternative = e.keyword === 'type' && e.params.type === 'null';
    return !(isNullAlternative && list.some((o) => o !== e && o.keyword !== 'anyOf' && o.instancePath.startsWith(e.instancePath)));
  });
  const details = [...new Map(relevant.map((e) => describe(e, dataVar)).map((d) => [`${d.field} ${d.message}`, d])).values()];
  return new HttpError(400, details.map((d) => `${d.field} ${d.message}`).join('; '), details);
}

function describe(e: AjvError, dataVar: string): ValidationIssue {
  const at = `${dataVar}${e.instancePath}`;
  switch (e.keyword) {
    case 'required':
      return { field: `${at}/${String(e.params.missingProperty)}`, message: 'is required' };
    case 'additionalProperties':
      return { field: `${at}/${String(e.params.additionalProperty)}`, message: 'is not a known property' };
    case 'discriminator':
      return e.params.error === 'mapping'
        ? { field: `${at}/${String(e.params.tag)}`, message: `has an unknown value ${JSON.stringify(e.params.tagValue)}` }
        : { field: `${at}/${String(e.params.tag)}`, message: 'is required and must be a string' };
    default:
      return { field: at, message: e.message ?? 'is invalid' };
  }
}

/** Redis unreachable: ioredis gives up on a command or refuses it while offline. */
function isRedisUnavailable(err: Error): boolean {
  return err.name === 'MaxRetriesPerRequestError' || /Connection is closed|Stream isn't writeable|ECONNREFUSED|Command timed out/.test(err.message);
}

function statusOf(err: FastifyError | Error): { statusCode: number; message: string; details?: ValidationIssue[] } {
  if (err instanceof HttpError) return err;
  if (err instanceof ConfigValidationError) {
    return { statusCode: 400, message: `invalid configuration: ${err.message}`, details: err.issues };
  }
  if (err instanceof ConfigVersionMismatchError) {
    return { statusCode: 412, message: `If-Match: ${err.message}` };
  }
  if (err instanceof ConfigConflictError) return { statusCode: 409, message: err.message };
  if (isRedisUnavailable(err)) return { statusCode: 503, message: 'the configuration store (Redis) is unavailable' };
  const statusCode = (err as FastifyError).statusCode;
  // Fastify's own client errors (bad JSON, wrong content type, body too large) say what is wrong.
  if (statusCode !== undefined && statusCode >= 400 && statusCode < 500) return { statusCode, message: err.message };
  return { statusCode: 500, message: 'internal error (see the API log)' };
}

export function errorHandler(err: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): void {
  const { statusCode, message, details } = statusOf(err);
  if (statusCode >= 500) request.log.error({ err }, 'request failed');
  if (statusCode === 401) reply.header('www-authenticate', 'Bearer realm="certgate"');
  void reply.status(statusCode).send({ statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message, ...(details && { details }) });
}

export function notFoundHandler(request: FastifyRequest, reply: FastifyReply): void {
  void reply.status(404).send({ statusCode: 404, error: 'Not Found', message: `no route ${request.method} ${request.url.split('?')[0]}` });
}
